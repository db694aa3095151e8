"""The kernel IR: what every code generator reads (none of them looks at the graph).

A `Kernel` is one loop nest over an iteration `domain` (parallel axes, outermost first),
optionally followed by one reduction over `reduce` axes, ending in `Store`s:

    for d0 in range(domain[0]):            # parallel: CPU threads, GPU blocks/threads
      for d1 in range(domain[1]):
        acc = identity(reduce_op)
        for r0 in range(reduce[0]):        # sequential reduction
          acc = combine(acc, reduce_value)
        for store in stores:
          buffer[store.index] = store.value   # may read Acc(), the finished reduction

Loop variables are `Var(i)`: `i < len(domain)` are domain axes, the next `len(reduce)` are
reduction axes.  Every buffer is a contiguous row-major array addressed by a flat element
index; views (permute, broadcast, slice, pad, reshape, unfold) are folded into the index
expressions of `Load`s by lowering.  A `Load` with a `mask` reads `other` where the mask is
false and must not touch memory there, so generated code never reads out of bounds.

Expressions are frozen dataclasses: hashable, structurally comparable, shareable.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace

import numpy as np

from ...runtime.sizes import Poly
from ..types import DType, float32, int64
from .ops import BINARY_OPS, UNARY_OPS

# ---- expressions --------------------------------------------------------------------------


def _cached_hash(cls: type) -> type:
    """Remember a compound expression's hash once computed.  Expressions are DAGs that share
    subexpressions (`x ** n` unrolled by squaring shares each square twice), and a frozen
    dataclass's hash walks its fields every time, so uncached it costs the size of the tree,
    exponentially more than the DAG.  The cached value is not pickled (string hashes differ
    between processes)."""
    structural = cls.__hash__

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = structural(self)
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    cls.__hash__ = __hash__
    cls.__getstate__ = __getstate__
    return cls


@dataclass(frozen=True)
class Var:
    """The current value of loop axis `axis` (an int64)."""

    axis: int


@dataclass(frozen=True)
class Sym:
    """The run-time value of the dynamic size `name` (an int64; compiler/symbolic.py)."""

    name: str


@dataclass(frozen=True)
class Const:
    """A scalar constant of a dtype."""

    value: float | int | bool
    dtype: DType


@_cached_hash
@dataclass(frozen=True)
class Load:
    """buffer[index]; where `mask` is given and false, `other` instead, without reading."""

    buffer: str
    index: Expr
    dtype: DType
    mask: Expr | None = None
    other: float | int | bool = 0


@_cached_hash
@dataclass(frozen=True)
class Unary:
    """A unary op of compiler/kernel/ops.py (an unknown name raises ValueError)."""

    op: str
    x: Expr

    def __post_init__(self) -> None:
        if self.op not in UNARY_OPS:
            raise ValueError(f"Unary: {self.op!r} is not a unary kernel op; known: "
                             f"{', '.join(UNARY_OPS)}")


@_cached_hash
@dataclass(frozen=True)
class Binary:
    """An arithmetic, comparison or logical op.

    `idiv`/`mod` are floor division and its remainder (the divisor's sign), as Python and
    PyTorch define them.  On integers they are exact and never trap: a zero divisor gives 0
    (the frontend raises before), and MIN // -1 wraps to MIN with remainder 0.  On floats
    `idiv` is PyTorch's (and NumPy's) floor division, x / y for a zero divisor, and `mod` is
    fmod(x, y) moved into the divisor's sign (a zero remainder keeps fmod's sign).

    The op is one of compiler/kernel/ops.py (an unknown name raises ValueError)."""

    op: str
    a: Expr
    b: Expr

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"Binary: {self.op!r} is not a binary kernel op; known: "
                             f"{', '.join(BINARY_OPS)}")


@_cached_hash
@dataclass(frozen=True)
class Where:
    cond: Expr
    a: Expr
    b: Expr


@_cached_hash
@dataclass(frozen=True)
class Cast:
    dtype: DType
    x: Expr


@_cached_hash
@dataclass(frozen=True)
class RandomUniform:
    """Uniform [0, 1) float of `dtype` from an int64 seed and an int64 counter (see
    compiler/ops/source.py for the exact hash every backend implements)."""

    seed: Expr
    counter: Expr
    dtype: DType


@dataclass(frozen=True)
class Acc:
    """The finished value of the kernel's reduction (the index for argmax/argmin)."""


