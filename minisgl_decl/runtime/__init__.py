"""Stage 5: the executable model, KV cache and request execution."""
