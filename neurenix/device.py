"""Devices: `DeviceType`, `Device`, and `get_available_devices()`."""
from __future__ import annotations

import enum
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
            name, _, idx = type.partition(":")
            try:
                type = DeviceType(name.lower())
            except ValueError:
                raise ValueError(f"Device: unknown device type {name!r}; expected one of "
                                 f"{', '.join(t.value for t in DeviceType)}") from None
            if idx:
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