Expr = Var | Sym | Const | Load | Unary | Binary | Where | Cast | RandomUniform | Acc


def dtype_of(e: Expr, acc_dtype: DType | None = None) -> DType:
    """The dtype an expression evaluates to."""
    if isinstance(e, (Var, Sym)):
        return int64
    if isinstance(e, (Const, Load, Cast, RandomUniform)):
        return e.dtype
    if isinstance(e, Acc):
        if acc_dtype is None:
            raise ValueError("dtype_of: Acc() outside a reduction kernel")
        return acc_dtype
    if isinstance(e, Unary):
        return UNARY_OPS[e.op].result(dtype_of(e.x, acc_dtype))
    if isinstance(e, Binary):
        return BINARY_OPS[e.op].result(dtype_of(e.a, acc_dtype))
    if isinstance(e, Where):
        return dtype_of(e.a, acc_dtype)
    raise TypeError(f"not a kernel expression: {e!r}")


def size_expr(size: int | Poly) -> Expr:
    """A size as an int64 expression: a constant, or the polynomial of a dynamic size over
    `Sym` leaves."""
    if isinstance(size, int):
        return Const(size, int64)
    total: Expr | None = None
    for monomial, coefficient in size.terms:
        term: Expr | None = None if coefficient == 1 and monomial else Const(coefficient, int64)
        for name in monomial:
            term = Sym(name) if term is None else Binary("mul", term, Sym(name))
        total = term if total is None else Binary("add", total, term)
    return total


# ---- kernels ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferArg:
    """A kernel argument: a contiguous array of `size` elements of `dtype`."""

    name: str
    dtype: DType
    size: int


@dataclass(frozen=True)
class Store:
    """buffer[index] = value at every domain point; `accumulate` adds instead (scatter-add:
    the kernel is then not parallel over axes that can collide)."""

    buffer: str
    index: Expr
    value: Expr
    accumulate: bool = False


@dataclass(frozen=True)
class Kernel:
    """One loop nest: domain, an optional reduction, and stores."""

    name: str
    inputs: tuple[BufferArg, ...]
    outputs: tuple[BufferArg, ...]
    domain: tuple[int, ...]
    stores: tuple[Store, ...]
    reduce: tuple[int, ...] = ()
    reduce_op: str | None = None
    reduce_value: Expr | None = None
    parallel: bool = True
    comment: str = ""
    contraction: dict | None = field(default=None, compare=False)
    index_bits: int = 64
    """Width of the index arithmetic (`Var`s, flat offsets): 64, or 32 where every size of
    the kernel fits and the target prefers it (chosen per target before code generation)."""
    schedule: object | None = field(default=None, compare=False)
    """How the target carries the kernel out: a typed schedule from `compiler.schedule`,
    written by the schedule rules (None until scheduled)."""

    @property
    def acc_dtype(self) -> DType | None:
        if self.reduce_value is None:
            return None
        if self.reduce_op in ("argmax", "argmin"):
            return int64
        return dtype_of(self.reduce_value)

    def buffers(self) -> tuple[BufferArg, ...]:
        return self.inputs + self.outputs


# ---- printing -----------------------------------------------------------------------------

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<",
          "le": "<=", "gt": ">", "ge": ">=", "and": "&&", "or": "||", "idiv": "//", "mod": "%",
          "bitand": "&", "bitor": "|", "xor": "^", "shl": "<<", "shr": ">>"}


