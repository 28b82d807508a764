"""The `minisgl-decl` command line."""
