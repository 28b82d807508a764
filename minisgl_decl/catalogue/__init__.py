"""The layer catalogue: each entry declares its arguments, parameters (shape + TP role)
and builds a torch module. Specs refer to entries by name."""

from .registry import LayerKind, catalogue_names, get_layer

__all__ = ["LayerKind", "catalogue_names", "get_layer"]
