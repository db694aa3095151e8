"""The errors layers raise for an input they cannot take, saying how to convert it."""
from __future__ import annotations

from typing import Any

from neurenix.compiler.types import DType


def not_a_tensor(layer: str, value: Any, name: str = "input") -> TypeError:
    """`layer` got `value` (an array, a list) where a Tensor goes."""
    hint = ""
    if type(value).__module__ == "numpy" or isinstance(value, (list, tuple)):
        hint = ("; wrap it: neurenix.tensor(value, dtype=neurenix.float32) (a NumPy float64 "
                "array becomes float64 otherwise)")
    return TypeError(f"{layer}: expected the {name} to be a Tensor, got "
                     f"{type(value).__name__}{hint}")


def wrong_dtype(layer: str, want: DType, got: DType, whose: str) -> TypeError:
    """`layer`'s parameters are `want` (`whose`: "the weight's"), the input `got`."""
    return TypeError(f"{layer}: expected input of dtype {want.name} ({whose}), got {got.name}; "
                     f"convert it with x.to(neurenix.{want.name})")
