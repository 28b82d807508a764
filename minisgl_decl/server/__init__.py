"""Stage 7: the OpenAI-compatible HTTP server (FastAPI) over the engine's `EngineClient`."""
