"""`kernels(on)`: `neurenix.backends.eager_kernels` set for a block, for the tests that compare
the eager kernels with the primitive compositions they replace."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import neurenix as nx


@contextlib.contextmanager
def kernels(on: bool) -> Iterator[None]:
    """`neurenix.backends.eager_kernels` set to `on` for the block, restored after it."""
    before = nx.backends.eager_kernels
    nx.backends.eager_kernels = on
    try:
        yield
    finally:
        nx.backends.eager_kernels = before


@contextlib.contextmanager
def eager_compile(on: bool) -> Iterator[None]:
    """`neurenix.backends.eager_compile` set to `on` for the block, restored after it."""
    before = nx.backends.eager_compile
    nx.backends.eager_compile = on
    try:
        yield
    finally:
        nx.backends.eager_compile = before
