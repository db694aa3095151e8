"""Calls a compiled program cannot honour because its inputs share memory.

A traced program takes every argument and captured tensor as an input of its own and writes
the ones it updates in place back after the call.  When an updated input shares memory with
another input (the same tensor passed twice, two views of one array, a parameter passed as an
argument too), eager sees each write through the other name at once and the program does not;
when an updated argument is an expanded view, eager raises.  Such a call runs eagerly instead
(`Compiled.__call__` logs why): eager's answer, or eager's error.

Every input's memory is looked up on every call (an attribute read or two per tensor: about
4 us for a training step with 30 parameters and optimizer states).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tensor import Tensor


class WriteCheck:
    """For one compiled program that writes inputs in place (`updates`): why a call cannot
    run as eager would, or None (`check(tensors)`, the call's flattened tensor arguments)."""

    def __init__(self, sources: Sequence[tuple[str, Any]], updates: Sequence[tuple[str, Any]],
                 names: Sequence[str]) -> None:
        written_args = {ref for kind, ref in updates if kind == "arg"}
        written = {id(ref) for kind, ref in updates if kind == "tensor"}
        self.captured = [ref for kind, ref in sources if kind == "tensor"]
        self.arg_refs = [ref for kind, ref in sources if kind == "arg"]
        # (name, written in place) of each, captured tensors first
        self.names = [(name, id(ref) in written) for (kind, ref), name in zip(sources, names)
                      if kind == "tensor"]
        self.names += [(name, ref in written_args) for (kind, ref), name in zip(sources, names)
                       if kind == "arg"]
        self.written_args = [(ref, name) for (kind, ref), name in zip(sources, names)
                             if kind == "arg" and ref in written_args]

    def check(self, tensors: Sequence[Tensor]) -> str | None:
        # the memory of every input, now: the program gives the captured tensors it writes
        # fresh buffers after each call, and the caller may give any tensor other storage
        roots = [_root(t._data) for t in self.captured]
        roots += [_root(tensors[ref]._data) for ref in self.arg_refs]
        if len(set(roots)) < len(roots):
            seen: dict[int, tuple[str, bool]] = {}
            for root, (name, mine) in zip(roots, self.names):
                other = seen.get(root)
                if other is not None and (mine or other[1]):
                    return _shared(other[0], name)
                seen[root] = (name, mine or (other is not None and other[1]))
        for ref, name in self.written_args:
            if _repeats_elements(tensors[ref]):
                return (f"{name} is an expanded view (more than one element refers to a "
                        f"single memory location) and the program writes it in place")
        return None


def _root(data: Any) -> int:
    """An identity of the memory an array views: its outermost base."""
    while getattr(data, "base", None) is not None:
        data = data.base
    return id(data)


def _shared(a: str, b: str) -> str:
    return f"{a} and {b} share memory, and the program writes one of them in place"


def _repeats_elements(t: Tensor) -> bool:
    strides = getattr(t._data, "strides", None)
    return strides is not None and any(s == 0 and n > 1 for s, n in zip(strides, t.shape))
