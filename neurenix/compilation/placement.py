"""Where a compiled call runs, and its values in the form its program takes.

A program compiled for a device (OpenCL, WebGPU) takes the device buffers of its inputs as
they are (`Executable.run_device`: no copy) and returns new device buffers, which become
device tensors; a CPU program takes and returns host arrays.  The call's device is the
explicit `device=` (or the device of the explicit `backend=`), else the device of the
module's parameters, else of the first tensor argument on a device, else the CPU.  Every
tensor the program reads must be on that device, as in eager mode (`neurenix.device_ops`): a
CPU scalar that needs no gradient and a host constant are uploaded, and so is a CPU argument
of a function compiled for an explicit device; anything else raises a ValueError naming both
devices.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from neurenix.compiler.targets import get_target

from .. import backends
from ..backends import depends_on_switches, target_for
from ..device import CPU, Device, as_device
from ..device_ops import current
from ..tensor import HostConstant, Tensor
from .trace_guards import Guard

# single values (a learning rate, Adam's bias corrections) stay uploaded, least recently used
# out beyond this many: a step's host values cost an upload only when they change (device
# buffers are never written, only replaced, so programs can share them)
VALUE_LIMIT = 256
_VALUES: OrderedDict[tuple, Any] = OrderedDict()
_VALUES_LOCK = threading.Lock()


def call_device(explicit: Device | None, module: Any, tensors: Sequence[Tensor]) -> Device:
    """The device a call runs on (see the module docstring)."""
    if explicit is not None:
        return explicit
    if module is not None:
        for p in module.parameters():
            return p._device
        for b in module.buffers():
            return b._device
    for t in tensors:
        if t._device != CPU:
            return t._device
    return CPU


def backend_for(device: Device, backend: str | None) -> str:
    """The target compiling for `device`: the explicit `backend`, else the device's target
    under `neurenix.backends`' switches."""
    return backend if backend is not None else target_for(device.type.value)


def switch_guards(device: Device, backend: str | None) -> list[Guard]:
    """The switches of `neurenix.backends` a program for `device` depends on (none when
    the call names its `backend`): a program is compiled again when one changes."""
    if backend is not None or not depends_on_switches(device.type.value):
        return []
    return [Guard("neurenix.backends.allow_tf32", lambda _: backends.allow_tf32,
                  backends.allow_tf32, lambda old, new: [f"{old} -> {new}"])]


def device_of_backend(backend: str) -> Device:
    """The device programs of target `backend` run on (a ValueError saying why when it is
    not available here)."""
    kind = get_target(backend).device
    return CPU if kind == "cpu" else as_device(kind, check=True)


def mismatch(what: str, t: Tensor, device: Device, name: str) -> ValueError:
    """The error for a tensor on another device than the program's, naming both devices
    (eager's words, `neurenix.device_ops`)."""
    return ValueError(f"compile: {name} runs on {device.name}, but {what} is on "
                      f"{t._device.name}: expected all tensors on one device, got {device.name} "
                      f"and {t._device.name} (move it with .to({device.name!r}))")


def _travels(t: Tensor, data: np.ndarray) -> bool:
    """Whether a host tensor may join a device program (as it may an eager device
    operation): a host constant, or a single value that needs no gradient."""
    return type(data) is HostConstant or (data.size <= 1 and not t.requires_grad)


class Placement:
    """A program's device and how values reach it: host arrays on the CPU, the runtime's
    `Buffer`s on a device."""

    def __init__(self, device: Device, runtime: Any, name: str, host_args: bool) -> None:
        self.device = device
        self.name = name
        self.host_args = host_args  # CPU arguments are uploaded (an explicit device)
        self.buffer = None if device == CPU else runtime.Buffer
        self.kind = device.type.value

    @property
    def on_device(self) -> bool:
        return self.buffer is not None

    def take(self, t: Tensor, name: str, kind: str = "tensor") -> Any:
        """`t`'s storage as the program takes it (a device buffer is passed as it is); `t`
        is the program's input `name`, an "argument", a "tensor" or a "gradient"."""
        data = t._data
        if not isinstance(data, np.ndarray) and data is not None:
            data = current(t)  # a view whose base was written since is derived again
        if self.buffer is None:
            if isinstance(data, np.ndarray):
                return data
        elif isinstance(data, self.buffer) and t._device == self.device:
            return data
        elif isinstance(data, np.ndarray) and ((kind == "argument" and self.host_args)
                                               or _travels(t, data)):
            return self.upload(data)
        what = f"the gradient of {name!r}" if kind == "gradient" else f"{kind} {name!r}"
        raise mismatch(what, t, self.device, self.name)

    def upload(self, array: np.ndarray) -> Any:
        """A host value (a seed, a zero gradient) as the program takes it."""
        if self.buffer is None:
            return array
        return self.buffer.from_host(np.asarray(array, order="C"), self.kind)

    def value(self, array: np.ndarray) -> Any:
        """A single host value (a learning rate) as the program takes it: uploaded once
        while it is among the latest `VALUE_LIMIT` values used."""
        if self.buffer is None:
            return array
        key = (self.buffer, array.dtype.str, array.tobytes())
        with _VALUES_LOCK:
            buffer = _VALUES.get(key)
            if buffer is not None:
                _VALUES.move_to_end(key)
                return buffer
        buffer = self.upload(array)
        with _VALUES_LOCK:
            _VALUES[key] = buffer
            while len(_VALUES) > VALUE_LIMIT:
                _VALUES.popitem(last=False)
        return buffer

    def cotangent(self, g: Tensor) -> Any:
        """An upstream gradient for the backward program (one on another device is moved)."""
        data = g._data
        if self.buffer is None:
            return g._host()
        if isinstance(data, self.buffer):
            return data
        return self.upload(g._host())

    def zeros(self, like: Any) -> Any:
        """Zeros shaped as the program value `like` (the gradient of an unused output)."""
        return self.upload(np.zeros(like.shape, like.dtype))

    def host(self, value: Any) -> np.ndarray:
        """A program value as a host array (value checks read these)."""
        return value if isinstance(value, np.ndarray) else value.to_host()

    def wrap(self, value: Any) -> Tensor:
        """A new tensor holding a program value (no copy)."""
        t = Tensor._wrap(value)
        t._device = self.device
        return t

    def wrap_for(self, value: Any, owner: Tensor) -> Tensor:
        """A program value as a tensor on `owner`'s device (a gradient of a CPU argument a
        device program read is downloaded)."""
        if owner._device == self.device:
            return self.wrap(value)
        return Tensor._wrap(self.host(value))

    def assign(self, t: Tensor, value: Any) -> None:
        """`t` takes the program value `value` as its storage (moved to `t`'s device)."""
        if self.buffer is not None and isinstance(t._data, np.ndarray):
            t._set_host(value.to_host())
        else:
            t._data = value
        t._version += 1

    def write_argument(self, target: Tensor, value: Any) -> None:
        """Write a compiled call's new value of an argument into the caller's tensor: into
        its own host array (so its views change, as eagerly), or as its new device buffer."""
        current = target._data
        if not isinstance(current, np.ndarray):
            self.assign(target, value)
            return
        value = self.host(value)
        if current.flags.writeable:
            np.copyto(current, value)
        else:  # a broadcast view: the tensor takes a private array, as an eager write does
            target._data = value
        target._version += 1
