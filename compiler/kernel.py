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

from dataclasses import dataclass, field

from .types import DType, bool_, int64

# ---- expressions --------------------------------------------------------------------------

UNARY_OPS = ("neg", "exp", "log", "sqrt", "tanh", "sigmoid", "erf", "abs", "sign", "floor",
             "reciprocal", "not")
BINARY_OPS = ("add", "sub", "mul", "div", "pow", "max", "min", "eq", "ne", "lt", "le", "gt",
              "ge", "and", "or", "idiv", "mod")
REDUCE_OPS = ("sum", "max", "min", "prod", "argmax", "argmin")


@dataclass(frozen=True)
class Var:
    """The current value of loop axis `axis` (an int64)."""

    axis: int


@dataclass(frozen=True)
class Const:
    """A scalar constant of a dtype."""

    value: float | int | bool
    dtype: DType


@dataclass(frozen=True)
class Load:
    """buffer[index]; where `mask` is given and false, `other` instead, without reading."""

    buffer: str
    index: Expr
    dtype: DType
    mask: Expr | None = None
    other: float | int | bool = 0


@dataclass(frozen=True)
class Unary:
    op: str
    x: Expr


@dataclass(frozen=True)
class Binary:
    """An arithmetic, comparison or logical op.

    `idiv`/`mod` are floor division and its remainder (the divisor's sign), as Python and
    PyTorch define them.  On integers they are exact and never trap: a zero divisor gives 0
    (the frontend raises before), and MIN // -1 wraps to MIN with remainder 0.  On floats
    `idiv` is PyTorch's (and NumPy's) floor division, x / y for a zero divisor, and `mod` is
    fmod(x, y) moved into the divisor's sign (a zero remainder keeps fmod's sign)."""

    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True)
class Where:
    cond: Expr
    a: Expr
    b: Expr


@dataclass(frozen=True)
class Cast:
    dtype: DType
    x: Expr


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


Expr = Var | Const | Load | Unary | Binary | Where | Cast | RandomUniform | Acc


def dtype_of(e: Expr, acc_dtype: DType | None = None) -> DType:
    """The dtype an expression evaluates to."""
    if isinstance(e, Var):
        return int64
    if isinstance(e, (Const, Load, Cast, RandomUniform)):
        return e.dtype
    if isinstance(e, Acc):
        if acc_dtype is None:
            raise ValueError("dtype_of: Acc() outside a reduction kernel")
        return acc_dtype
    if isinstance(e, Unary):
        return bool_ if e.op == "not" else dtype_of(e.x, acc_dtype)
    if isinstance(e, Binary):
        if e.op in ("eq", "ne", "lt", "le", "gt", "ge", "and", "or"):
            return bool_
        return dtype_of(e.a, acc_dtype)
    if isinstance(e, Where):
        return dtype_of(e.a, acc_dtype)
    raise TypeError(f"not a kernel expression: {e!r}")


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
          "le": "<=", "gt": ">", "ge": ">=", "and": "&&", "or": "||", "idiv": "//", "mod": "%"}


def format_expr(e: Expr) -> str:
    """A C-like rendering of an expression, for printing and debugging."""
    if isinstance(e, Var):
        return f"i{e.axis}"
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, Load):
        body = f"{e.buffer}[{format_expr(e.index)}]"
        return body if e.mask is None else f"({format_expr(e.mask)} ? {body} : {e.other!r})"
    if isinstance(e, Unary):
        return f"{e.op}({format_expr(e.x)})"
    if isinstance(e, Binary):
        if e.op in _INFIX:
            return f"({format_expr(e.a)} {_INFIX[e.op]} {format_expr(e.b)})"
        return f"{e.op}({format_expr(e.a)}, {format_expr(e.b)})"
    if isinstance(e, Where):
        return f"({format_expr(e.cond)} ? {format_expr(e.a)} : {format_expr(e.b)})"
    if isinstance(e, Cast):
        return f"({e.dtype.short}){format_expr(e.x)}"
    if isinstance(e, RandomUniform):
        return f"rng_uniform({format_expr(e.seed)}, {format_expr(e.counter)})"
    if isinstance(e, Acc):
        return "acc"
    raise TypeError(f"not a kernel expression: {e!r}")


def format_kernel(k: Kernel) -> str:
    """The kernel as readable pseudo-code (what NEURENIX_DEBUG=3 prints)."""
    args = ", ".join(f"{b.dtype.short}* {b.name}[{b.size}]" for b in k.buffers())
    lines = [f"// {k.comment}" if k.comment else "", f"kernel {k.name}({args}) {{"]
    indent = "  "
    for i, n in enumerate(k.domain):
        lines.append(f"{indent}for i{i} in 0..{n}{' parallel' if k.parallel and i == 0 else ''}:")
        indent += "  "
    if k.reduce_value is not None:
        lines.append(f"{indent}acc = init_{k.reduce_op}")
        inner = indent
        for j, n in enumerate(k.reduce):
            lines.append(f"{inner}for i{len(k.domain) + j} in 0..{n}:")
            inner += "  "
        lines.append(f"{inner}acc = {k.reduce_op}(acc, {format_expr(k.reduce_value)})")
    for s in k.stores:
        op = "+=" if s.accumulate else "="
        lines.append(f"{indent}{s.buffer}[{format_expr(s.index)}] {op} {format_expr(s.value)}")
    lines.append("}")
    return "\n".join(line for line in lines if line)


# ---- schedules ----------------------------------------------------------------------------


@dataclass
class Schedule:
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

    def temporaries(self) -> list[str]:
        fixed = set(self.inputs) | set(self.outputs) | set(self.constants)
        return [name for name in self.buffers if name not in fixed]

    def __str__(self) -> str:
        return "\n\n".join(format_kernel(k) for k in self.kernels)
