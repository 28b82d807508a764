"""Stage 6: the serving engine (schedule -> run -> postprocess) over the runtime."""
