"""Specialisation: a shape-polymorphic kernel graph with its dynamic sizes given values.

Every `Sym` leaf becomes a constant and every symbolic extent, buffer size and shape an int;
schedules are dropped (they were decided for the symbols, and are decided again for the
static kernels).  The reference evaluator runs a symbolic kernel graph through this, and the
tests compare a symbolic program at a size with the static one specialised to it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ...runtime.sizes import Poly, size_value
from ..types import int64
from .ir import (
    Acc,
    Binary,
    BufferArg,
    Cast,
    Const,
    Expr,
    Kernel,
    KernelGraph,
    Load,
    RandomUniform,
    Store,
    Sym,
    Unary,
    Var,
    Where,
)


def specialize_expr(e: Expr, env: Mapping[str, int],
                    memo: dict[int, Expr] | None = None) -> Expr:
    """`e` with each `Sym` replaced by its value in `env` (shared subexpressions stay
    shared)."""
    memo = {} if memo is None else memo
    key = id(e)
    if key in memo:
        return memo[key]
    f = lambda x: specialize_expr(x, env, memo)  # noqa: E731
    if isinstance(e, Sym):
        out: Expr = Const(int(env[e.name]), int64)
    elif isinstance(e, (Var, Const, Acc)):
        out = e
    elif isinstance(e, Load):
        out = Load(e.buffer, f(e.index), e.dtype, None if e.mask is None else f(e.mask),
                   e.other)
    elif isinstance(e, Unary):
        out = Unary(e.op, f(e.x))
    elif isinstance(e, Binary):
        out = Binary(e.op, f(e.a), f(e.b))
    elif isinstance(e, Where):
        out = Where(f(e.cond), f(e.a), f(e.b))
    elif isinstance(e, Cast):
        out = Cast(e.dtype, f(e.x))
    elif isinstance(e, RandomUniform):
        out = RandomUniform(f(e.seed), f(e.counter), e.dtype)
    else:
        raise TypeError(f"not a kernel expression: {e!r}")
    memo[key] = out
    return out


def _sizes(sizes: tuple, env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(size_value(s, env) for s in sizes)


def _buffer(b: BufferArg, env: Mapping[str, int]) -> BufferArg:
    return BufferArg(b.name, b.dtype, size_value(b.size, env))


def specialize_kernel(k: Kernel, env: Mapping[str, int]) -> Kernel:
    """The static kernel `k` is at these sizes (unscheduled)."""
    memo: dict[int, Expr] = {}
    f = lambda x: specialize_expr(x, env, memo)  # noqa: E731
    return dataclasses.replace(
        k, inputs=tuple(_buffer(b, env) for b in k.inputs),
        outputs=tuple(_buffer(b, env) for b in k.outputs),
        domain=_sizes(k.domain, env), reduce=_sizes(k.reduce, env),
        stores=tuple(Store(s.buffer, f(s.index), f(s.value), s.accumulate) for s in k.stores),
        reduce_value=None if k.reduce_value is None else f(k.reduce_value),
        contraction=_record(k.contraction, env), schedule=None)


def _record(record: dict | None, env: Mapping[str, int]) -> dict | None:
    """Lowering's contraction record with its sizes and strides evaluated."""
    if record is None:
        return None

    def value(v: object) -> object:
        if isinstance(v, tuple):
            return tuple(value(x) for x in v)
        return v.evaluate(env) if isinstance(v, Poly) else v

    return {key: value(v) for key, v in record.items()}


def specialize_graph(kg: KernelGraph, env: Mapping[str, int]) -> KernelGraph:
    """The static kernel graph `kg` is at these sizes."""
    return KernelGraph([specialize_kernel(k, env) for k in kg.kernels],
                       {n: _buffer(b, env) for n, b in kg.buffers.items()},
                       list(kg.inputs), list(kg.outputs),
                       {n: _sizes(s, env) for n, s in kg.shapes.items()}, dict(kg.constants))


def is_symbolic(kg: KernelGraph) -> bool:
    """Whether any shape of `kg` is dynamic."""
    return any(isinstance(d, Poly) for s in kg.shapes.values() for d in s) or any(
        isinstance(b.size, Poly) for b in kg.buffers.values())
