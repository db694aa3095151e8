"""The random generators of data loading: a `numpy.random.Generator` given by the user, or
one seeded from Neurenix's global random state (`neurenix.manual_seed`)."""
from __future__ import annotations

import numpy as np

from ...random import next_seed


def check_generator(generator: object, who: str) -> np.random.Generator | None:
    """`generator` if it is None or a `numpy.random.Generator`, else a TypeError naming `who`."""
    if generator is not None and not isinstance(generator, np.random.Generator):
        raise TypeError(f"{who}: generator must be a numpy.random.Generator or None, got "
                        f"{type(generator).__name__}")
    return generator


def resolve(generator: np.random.Generator | None) -> np.random.Generator:
    """`generator` itself, or (None) a fresh one seeded by one draw from the global state, so
    that runs after `neurenix.manual_seed(k)` repeat and successive epochs differ."""
    if generator is not None:
        return generator
    return np.random.default_rng(next_seed())
