"""The tensors of a compiled call's arguments and results: flattened and rebuilt.

A compiled function takes tensors nested in tuples, lists and dicts (an LSTM's `(h0, c0)`)
and keyword arguments, and returns tensors likewise nested; each tensor is one input or one
output of the compiled program.  These are the flatten / unflatten functions (JAX's pytrees,
for the containers Neurenix accepts).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..tensor import Tensor


def arg_tensors(args: Any) -> list[Tensor]:
    """The tensors of the arguments in order, also those nested in tuples, lists and dicts:
    each is one input of the compiled graph."""
    if type(args) is tuple and all(type(a) is Tensor for a in args):
        return list(args)  # the common call: tensors only
    if isinstance(args, Tensor):
        return [args]
    if isinstance(args, (tuple, list)):
        return [t for item in args for t in arg_tensors(item)]
    if isinstance(args, dict):
        return [t for item in args.values() for t in arg_tensors(item)]
    return []


def replace_tensors(value: Any, symbols: Any) -> Any:
    """`value` with each tensor replaced by the next of `symbols` (same nesting)."""
    if isinstance(value, Tensor):
        return next(symbols)
    if isinstance(value, (tuple, list)):
        items = [replace_tensors(v, symbols) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        items = {k: replace_tensors(v, symbols) for k, v in value.items()}
        return Keywords(items) if isinstance(value, Keywords) else items
    return value


class Keywords(dict):
    """The keyword-only and `**kwargs` arguments of a call, passed on by keyword."""


def call_with(fn: Callable, args: tuple) -> Any:
    """`fn` called with arguments as `Compiled._bind` arranged them."""
    if args and isinstance(args[-1], Keywords):
        return fn(*args[:-1], **args[-1])
    return fn(*args)


def flatten_outputs(obj: Any) -> tuple[list[Tensor], Any]:
    """Tensors of a nested tuple/list/dict result, and the structure to rebuild it."""
    if isinstance(obj, Tensor):
        return [obj], "T"
    if obj is None:
        return [], None
    if isinstance(obj, (tuple, list)):
        leaves: list[Tensor] = []
        defs = []
        for item in obj:
            sub, d = flatten_outputs(item)
            leaves += sub
            defs.append((len(sub), d))
        return leaves, (type(obj), defs)
    if isinstance(obj, dict):
        leaves, defs = [], []
        for k, v in obj.items():
            sub, d = flatten_outputs(v)
            leaves += sub
            defs.append((k, len(sub), d))
        return leaves, (dict, defs)
    raise TypeError(f"compile: the compiled function returned a {type(obj).__name__}; it must "
                    "return tensors, or tuples, lists or dicts of tensors (or None)")


def unflatten_outputs(treedef: Any, leaves: list[Tensor]) -> Any:
    if treedef == "T":
        return leaves[0]
    if treedef is None:
        return None
    kind, defs = treedef
    out, pos = [], 0
    if kind is dict:
        result = {}
        for k, n, d in defs:
            result[k] = unflatten_outputs(d, leaves[pos:pos + n])
            pos += n
        return result
    for n, d in defs:
        out.append(unflatten_outputs(d, leaves[pos:pos + n]))
        pos += n
    return kind(out) if kind is tuple else out
