"""The primitive registry. Importing this package declares every primitive once."""
from . import elementwise, indexing, linalg, movement, reduce, source, window  # noqa: F401
from .registry import (
                       CONTRACTION,
                       ELEMENTWISE,
                       INDEXING,
                       KINDS,
                       MOVEMENT,
                       REDUCE,
                       REGISTRY,
                       SOURCE,
                       WINDOW,
                       OpError,
                       Primitive,
                       get,
)

__all__ = ["REGISTRY", "Primitive", "OpError", "get", "KINDS", "ELEMENTWISE", "REDUCE",
           "MOVEMENT", "CONTRACTION", "WINDOW", "INDEXING", "SOURCE"]
