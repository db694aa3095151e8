"""The host CPU backend. Eager CPU execution runs the NumPy reference implementations."""
from __future__ import annotations

import os


def is_available() -> bool:
    """The host CPU is always there."""
    return True


def core_count() -> int:
    """How many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
