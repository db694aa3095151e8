"""Where a tensor's values live: the device-buffer contract between the frontend and runtimes.

A `neurenix.Tensor`'s storage (`Tensor._data`) is, on the CPU, the NumPy array itself: no
wrapper, so eager CPU code pays nothing for devices.  On any other device it is a buffer of
that device's runtime module satisfying `DeviceBuffer`.  The contract:

- `shape`, `dtype` (a NumPy dtype) and `device` (the device kind, e.g. "cuda") describe it
  without touching device memory, so shape logic and cache keys never copy.
- `to_host()` returns a new host array with the values (a synchronising copy).
- `from_host(array, device)` (a classmethod) uploads a host array to a new buffer.
- The frontend reads values only through `Tensor._host()` and replaces them only through
  `Tensor._set_host(array)`: on the CPU the first returns the storage itself (writes to it
  are writes to the tensor, as NumPy views are), elsewhere a `to_host()` copy, whose changes
  reach the device when stored back (`from_host` of the storage's own type).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class DeviceBuffer(Protocol):
    """A tensor's values in a device's memory (see the module docstring for the contract)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    device: str

    def to_host(self) -> np.ndarray:
        """The values, copied into a new host array."""

    @classmethod
    def from_host(cls, array: np.ndarray, device: str) -> DeviceBuffer:
        """A new buffer on `device` holding `array`'s values."""

