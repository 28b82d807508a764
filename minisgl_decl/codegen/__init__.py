"""Render a compiled graph as a readable Python module (jinja2)."""
