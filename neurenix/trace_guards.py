"""What a traced program silently depends on, checked before every reuse.

A trace reads more than its tensor arguments: the training flag and the Python-number
attributes of every module it calls, which tensors those modules hold, whether parameters
require grad, the shapes of captured tensors, and Python numbers in the traced function's
closure and globals.  Each becomes a guard (`trace_effects.Guard`); a program is reused only
while all its guards read what they read at trace time, and a change recompiles with a reason
that names it (as `torch.compile`'s guards do).  Tensor *values* are never guarded: parameters,
buffers and captured tensors are graph inputs read on every call.

Module guards are cheap per call: `Module` bumps a version on every attribute assignment and
table change, and the guard re-reads its modules only after the version moved.
"""
from __future__ import annotations

import dis
import enum
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from neurenix.compiler.types import DType

from .nn.module import Module, state_version
from .tensor import Tensor
from .trace_effects import Guard

_PLAIN = (bool, int, float, complex, str, bytes, type(None), DType, enum.Enum, np.generic)
_TABLES = ("training", "_parameters", "_buffers", "_modules", "_non_persistent")


def plain_key(value: Any) -> Any:
    """A comparable key for a plain Python value (numbers, strings, None, dtypes and tuples of
    them), or None for anything else.  The type is part of the key (1, 1.0 and True differ),
    and floats compare by repr (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(value, tuple):
        keys = tuple(plain_key(v) for v in value)
        return None if any(k is None for k in keys) else ("tuple", keys)
    if isinstance(value, _PLAIN):
        return (type(value).__name__, repr(value))
    return None


# ---- modules ---------------------------------------------------------------------------------

def _probes(path: str, m: Module, captured: set[int]) -> list[tuple[str, Callable[[], Any]]]:
    """(label, read) pairs for one module's state: mode, tables, plain attributes, and plain
    tensor attributes the trace captured."""
    d = m.__dict__
    probes: list[tuple[str, Callable[[], Any]]] = [
        (f"{path}training", lambda: m.training),
        (f"{path}parameters", lambda: tuple((k, id(v)) for k, v in m._parameters.items())),
        (f"{path}buffers", lambda: tuple((k, id(v)) for k, v in m._buffers.items())),
        (f"{path}sub-modules", lambda: tuple((k, id(v)) for k, v in m._modules.items())),
    ]
    for name, value in d.items():
        if name in _TABLES:
            continue
        if isinstance(value, Tensor):
            if id(value) in captured:
                probes.append((f"{path}{name}", lambda n=name: id(d.get(n))))
        elif plain_key(value) is not None:
            probes.append((f"{path}{name}", lambda n=name: plain_key(d.get(n, _MISSING))))
    return probes


class _Missing:
    def __repr__(self) -> str:
        return "<deleted>"


_MISSING = _Missing()


def module_guard(modules: Iterable[Module], captured: set[int]) -> Guard | None:
    """One guard over every module the trace called, and all their sub-modules; `captured`
    holds the ids of tensors the trace made inputs (plain tensor attributes among them are
    guarded by identity)."""
    called = list(modules)
    below: set[int] = set()
    for m in called:
        below |= {id(s) for s in m.modules() if s is not m}
    probes: list[tuple[str, Callable[[], Any]]] = []
    seen: set[int] = set()
    for root in called:
        if id(root) in below:
            continue  # labelled from the outermost called module that holds it
        for path, m in root.named_modules(type(root).__name__, memo=seen):
            probes += _probes(f"{path}.", m, captured)
    if not probes:
        return None
    read = _VersionedRead([p for _, p in probes], [label for label, _ in probes])
    return Guard("module state", read, read(()), read.explain)


class _VersionedRead:
    """Reads probes again only when a module attribute or table changed since the last read."""

    def __init__(self, probes: list[Callable[[], Any]], labels: list[str]) -> None:
        self.probes = probes
        self.labels = labels
        self.version = -1
        self.value: tuple = ()

    def __call__(self, args: Any) -> tuple:
        version = state_version()
        if version != self.version:
            self.value = tuple(p() for p in self.probes)
            self.version = version
        return self.value

    def explain(self, old: tuple, new: tuple) -> list[str]:
        return changes(self.labels, old, new)


def changes(labels: list[str], old: tuple, new: tuple) -> list[str]:
    """What differs between two readings of labelled probes, in words."""
    out = []
    for label, a, b in zip(labels, old, new):
        if a == b:
            continue
        if _is_table(a) and _is_table(b):
            before, after = dict(a), dict(b)
            for name in before.keys() | after.keys():
                if name not in after:
                    out.append(f"{label}: {name} removed")
                elif name not in before:
                    out.append(f"{label}: {name} added")
                elif before[name] != after[name]:
                    out.append(f"{label}: {name} replaced")
        elif isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
            out.append(f"{label} replaced")  # an identity
        else:
            out.append(f"{label} {_shown(a)} -> {_shown(b)}")
    return out


def _is_table(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value) \
        and not (len(value) == 2 and isinstance(value[1], str))


def _shown(value: Any) -> str:
    """A probe's reading in words."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[1]  # a plain_key: the value's repr
    return repr(value)


# ---- tensors ---------------------------------------------------------------------------------

def tensor_guard(tensors: list[Tensor], labels: list[str]) -> Guard | None:
    """Whether each tensor the program reads by reference still requires grad, and still has
    its shape and dtype (a captured tensor given a new `.data` of another shape recompiles)."""
    if not tensors:
        return None

    def read(args: Any) -> tuple:
        return tuple((t.requires_grad, t._data.shape, t._dtype) for t in tensors)

    def explain(old: tuple, new: tuple) -> list[str]:
        out = []
        for label, a, b in zip(labels, old, new):
            for what, x, y in zip(("requires_grad", "shape", "dtype"), a, b):
                if x != y:
                    out.append(f"{label} {what} {x} -> {y}")
        return out

    return Guard("tensors read", read, read(()), explain)


# ---- Python values in the traced function ------------------------------------------------------

def free_scalar_guard(fn: Any) -> Guard | None:
    """Python numbers (and strings, tuples of them) the function's code reads from its closure
    or its globals, by value: `scale = 3` after tracing `lambda x: x * scale` recompiles."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    probes: list[tuple[str, Callable[[], Any]]] = []
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if plain_key(value) is not None:
            probes.append((name, lambda c=cell: plain_key(_cell(c))))
    namespace = fn.__globals__
    for name in sorted(_global_names(code)):
        if name in namespace and plain_key(namespace[name]) is not None:
            probes.append((name, lambda n=name: plain_key(namespace.get(n, _MISSING))))
    if not probes:
        return None
    labels = [label for label, _ in probes]
    getters = [p for _, p in probes]

    def read(args: Any) -> tuple:
        return tuple(p() for p in getters)

    def explain(old: tuple, new: tuple) -> list[str]:
        return changes(labels, old, new)

    return Guard(f"values read by {getattr(fn, '__qualname__', 'the function')}", read,
                 read(()), explain)


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _global_names(code: types.CodeType) -> set[str]:
    """Names the code (and the lambdas and comprehensions nested in it) reads as globals."""
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
