"""Parity with Hugging Face transformers: the numerical truth for every spec."""
