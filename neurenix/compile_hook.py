"""Where frontend code finds `neurenix.compile` without importing it.

Fused optimizer steps and small eager losses compile through `neurenix.compile`, whose module
imports the optimizers and the layers; importing it back would be a cycle.  The compiler
module registers itself here when it is imported (importing `neurenix` does so).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

_COMPILE: list[Callable[..., Any]] = []


def register(compile_fn: Callable[..., Any]) -> None:
    """Make `compile_fn` (`neurenix.compile`) the one `compiler()` returns."""
    _COMPILE[:] = [compile_fn]


def compiler() -> Callable[..., Any]:
    """`neurenix.compile` (a RuntimeError before the compiler module is imported)."""
    if not _COMPILE:
        raise RuntimeError("neurenix.compile is not registered yet (import neurenix first)")
    return _COMPILE[0]
