"""Stage 1: read a YAML spec (positions kept), validate it, report located errors."""
