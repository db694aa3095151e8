"""Save and load tensors and state dicts with safetensors (PyTorch's names and layouts)."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
from safetensors.numpy import load_file, save_file

from .tensor import Tensor


def save(state: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Write a dict of tensors (e.g. model.state_dict()) to a .safetensors file."""
    if not isinstance(state, dict):
        raise TypeError(f"save: expected a dict of tensors, got {type(state).__name__}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"save: value for {key!r} is a {type(value).__name__}, expected a "
                            "Tensor")
        arrays[key] = np.asarray(value._host(), order="C")  # keeps 0-d arrays 0-d
    save_file(arrays, str(path))


def load(path: str | os.PathLike) -> OrderedDict:
    """Read a .safetensors file into an ordered dict of tensors."""
    return OrderedDict((k, Tensor(v)) for k, v in load_file(str(path)).items())