def format_expr(e: Expr, names: dict[int, str] | None = None) -> str:
    """A C-like rendering of an expression, for printing and debugging; a subexpression in
    `names` (by identity) prints as its name."""
    if names and id(e) in names:
        return names[id(e)]
    f = (lambda x: format_expr(x, names)) if names else format_expr
    if isinstance(e, Var):
        return f"i{e.axis}"
    if isinstance(e, Sym):
        return e.name
    if isinstance(e, Const):
        if e.dtype == float32:  # the shortest text that is this float32 (1e-05)
            return str(np.float32(e.value))
        return repr(e.value)
    if isinstance(e, Load):
        body = f"{e.buffer}[{f(e.index)}]"
        return body if e.mask is None else f"({f(e.mask)} ? {body} : {e.other!r})"
    if isinstance(e, Unary):
        return f"{e.op}({f(e.x)})"
    if isinstance(e, Binary):
        if e.op in _INFIX:
            return f"({f(e.a)} {_INFIX[e.op]} {f(e.b)})"
        return f"{e.op}({f(e.a)}, {f(e.b)})"
    if isinstance(e, Where):
        return f"({f(e.cond)} ? {f(e.a)} : {f(e.b)})"
    if isinstance(e, Cast):
        return f"({e.dtype.short}){f(e.x)}"
    if isinstance(e, RandomUniform):
        return f"rng_uniform({f(e.seed)}, {f(e.counter)})"
    if isinstance(e, Acc):
        return "acc"
    raise TypeError(f"not a kernel expression: {e!r}")


def children(e: Expr) -> tuple[Expr, ...]:
    """The operand expressions of `e` (a load's index and mask included)."""
    if isinstance(e, Load):
        return (e.index,) if e.mask is None else (e.index, e.mask)
    if isinstance(e, (Unary, Cast)):
        return (e.x,)
    if isinstance(e, Binary):
        return (e.a, e.b)
    if isinstance(e, Where):
        return (e.cond, e.a, e.b)
    if isinstance(e, RandomUniform):
        return (e.seed, e.counter)
    return ()


def rebuild(e, visit: Callable, memo: dict | None = None):
    """Kernel or expression `e` rebuilt bottom-up: every dataclass node in it (expressions,
    loads, stores, buffer arguments; dynamic sizes are leaves) over its rebuilt fields, then
    offered to `visit`, which returns it or its replacement.  Shared nodes are visited once
    (by identity, through `memo`), so the result shares them too; a subtree nothing changed
    is returned as it was."""
    memo = {} if memo is None else memo
    if id(e) in memo:
        return memo[id(e)][1]
    out = e
    if is_dataclass(e) and not isinstance(e, (type, Poly)):
        changes = {}
        for fld in fields(e):
            v = getattr(e, fld.name)
            if isinstance(v, tuple):
                new = tuple(rebuild(x, visit, memo) for x in v)
                if any(a is not b for a, b in zip(new, v)):
                    changes[fld.name] = new
            elif is_dataclass(v):
                new = rebuild(v, visit, memo)
                if new is not v:
                    changes[fld.name] = new
        out = visit(replace(e, **changes) if changes else e)
    memo[id(e)] = (e, out)
    return out


def postorder(roots: list[Expr]) -> list[Expr]:
    """Every node under `roots` once (by identity), children before parents."""
    order: list[Expr] = []
    seen: set[int] = set()
    stack: list[tuple[Expr, bool]] = [(r, False) for r in roots]
    while stack:
        e, done = stack.pop()
        if done:
            order.append(e)
            continue
        if id(e) in seen:
            continue
        seen.add(id(e))
        stack.append((e, True))
        stack.extend((c, False) for c in children(e))
    return order


