"""Debug and checking switches: `NEURENIX_DEBUG` and `NEURENIX_SPEC`, overridable in a block.

`NEURENIX_DEBUG=1..4` asks for growing detail (compile summaries, graphs after each pass,
kernels, generated source with timings); `NEURENIX_SPEC=1` runs the IR verifier after every
pass.  Both are read from the environment on each call, and a `with debug(2):` or
`with spec(True):` block overrides them for the code it runs (like tinygrad's
`helpers.Context`), so a test or a notebook need not touch the environment.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEBUG: ContextVar[int | None] = ContextVar("neurenix_debug", default=None)
_SPEC: ContextVar[bool | None] = ContextVar("neurenix_spec", default=None)


def _env_int(var: str) -> int:
    text = os.environ.get(var, "").strip()
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{var} must be an integer (0 to switch it off), got {text!r}") from None


def debug_level() -> int:
    """The debug level: the innermost `with debug(...)` block's, else `NEURENIX_DEBUG`, else 0."""
    override = _DEBUG.get()
    return _env_int("NEURENIX_DEBUG") if override is None else override


def spec_enabled() -> bool:
    """Whether to verify the IR after every pass (`NEURENIX_SPEC=1` or `with spec(True):`)."""
    override = _SPEC.get()
    return _env_int("NEURENIX_SPEC") > 0 if override is None else override


@contextmanager
def debug(level: int) -> Iterator[None]:
    """Set the debug level for the code run inside the block."""
    token = _DEBUG.set(int(level))
    try:
        yield
    finally:
        _DEBUG.reset(token)


@contextmanager
def spec(enabled: bool = True) -> Iterator[None]:
    """Switch the after-every-pass IR verification on (or off) inside the block."""
    token = _SPEC.set(bool(enabled))
    try:
        yield
    finally:
        _SPEC.reset(token)
