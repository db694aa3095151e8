"""`kernels(on)` and `eager_compile(on)`: a `neurenix.backends` switch set for a block, for the
tests that compare the eager kernels (and their compiled hot layers) with the primitive
compositions they replace."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import neurenix as nx


@contextlib.contextmanager
def _switch(name: str, on: bool) -> Iterator[None]:
    """`neurenix.backends.<name>` set to `on` for the block, restored after it."""
    before = getattr(nx.backends, name)
    setattr(nx.backends, name, on)
    try:
        yield
    finally:
        setattr(nx.backends, name, before)


def kernels(on: bool) -> contextlib.AbstractContextManager[None]:
    """`neurenix.backends.eager_kernels` set to `on` for the block."""
    return _switch("eager_kernels", on)


def eager_compile(on: bool) -> contextlib.AbstractContextManager[None]:
    """`neurenix.backends.eager_compile` set to `on` for the block."""
    return _switch("eager_compile", on)
