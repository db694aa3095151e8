"""Save and load checkpoints as safetensors files, never with pickle.

`save(obj, path)` takes a tensor, a state dict or a whole training checkpoint: nested dicts
(str or int keys), lists, tuples, Tensors, NumPy arrays and scalars, Python numbers, bools,
None and strings. The arrays go into the safetensors file; a JSON header in its metadata
(`"neurenix.checkpoint"`) describes the structure around them. A flat dict of tensors (such as
`model.state_dict()`) keeps its keys as the file's tensor names, so any safetensors reader
(`safetensors.numpy.load_file`, `safetensors.torch.load_file`) reads it as before; files without
a header load as an ordered dict of tensors.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .compiler.types import dtype_from_name
from .device import CPU, Device, as_device
from .tensor import Tensor, alias_of

__all__ = ["load", "save"]

HEADER_KEY = "neurenix.checkpoint"
FORMAT = "neurenix.checkpoint"
VERSION = 1

MapLocation = str | Device | Mapping[str, str | Device] | None

_SUPPORTED = ("dicts (str or int keys), lists, tuples, Tensors, NumPy arrays and scalars, "
              "int, float, bool, None and str")
_ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what safetensors stores


def _where(path: tuple) -> str:
    """A readable location inside the saved object: checkpoint['optimizer']['state'][0]."""
    return "checkpoint" + "".join(f"[{part!r}]" for part in path)


def _float_node(value: float) -> Any:
    """A float as JSON: itself when finite (JSON keeps its repr exactly), else tagged."""
    if math.isfinite(value):
        return value
    return {"type": "float", "value": "nan" if math.isnan(value) else
            ("inf" if value > 0 else "-inf")}


class _Writer:
    """Walks the object to save, collecting arrays and building the JSON structure."""

    def __init__(self, flat: bool) -> None:
        self.flat = flat
        self.arrays: dict[str, np.ndarray] = {}
        self.objects: dict[int, dict[str, Any]] = {}  # id(tensor or array) -> its node
        self.storages: dict[Any, str] = {}  # storage identity -> the key its values went to
        self.active: set[int] = set()  # containers being walked, to refuse cycles
        self.keep: list[Any] = []  # keeps walked objects alive, so ids stay unique

    def _key(self, path: tuple) -> str:
        key = ".".join(str(part) for part in path) or "tensor"
        base, n = key, 1
        while key in self.arrays:
            key, n = f"{base}#{n}", n + 1
        return key

    def node(self, obj: Any, path: tuple) -> Any:
        if obj is None or type(obj) in (bool, int, str):
            return obj
        if type(obj) is float:
            return _float_node(obj)
        if isinstance(obj, Tensor):
            return self._tensor(obj, path)
        if type(obj) is np.ndarray:
            return self._ndarray(obj, path)
        if isinstance(obj, np.generic) and obj.dtype.kind in _ARRAY_KINDS \
                and obj.dtype.itemsize <= 8:
            value = obj.item()
            return {"type": "numpy_scalar", "dtype": obj.dtype.str,
                    "value": _float_node(value) if isinstance(value, float) else value}
        if type(obj) in (dict, OrderedDict, list, tuple):
            if id(obj) in self.active:
                raise ValueError(f"save: {_where(path)} contains itself; a checkpoint must be "
                                 "a tree (a container may not hold itself)")
            self.active.add(id(obj))
            try:
                if isinstance(obj, dict):
                    items = [[self._dict_key(k, path), self.node(v, path + (k,))]
                             for k, v in obj.items()]
                    kind = "odict" if type(obj) is OrderedDict else "dict"
                else:
                    items = [self.node(v, path + (i,)) for i, v in enumerate(obj)]
                    kind = type(obj).__name__
            finally:
                self.active.discard(id(obj))
            return {"type": kind, "items": items}
        raise TypeError(f"save: cannot save {_where(path)} of type {type(obj).__module__}."
                        f"{type(obj).__qualname__}; checkpoints hold {_SUPPORTED} "
                        "(nothing is pickled)")

    @staticmethod
    def _dict_key(key: Any, path: tuple) -> str | int:
        if type(key) in (str, int):
            return key
        raise TypeError(f"save: {_where(path)} has a key {key!r} of type "
                        f"{type(key).__name__}; checkpoint dict keys must be str or int")

    def _tensor(self, t: Tensor, path: tuple) -> dict[str, Any]:
        if id(t) in self.objects:
            return self.objects[id(t)]
        if t._data is None:
            raise TypeError(f"save: {_where(path)} is a symbolic tensor of a trace; save "
                            "outside the compiled function")
        storage = _storage_identity(t)
        key = self.storages.get(storage)
        if key is None or self.flat:
            own = self._key(path)
            self.arrays[own] = np.asarray(t._host(), order="C")  # keeps 0-d arrays 0-d
            key = key or own
            self.storages.setdefault(storage, key)
        from .nn.parameter import Parameter
        node = {"type": "tensor", "key": key, "object": len(self.objects),
                "dtype": t.dtype.name, "device": t.device.name,
                "requires_grad": bool(t.requires_grad), "parameter": isinstance(t, Parameter)}
        self.objects[id(t)] = node
        self.keep.append(t)
        return node

    def _ndarray(self, a: np.ndarray, path: tuple) -> dict[str, Any]:
        if id(a) in self.objects:
            return self.objects[id(a)]
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.itemsize > 8:
            raise TypeError(f"save: cannot save {_where(path)}, a NumPy array of dtype "
                            f"{a.dtype}; checkpoints hold arrays of bool, integer and float "
                            "(up to 64-bit) dtypes")
        key = self._key(path)
        self.arrays[key] = np.asarray(a, dtype=a.dtype.newbyteorder("="), order="C")
        node = {"type": "ndarray", "key": key, "object": len(self.objects)}
        self.objects[id(a)] = node
        self.keep.append(a)
        return node


def _storage_identity(t: Tensor) -> tuple:
    """What identifies t's memory: tensors with equal identities share it (a tied weight and
    its detach()es), so their values are stored once."""
    data = t._data
    if isinstance(data, np.ndarray):
        return ("cpu", data.__array_interface__["data"][0], data.shape, data.strides,
                data.dtype.str)
    alias = alias_of(t)
    if alias is not None and not alias.recipe:
        return ("device", id(alias.storage))
    return ("tensor", id(t))


def _is_flat(obj: Any) -> bool:
    return type(obj) in (dict, OrderedDict) and all(
        type(k) is str and isinstance(v, Tensor) for k, v in obj.items())


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write a tensor, state dict or training checkpoint to the safetensors file `path`.

    Tensors on a device are saved from a host copy. Tensors sharing memory are stored once
    and loaded sharing it. The file is written to a temporary name first, then renamed, so an
    interrupted save leaves an earlier file at `path` intact. Anything else than what
    `neurenix.load` can rebuild raises a TypeError naming where it is in `obj`.
    """
    writer = _Writer(flat=_is_flat(obj))
    root = writer.node(obj, ())
    header = json.dumps({"format": FORMAT, "version": VERSION, "root": root},
                        allow_nan=False, separators=(",", ":"))
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        save_file(writer.arrays, tmp, metadata={HEADER_KEY: header})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _Reader:
    """Rebuilds the saved object from the header's structure and the file's arrays."""

    def __init__(self, handle: Any, path: str, map_location: MapLocation) -> None:
        self.handle = handle
        self.path = path
        self.names = set(handle.keys())
        self.map_location = map_location
        self.objects: dict[int, Any] = {}
        self.storages: dict[str, Tensor] = {}

    def corrupt(self, why: str) -> ValueError:
        return ValueError(f"load: {self.path} is not a valid neurenix checkpoint: {why}")

    def array(self, key: Any) -> np.ndarray:
        if not isinstance(key, str) or key not in self.names:
            raise self.corrupt(f"the header refers to a tensor {key!r} the file does not hold")
        try:
            return self.handle.get_tensor(key)
        except (SafetensorError, TypeError, ValueError) as e:
            raise self.corrupt(f"tensor {key!r} cannot be read ({e})") from None

    def node(self, node: Any) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is not dict:
            raise self.corrupt(f"unexpected {type(node).__name__} in the header")
        kind = node.get("type")
        try:
            if kind == "float":
                return float(node["value"])
            if kind in ("dict", "odict"):
                out = {} if kind == "dict" else OrderedDict()
                for key, value in node["items"]:
                    if type(key) not in (str, int):
                        raise self.corrupt(f"a dict key {key!r} is neither str nor int")
                    out[key] = self.node(value)
                return out
            if kind in ("list", "tuple"):
                items = [self.node(value) for value in node["items"]]
                return items if kind == "list" else tuple(items)
            if kind == "numpy_scalar":
                return np.dtype(node["dtype"]).type(self.node(node["value"]))
            if kind == "ndarray":
                if node["object"] not in self.objects:
                    self.objects[node["object"]] = self.array(node["key"]).copy()
                return self.objects[node["object"]]
            if kind == "tensor":
                if node["object"] not in self.objects:
                    self.objects[node["object"]] = self.tensor(node)
                return self.objects[node["object"]]
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ValueError) and str(e).startswith("load: "):
                raise
            raise self.corrupt(f"malformed {kind!r} entry {node!r:.200} ({e})") from None
        raise self.corrupt(f"unknown entry type {kind!r}")

    def tensor(self, node: dict[str, Any]) -> Tensor:
        dtype = dtype_from_name(node["dtype"])
        device = _target(self.map_location, node["device"])
        base = self.storages.get(node["key"])
        if base is None:
            array = self.array(node["key"])
            if array.dtype != np.dtype(dtype.np_type):
                raise self.corrupt(f"tensor {node['key']!r} holds {array.dtype}, the header "
                                   f"says {dtype.name}")
            t = Tensor(array, dtype=dtype, device=device)
            self.storages[node["key"]] = t
        elif base.dtype != dtype:
            raise self.corrupt(f"tensor {node['key']!r} is shared by tensors of dtypes "
                               f"{base.dtype.name} and {dtype.name}")
        else:
            t = base.detach() if base.device == device else Tensor(base, device=device)
        if node["parameter"]:
            from .nn.parameter import Parameter
            return Parameter(t, requires_grad=bool(node["requires_grad"]))
        if node["requires_grad"]:
            t.requires_grad_(True)
        return t


