"""The protocol every runtime module provides (see `neurenix.runtime`), as `typing.Protocol`s.

A runtime module is a plain module: these classes describe its module-level names, so that a
checker (or a reader) sees what the frontend relies on.  Nothing here is instantiated.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .program import Program


class LibraryCache(Protocol):
    """Where a runtime keeps support libraries it builds (the frontend's disk cache): the
    runtime names an entry by `key_parts` and never imports the cache itself."""

    def load_library(self, key_parts: tuple[str, ...]) -> bytes | None:
        """The stored bytes, or None when there are none (or they cannot be trusted)."""

    def store_library(self, key_parts: tuple[str, ...], library: bytes) -> None:
        """Keep `library` under `key_parts` for later processes."""


class Executable(Protocol):
    """A Program loaded for a device: `run(inputs) -> outputs`."""

    program: Program
    source: str
    object_code: bytes | None
    """Machine code a cache may store (None where there is none)."""
    library: bytes | None
    """A shared library a cache may store (None where there is none)."""

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the program on host arrays (one per program input); its outputs."""


class Backend(Protocol):
    """The module-level names of a runtime module (`neurenix.runtime.cpu`, ...)."""

    def available(self) -> bool:
        """Whether the device can run here; never raises."""

    def fingerprint(self) -> str:
        """A cheap identity of this device for cache keys (no compiler needed to compute it)."""

    def code_identity(self) -> str:
        """What compiled code depends on besides its source (device model, features,
        compiler version): part of the key of every cached program."""

    def prepare(self, program: Program, cache: LibraryCache | None) -> None:
        """Load, once per process, the support libraries `program` needs (e.g. a thread
        pool), from `cache` when it holds them, storing what had to be built."""

    def Executable(self, program: Program, object_code: bytes | None = None,
                   library: bytes | None = None) -> Executable:
        """The class: load `program` (from `object_code` or `library` of an earlier build
        when given, which the caller vouches for, as a cache does)."""
