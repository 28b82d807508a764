"""minisgl-decl: a declarative, YAML-driven model compiler and inference runtime.

Pipeline (one package per stage, data flows left to right):
spec -> config -> graph -> plan -> runtime (-> server), with `minisgl_kernels/` beside them.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