def _target(map_location: MapLocation, saved: str) -> Device:
    """The device a tensor saved on device `saved` is loaded onto."""
    if isinstance(map_location, Mapping):
        map_location = map_location.get(saved, CPU)
    if map_location is None:
        return CPU
    if not isinstance(map_location, (str, Device)):
        raise TypeError(f"load: map_location must be None, a device (such as 'cpu' or "
                        f"'opencl'), or a dict from saved to new devices, got "
                        f"{type(map_location).__name__}")
    return as_device(map_location, check=True)


def load(path: str | os.PathLike, map_location: MapLocation = None) -> Any:
    """Read what `save` wrote (or any safetensors file) back.

    Tensors load on the CPU unless `map_location` names a device, as a device name or
    `Device` for every tensor, or as a dict from the saved device's name (`"opencl:0"`) to
    the device to load on (unlisted ones load on the CPU). A file without a neurenix header
    loads as an ordered dict of tensors. A file that is not a safetensors file, or whose
    header is damaged, raises a ValueError; nothing is ever unpickled.
    """
    path = os.fspath(path)
    for target in (map_location.values() if isinstance(map_location, Mapping)
                   else [map_location]):
        _target(target, "cpu")  # an unavailable device fails before the file is read
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file: {path!r}")
    try:
        handle = safe_open(path, framework="np")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"load: {path} is not a safetensors file ({e}){_hint(path)}") from None
    with handle:
        return _read(handle, path, map_location)


def _read(handle: Any, path: str, map_location: MapLocation) -> Any:
    """The object in the open safetensors file `handle`."""
    metadata = handle.metadata() or {}
    reader = _Reader(handle, path, map_location)
    if HEADER_KEY not in metadata:
        return OrderedDict((k, Tensor(reader.array(k), device=_target(map_location, "cpu")))
                           for k in handle.keys())
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as e:
        raise reader.corrupt(f"its header is not JSON ({e})") from None
    if type(header) is not dict or header.get("format") != FORMAT or "root" not in header:
        raise reader.corrupt("its header does not describe a checkpoint")
    if header.get("version") != VERSION:
        raise reader.corrupt(f"it has format version {header.get('version')!r}; this neurenix "
                             f"reads version {VERSION} (is it from a newer release?)")
    return reader.node(header["root"])


def _hint(path: str) -> str:
    """Why a file may not be a safetensors file, when its first bytes tell."""
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith(b"PK\x03\x04") or start[:1] == b"\x80":
        return ("; it looks like a torch.save pickle, which neurenix never unpickles: save it "
                "with safetensors.torch.save_file instead")
    return ""
