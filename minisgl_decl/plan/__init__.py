"""Stage 4: the loader plan (per TP rank, target-centric), checked against checkpoint headers."""
