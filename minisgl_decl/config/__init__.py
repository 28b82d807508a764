"""Stage 2: resolve a spec's config mapping against a Hugging Face config.json."""
