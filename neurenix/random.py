"""The global random state: `manual_seed`, and the generator creation functions draw from."""
from __future__ import annotations

import numpy as np

_STATE = {"rng": np.random.default_rng()}


def manual_seed(seed: int) -> None:
    """Seed every random draw Neurenix makes (initialisation, dropout, randn, ...)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed: expected an int, got {type(seed).__name__}")
    _STATE["rng"] = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)


def generator() -> np.random.Generator:
    """The NumPy generator behind Neurenix's random functions."""
    return _STATE["rng"]


def next_seed() -> int:
    """A fresh 63-bit seed for a counter-based random primitive (e.g. dropout's mask)."""
    return int(_STATE["rng"].integers(0, 2**63 - 1))