def _shared(roots: list[Expr]) -> list[Expr]:
    """The compound subexpressions (loads aside) that `roots` use more than once, each after
    those it uses: an expression is a DAG, and printed as a tree a shared subexpression would
    repeat (exponentially often, for `x ** n` unrolled by squaring)."""
    uses: dict[int, int] = {}
    order: list[Expr] = []
    stack: list[tuple[Expr, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        e, done = stack.pop()
        if done:
            order.append(e)
            continue
        uses[id(e)] = uses.get(id(e), 0) + 1
        if uses[id(e)] == 1:
            stack.append((e, True))
            stack.extend((c, False) for c in reversed(children(e)))
    return [e for e in order
            if uses[id(e)] > 1 and children(e) and not isinstance(e, Load)]


class _Names:
    """Binding names e0, e1, ... skipping the kernel's buffer names (a temporary buffer is
    t<k>, so a binding never reads like one)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.next = 0

    def __call__(self) -> str:
        while f"e{self.next}" in self.taken:
            self.next += 1
        self.next += 1
        return f"e{self.next - 1}"


def _let_lines(roots: list[Expr], indent: str, names: dict[int, str],
               fresh: _Names) -> list[str]:
    """`e<k> = ...` lines for the shared subexpressions of `roots`, which are added to
    `names`."""
    lines = []
    for e in _shared(roots):
        name = fresh()
        lines.append(f"{indent}{name} = {format_expr(e, names)}")
        names[id(e)] = name
    return lines


def format_kernel(k: Kernel) -> str:
    """The kernel as readable pseudo-code (what NEURENIX_DEBUG=3 prints); a subexpression
    used more than once is printed once, bound to a name `e<k>`."""
    args = ", ".join(f"{b.dtype.short}* {b.name}[{b.size}]" for b in k.buffers())
    lines = [f"// {k.comment}" if k.comment else "", f"kernel {k.name}({args}) {{"]
    if k.index_bits != 64:
        lines.append(f"  // index_bits {k.index_bits}")
    indent = "  "
    for i, n in enumerate(k.domain):
        lines.append(f"{indent}for i{i} in 0..{n}{' parallel' if k.parallel and i == 0 else ''}:")
        indent += "  "
    fresh = _Names({b.name for b in k.buffers()})
    if k.reduce_value is not None:
        lines.append(f"{indent}acc = init_{k.reduce_op}")
        inner = indent
        for j, n in enumerate(k.reduce):
            lines.append(f"{inner}for i{len(k.domain) + j} in 0..{n}:")
            inner += "  "
        inner_names: dict[int, str] = {}
        lines += _let_lines([k.reduce_value], inner, inner_names, fresh)
        lines.append(f"{inner}acc = {k.reduce_op}(acc, "
                     f"{format_expr(k.reduce_value, inner_names)})")
    names: dict[int, str] = {}
    lines += _let_lines([e for s in k.stores for e in (s.index, s.value)], indent, names, fresh)
    for s in k.stores:
        op = "+=" if s.accumulate else "="
        lines.append(f"{indent}{s.buffer}[{format_expr(s.index, names)}] {op} "
                     f"{format_expr(s.value, names)}")
    lines.append("}")
    return "\n".join(line for line in lines if line)


# ---- kernel graphs ----------------------------------------------------------------------------


@dataclass
class KernelGraph:
    """A lowered graph: kernels in launch order over named buffers.

    Buffers named in `inputs` are the graph's inputs (same names, same order); `outputs` are
    the buffers holding the graph's outputs, each written by a kernel (never aliasing an input
    or a constant); `constants` hold captured arrays; every other buffer is a temporary that
    memory planning places in the arena.
    """

    kernels: list[Kernel]
    buffers: dict[str, BufferArg]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]  # the logical shape of every input and output buffer
    constants: dict = field(default_factory=dict)  # name -> np.ndarray

    def with_kernels(self, kernels: list[Kernel]) -> KernelGraph:
        """A kernel graph over `kernels` with these buffers, inputs, outputs, shapes and
        constants (each container copied, so rewrites never share mutable state)."""
        return KernelGraph(list(kernels), dict(self.buffers), list(self.inputs),
                           list(self.outputs), dict(self.shapes), dict(self.constants))

    def temporaries(self) -> list[str]:
        fixed = set(self.inputs) | set(self.outputs) | set(self.constants)
        return [name for name in self.buffers if name not in fixed]

    def __str__(self) -> str:
        return "\n\n".join(format_kernel(k) for k in self.kernels)
