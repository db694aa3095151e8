"""Switches that trade exactness for speed on a backend, as PyTorch's `torch.backends`.

`neurenix.backends.allow_tf32` (False by default, as PyTorch's
`torch.backends.cuda.matmul.allow_tf32`): float32 matmul and convolution on CUDA devices of
compute capability 8.0 and newer may run on TF32 tensor cores (operands rounded to 10
mantissa bits, float32 sums).  Programs compiled while it had the other value are compiled
again on their next call (`neurenix.compile` guards on it), and eager operations on a CUDA
device follow it too.

`neurenix.backends.eager_kernels` (True by default, as PyTorch's
`torch.backends.cudnn.enabled`): eager recurrent layers, convolutions and pooling run as whole
NumPy kernels with a hand-written backward (`neurenix.eager_kernels`); False runs them as the
primitives they are defined by, one dispatch per operation.

`neurenix.backends.eager_compile` (True by default): an eager convolution or big linear layer
called again and again with one signature (a training loop's) runs as cached compiled programs
from its third call on (`neurenix.eager_kernels.hot`); False keeps every call on its NumPy
kernel.
"""
from __future__ import annotations

import sys
import types

from neurenix.compiler.targets import target_for_device

_STATE = {"allow_tf32": False, "eager_kernels": True, "eager_compile": True}


def _switch(name: str) -> property:
    """A bool setting of this module, kept in `_STATE`; anything but a bool raises."""

    def get(self: types.ModuleType) -> bool:
        return _STATE[name]

    def set_(self: types.ModuleType, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"neurenix.backends.{name} must be a bool, got "
                            f"{type(value).__name__} {value!r}")
        _STATE[name] = value

    return property(get, set_)


class _Backends(types.ModuleType):
    """This module, with its switches checked when set."""

    allow_tf32 = _switch("allow_tf32")
    eager_kernels = _switch("eager_kernels")
    eager_compile = _switch("eager_compile")


def eager_kernels_enabled() -> bool:
    """Whether eager layers may run as whole kernels (`eager_kernels` above)."""
    return _STATE["eager_kernels"]


def eager_compile_enabled() -> bool:
    """Whether hot eager layers may run as compiled programs (`eager_compile` above)."""
    return _STATE["eager_compile"]


def target_for(kind: str) -> str:
    """The compiler target for device kind `kind` under the switches above ("cuda_tf32" for
    "cuda" while TF32 is allowed)."""
    if kind == "cuda" and _STATE["allow_tf32"]:
        return "cuda_tf32"
    return target_for_device(kind)


def depends_on_switches(kind: str) -> bool:
    """Whether the target for `kind` depends on a switch (a compiled program for it is
    guarded on the switch)."""
    return kind == "cuda"


sys.modules[__name__].__class__ = _Backends
