"""Devices: `DeviceType`, `Device`, and `get_available_devices()`.

The module itself is callable as `torch.device` is: `neurenix.device("opencl")`,
`neurenix.device("cuda", 0)` and `neurenix.device("cuda:0")` return a `Device`.
`install_device_methods` gives a class (Tensor, Module) PyTorch's `.cuda()` habit.
"""
from __future__ import annotations

import enum
import sys
import types
from typing import Any

from neurenix import runtime


class DeviceType(enum.Enum):
    """The kinds of device Neurenix can target."""

    CPU = "cpu"
    CUDA = "cuda"
    ROCM = "rocm"
    WEBGPU = "webgpu"
    OPENCL = "opencl"


class Device:
    """A device of some type and index: `Device(DeviceType.CUDA, 0)`, `Device('cuda:0')`."""

    __slots__ = ("type", "index")

    def __init__(self, type: DeviceType | str, index: int = 0) -> None:  # noqa: A002
        if isinstance(type, str):
            if type != type.strip() or not type:
                raise ValueError(f"Device: invalid device string {type!r}; expected one of "
                                 f"{', '.join(t.value for t in DeviceType)}, optionally "
                                 "with ':index'")
            text = type
            name, _, idx = type.partition(":")
            try:
                type = DeviceType(name.lower())
            except ValueError:
                raise ValueError(f"Device: unknown device type {name!r}; expected one of "
                                 f"{', '.join(t.value for t in DeviceType)}") from None
            if idx:
                if not idx.isdigit():
                    raise ValueError(f"Device: invalid device string {text!r}: the index "
                                     f"after ':' must be a non-negative int, as in "
                                     f"'{name}:0'")
                index = int(idx)
        if not isinstance(type, DeviceType):
            raise TypeError(f"Device: expected a DeviceType or a string such as 'cpu', "
                            f"got {type!r}")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"Device: index must be a non-negative int, got {index!r}")
        self.type = type
        self.index = index

    @property
    def name(self) -> str:
        return self.type.value if self.type == DeviceType.CPU else f"{self.type.value}:{self.index}"

    def is_available(self) -> bool:
        """Whether this machine has a working backend for the device type (index 0 only:
        each backend drives one device)."""
        return self.index == 0 and runtime.is_available(self.type.value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            other = Device(other)
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __repr__(self) -> str:
        return f"Device({self.name!r})"


CPU = Device(DeviceType.CPU)


def as_device(device: Any, check: bool = False) -> Device:
    """Normalise a Device, DeviceType or string; with check, refuse devices absent here."""
    if isinstance(device, Device):
        dev = device
    elif isinstance(device, (DeviceType, str)):
        dev = Device(device)
    else:
        raise TypeError(f"expected a Device, DeviceType or device string, got {device!r}")
    if check and not dev.is_available():
        have = ", ".join(d.name for d in get_available_devices())
        if dev.index == 0:
            raise ValueError(f"{dev.type.value} is not available: "
                             f"{unavailable_reason(dev.type.value)} (available: {have})")
        raise ValueError(f"device {dev.name} is not available on this machine: each backend "
                         f"drives device 0 only (available: {have})")
    return dev


def unavailable_reason(kind: str) -> str:
    """Why the backend of device kind `kind` cannot run here, in the runtime's words."""
    try:
        reason = runtime.backend_module(kind).unavailable_reason()
    except Exception as e:  # noqa: BLE001  (no backend, or its import failed: that is the reason)
        reason = f"{type(e).__name__}: {e}"
    return reason or "its runtime reports no device"


def get_available_devices() -> list[Device]:
    """Every device this machine can run on; probes never raise, the CPU is always listed."""
    devices = [CPU]
    for kind in DeviceType:
        if kind != DeviceType.CPU and runtime.is_available(kind.value):
            devices.append(Device(kind, 0))
    return devices


def device(type: Device | DeviceType | str, index: int | None = None) -> Device:  # noqa: A002
    """A `Device`, as `torch.device`: `device("opencl")`, `device("cuda", 0)`,
    `device("cuda:0")` or `device(existing)`; availability is not checked here (moving a
    tensor there is)."""
    if isinstance(type, Device):
        if index is not None and index != type.index:
            raise ValueError(f"device: {type!r} already has index {type.index}; got index "
                             f"{index} too")
        return type
    if isinstance(type, str) and ":" in type and index is not None:
        raise ValueError(f"device: {type!r} already names an index; got index {index} too")
    if not isinstance(type, (str, DeviceType)):
        raise TypeError(f"device: expected a device string such as 'cpu', 'opencl' or "
                        f"'cuda:0', a DeviceType or a Device, got {type!r}")
    return Device(type) if index is None else Device(type, index)


def cuda_device(index: Device | str | int | None = None) -> Device:
    """The device `.cuda(index)` moves to: CUDA device `index` (0 by default), refused with
    the reason and the devices available when this machine cannot run it."""
    if index is None:
        dev = Device(DeviceType.CUDA, 0)
    elif isinstance(index, int) and not isinstance(index, bool):
        dev = Device(DeviceType.CUDA, index)
    else:
        dev = device(index)
        if dev.type != DeviceType.CUDA:
            raise ValueError(f"cuda: expected a CUDA device, got {dev.name}; use "
                             f".to({dev.name!r})")
    if not dev.is_available():
        have = ", ".join(d.name for d in get_available_devices())
        why = unavailable_reason("cuda") if dev.index == 0 else \
            "each backend drives device 0 only"
        raise RuntimeError(f"cuda: {dev.name} is not available here ({why}); available "
                           f"devices: {have}. Use .to(device) with one of them, e.g. "
                           f".to({get_available_devices()[-1].name.split(':')[0]!r})")
    return dev


def _cuda(self: Any, device: Device | str | int | None = None, non_blocking: bool = False,
          **kwargs: Any) -> Any:
    """Move to a CUDA device (device 0 by default) with `.to()`: a tensor returns a copy
    there (itself when already there), a module moves its parameters in place and returns
    itself. `non_blocking` is accepted for PyTorch compatibility."""
    return self.to(cuda_device(device))


def install_device_methods(cls: type) -> None:
    """Give `cls` (Tensor, Module: anything with `.to(device)`) a `cuda()` method."""
    cls.cuda = _cuda


class _CallableModule(types.ModuleType):
    """This module, callable as `neurenix.device(...)` (see `device`)."""

    def __call__(self, type: Device | DeviceType | str,  # noqa: A002
                 index: int | None = None) -> Device:
        return device(type, index)


sys.modules[__name__].__class__ = _CallableModule
