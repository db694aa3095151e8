"""A compiled call's key (its signature) and why a new key recompiles, in words.

The key holds the tensors' shapes, dtypes and `requires_grad`, the other arguments' values
(`value_key`: equal exactly when the values are), grad mode and the device the call runs on;
module state is checked by guards (`trace_guards`), and `explain_guards` says which guard
changed.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..tensor import Tensor
from .trace_guards import Guard, plain_key


def describe(t: Tensor) -> tuple:
    data = t._data
    return ("tensor", data.shape if data is not None else tuple(t.shape), t._dtype.name,
            t.requires_grad)


def structure(value: Any, position: int) -> Any:
    """A hashable description of an argument with its tensors left out."""
    if isinstance(value, Tensor):
        return "T"
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(structure(v, position) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((value_key(k, position), structure(v, position))
                              for k, v in value.items()))
    return ("value", value_key(value, position))


def value_key(value: Any, position: int) -> Any:
    """A key for a non-tensor argument that is equal exactly when the values are: plain
    values by type and value, NumPy arrays by dtype, shape and a digest of their bytes,
    containers item by item, other hashable objects by their own equality (functions and
    modules by identity).  Anything else is refused: keying it by `repr` would let two
    different values share one program."""
    key = plain_key(value)
    if key is not None:
        return key
    if isinstance(value, np.ndarray):
        digest = hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=16)
        return ("ndarray", value.dtype.str, value.shape, digest.hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(value_key(v, position) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((value_key(k, position), value_key(v, position))
                              for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"compile: argument {position} is a {type(value).__name__}, which "
                        f"cannot key a compiled program; pass tensors, numbers, strings, NumPy "
                        f"arrays, or tuples, lists and dicts of them") from None
    return ("object", type(value).__qualname__, value)


def explain_guards(guards: list[Guard], tensors: list[Tensor]) -> str:
    """Which of a program's baked-in values (`guards`) changed since its trace, in words."""
    changed = []
    for g in guards:
        now = g.read(tensors)
        if now == g.value:
            continue
        if g.explain is not None:
            changed += [f"{g.what}: {line}" for line in g.explain(g.value, now)] or \
                [f"{g.what} changed"]
        elif _labelled(now) and _labelled(g.value) and len(now) == len(g.value):
            diffs = [(label, old, new) for (label, old), (_, new) in zip(g.value, now)
                     if old != new]
            # a new state tensor changes both the state's keys and identities: name the keys
            plain = [d for d in diffs if not d[0].endswith("identity")] or diffs
            changed += [f"{g.what}: {label} {old!r} -> {new!r}" for label, old, new in plain]
        else:
            changed.append(f"{g.what}: {g.value!r} -> {now!r}")
    return "; ".join(changed) or "guards changed"


def _labelled(value: Any) -> bool:
    """Whether a guard value is a tuple of (label, value) pairs."""
    return isinstance(value, tuple) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)


def explain_change(old: tuple, new: tuple) -> str:
    """Why a signature differs from the previous one, in words."""
    reasons = []
    old_args, old_grad, old_device = old
    new_args, new_grad, new_device = new
    if old_device != new_device:
        reasons.append(f"device changed {old_device.name} -> {new_device.name}")
    if len(old_args) != len(new_args):
        reasons.append(f"{len(new_args)} arguments instead of {len(old_args)}")
    for i, (a, b) in enumerate(zip(old_args, new_args)):
        if a == b:
            continue
        if a[0] == b[0] == "tensor":
            for what, x, y in (("shape", a[1], b[1]), ("dtype", a[2], b[2]),
                               ("requires_grad", a[3], b[3])):
                if x != y:
                    reasons.append(f"input {i} {what} changed {x} -> {y}")
        elif a[0] == b[0] == "tree" and a[1] == b[1]:
            for k, (x, y) in enumerate(zip(a[2], b[2])):
                for what, u, v in (("shape", x[1], y[1]), ("dtype", x[2], y[2]),
                                   ("requires_grad", x[3], y[3])):
                    if u != v:
                        reasons.append(f"input {i} tensor {k} {what} changed {u} -> {v}")
        else:
            reasons.append(f"input {i} changed {_shown(a[1])} -> {_shown(b[1])}")
    if old_grad != new_grad:
        reasons.append(f"grad mode changed {old_grad} -> {new_grad}")
    return "; ".join(reasons) or "new signature"


def _shown(key: Any) -> str:
    """A signature part (see `value_key`) in words."""
    if not isinstance(key, tuple) or not key:
        return repr(key)
    kind = key[0]
    if kind == "ndarray":
        return f"a {key[1]} array of shape {key[2]} (contents {key[3][:8]})"
    if kind in ("tuple", "list") and len(key) == 2 and isinstance(key[1], tuple):
        inner = ", ".join(_shown(k) for k in key[1])
        return f"({inner})" if kind == "tuple" else f"[{inner}]"
    if kind == "dict":
        return "{" + ", ".join(f"{_shown(k)}: {_shown(v)}" for k, v in key[1]) + "}"
    if kind == "object":
        return f"a {key[1]}"
    if kind == "value":
        return _shown(key[1])
    if len(key) == 2 and isinstance(key[1], str):
        return key[1]  # a plain_key: the value's repr
    return repr(key)
