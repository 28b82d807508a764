"""Stage 3: the module graph (catalogue layers with resolved args) and its dataflow program."""
