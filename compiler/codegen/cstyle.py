"""The C-family renderer: a scheduled kernel becomes GPU kernel source through a `Dialect`.

The renderer decides everything but syntax: how a schedule of compiler/schedule/grid.py maps
the kernel's points onto work-items (a grid-stride loop, a work-group tree reduction in local
memory, contraction tiles staged in local memory), the loops and the reductions (identities,
NaN-propagating max/min, argmax/argmin taking the first extreme), and every kernel-IR
operation with the kernel evaluator's semantics (compiler/kernel/eval.py): integer floor
division and modulo that never trap, float floor division and remainder as PyTorch, wrapping
integer arithmetic, shifts modulo the width, float to integer casts giving INT_MIN out of
range (x86's rule), masked loads that never read where the mask is false.  A `Dialect`
supplies the syntax: types, literals, conversions, select, declarations and loops, thread
indices, barriers, local memory, buffer access and the kernel's signature (OpenCL C, WGSL;
CUDA and HIP next: `CFamily` holds the C syntax they share).  A dialect without 64-bit
integers gets every int64 operation as `int64_op` (WGSL emulates them), and one whose driver
limits an invocation's loop iterations (`loop_limit`) gets long loops unrolled.

Dynamic sizes (docs/compiler/dynamic-shapes.md), for a dialect that takes them (`dynamic`): a
kernel that reads a symbol (a `Sym` leaf, an extent, a count, a launch of `Groups`) takes each
of the program's symbols as a 64-bit scalar argument after its buffers (`Program.symbols`
order, the kernel listed in `metadata["sized_kernels"]`); the sizes it needs are computed from
them once at its top, and its grid-stride loops step by the work-groups launched
(`Dialect.groups`), which the runtime computes per call from the grid's `Groups`.  A dialect
whose sizes are 32-bit (`size_type`, `size_limit`: WGSL) computes them in its index type and
lists every size it uses in `metadata["size_checks"]` for the runtime to check per call; under
a `loop_limit` a kernel counts its loop iterations per invocation as a polynomial bound
(`counted`) and guards the sizes that keep it to half the limit.  A static kernel whose count
passes the limit is rendered again, unrolled more, as a work-group per output point or (a
serial kernel) as several kernels over parts of its points, and refused at compile time where
nothing keeps within it (`_render_static`).

Expressions are DAGs: a subexpression used more than once in a scope is bound to a name once
(as `_shared` in kernel/ir.py prints it), and an operation that reads an operand twice binds
it first.  Index arithmetic (`Var`s and what is computed from them and constants alone) is in
the kernel's `index_bits`: a 32-bit kernel computes it in 32 bits, widening where it meets
64-bit data.
"""
from __future__ import annotations

import json
import math
import re
import struct
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from ...runtime.program import KernelInfo, Program
from ...runtime.sizes import Groups, Poly, Size, extent_to_json, poly_from_terms
from ..kernel.ir import (
    Acc,
    Binary,
    Cast,
    Const,
    Expr,
    Kernel,
    KernelGraph,
    Load,
    RandomUniform,
    Sym,
    Unary,
    Var,
    Where,
    children,
    dtype_of,
    postorder,
)
from ..kernel.memory import MemoryPlan, plan_memory
from ..kernel.ops import BINARY_OPS
from ..schedule import schedule_kernel, target_rules
from ..schedule.grid import (
    MAX_GROUPS,
    GridLoop,
    GroupReduction,
    TiledContraction,
    group_reduction,
)
from ..schedule.sizes import kernel_symbols
from ..symbolic import Dim, DynamicSizeError, current_env, size_bounds
from ..targets import Target
from ..types import DType, bool_, float32, float64, int32, int64, uint32
from .program_specs import (
    buffer_specs,
    constant_arrays,
    parameters,
    program_symbols,
    storage_root,
    tensor_specs,
)

_INDEX64 = int64
"""int64 where the class body of `Dialect` names its attribute `int64`."""
LONG = 4096
"""Steps per work-item from which a loop is long (unrolled under a `loop_limit`)."""
UNROLL, MAX_UNROLL = 8, 64
"""Copies of a long loop's body per iteration, at least and at most."""
MAX_BOOST = 256
"""Copies at most of a loop's body in a static kernel rendered again because its loops passed
the `loop_limit` (`_Renderer.boost`); a serial kernel needing more is split into parts."""


class GridCodegenError(ValueError):
    """A kernel a GPU target cannot carry out (its message names the target)."""


@dataclass(frozen=True)
class Param:
    """A kernel argument: a buffer, whether the kernel writes it, and whether it is device
    memory kernels write (an output or a temporary: WebGPU binds those read-write, since a
    buffer may not be bound both read-only and writable in one dispatch)."""

    name: str
    dtype: DType
    writable: bool
    shared: bool = False
    ident: str = ""
    """The identifier in the source: the buffer's name made safe (a buffer may be named
    like a keyword of the language, `target` in WGSL, or hold dots)."""


class Dialect:
    """The syntax of one C-family language; the renderer calls these and nothing else.

    Text in, text out: an expression argument is already rendered (and parenthesised where
    it is compound), of the register type `self.type(dtype)`."""

    name = ""
    """The target name (error messages)."""
    int64 = True
    """Whether 64-bit integers are native (else every int64 operation is `int64_op`)."""
    loop_limit = 0
    """Loop iterations an invocation may run in all (0: no limit).  Mesa's llvmpipe
    (lavapipe) silently ends an invocation's loops after 65,535: WGSL unrolls long loops."""
    warp = 0
    """Lanes that run in lockstep and exchange registers through `shuffle_down` (CUDA's warp;
    32 of an AMD wavefront's 32 or 64); 0: none.  A work-group reduction ends with shuffles
    over the last `warp` partials instead of local-memory levels and barriers."""
    dynamic = False
    """Whether kernels may take dynamic sizes (scalar arguments, `groups`); else a program
    with symbols raises `DynamicSizeError` (the frontend compiles static programs)."""
    size_type = _INDEX64
    """The dtype of the symbols' values and of the sizes computed from them (WGSL: int32,
    its index type)."""
    size_limit = 0
    """The largest value a dynamic size may take (0: any): a dialect computing sizes in 32
    bits assumes it, and the runtime refuses a call past it (`metadata["size_checks"]`)."""
    helper_loops: dict[str, int] = {}
    """Loop iterations one call of each helper function runs at most (under `loop_limit`:
    counted in a kernel's iterations)."""
    flat_calls: frozenset[str] = frozenset()
    """Functions of `call`, and int64 operations of `int64_op` (as `int64_<op>`), the dialect
    also renders without loops, as `call(fn + "_flat")` and `int64_op(op + "_flat")` (WGSL's
    fmod, int64 floor division, modulo and power): a kernel rendered again because its loops
    passed the `loop_limit` (`_Renderer.boost`) calls those."""
    tf32_guard = ""
    """The preprocessor condition under which float32 tiled contractions run on TF32 tensor
    cores (`mma_tf32`, 16 x 8 x 8 warp tiles); "" where they never do.  The kernel keeps
    the float32 loop for the other case, so one source serves every architecture."""

    def tf32(self, x: str) -> str:
        """The float32 value `x` rounded to TF32, as the uint32 register `mma_tf32` takes."""
        raise NotImplementedError

    def mma_tf32(self, acc: list[str], a: list[str], b: list[str]) -> str:
        """acc (4 float32 registers of a 16 x 8 warp tile) += a (16 x 8) @ b (8 x 8), the
        operands as float32 values rounded to TF32 (the layouts of docs/targets/cuda.md)."""
        raise NotImplementedError

    def type(self, dtype: DType) -> str:
        """The register type of `dtype`."""
        raise NotImplementedError

    def bits(self, dtype: DType) -> int:
        """The width of `dtype`'s register type."""
        return 8 * dtype.itemsize

    def int_literal(self, value: int, dtype: DType) -> str:
        raise NotImplementedError

    def float_literal(self, value: float, dtype: DType) -> str:
        """A finite float constant (`float_bits` for the others)."""
        raise NotImplementedError

    def float_bits(self, bits: int, dtype: DType) -> str:
        """The float whose IEEE bits are `bits` (infinities, NaN)."""
        raise NotImplementedError

    def truncate(self, x: str, src: DType, dst: DType) -> str:
        """Float `x` (in range) to signed integer `dst`, rounding toward zero."""
        raise NotImplementedError

    def bool_literal(self, value: bool) -> str:
        return "true" if value else "false"

    def convert(self, x: str, src: DType, dst: DType) -> str:
        """A value conversion between integers (wrapping, widening), int or bool to float,
        bool to int, float to float; never float to int (the renderer guards those)."""
        raise NotImplementedError

    def select(self, cond: str, a: str, b: str) -> str:
        """`a` where `cond`, else `b` (both evaluated)."""
        raise NotImplementedError

    def wrap(self, op: str, a: str, b: str, dtype: DType) -> str:
        """`a op b` (op in + - *) wrapping on integers of `dtype`."""
        raise NotImplementedError

    def shift(self, op: str, a: str, count: str, dtype: DType) -> str:
        """`a << count` / `a >> count` (op "<<", ">>"), count already in [0, width)."""
        raise NotImplementedError

    def int_abs(self, x: str, dtype: DType) -> str:
        """|x| wrapping (|MIN| is MIN)."""
        raise NotImplementedError

    def isnan(self, x: str, dtype: DType) -> str:
        raise NotImplementedError

    def bitcast(self, x: str, src: DType, dst: DType) -> str:
        """The bits of `x` as `dst`, a dtype of the same width (a buffer that shares its
        storage with one of another dtype)."""
        raise NotImplementedError

    def compare(self, op: str, a: str, b: str, dtype: DType) -> str:
        """`a op b` for a C comparison operator (`!=` true where either is NaN)."""
        return f"({a} {op} {b})"

    def call(self, fn: str, args: list[str], dtype: DType) -> str:
        """A math function of C's name (exp, log, sqrt, tanh, erf, sin, cos, floor, trunc, fabs,
        fmod, pow, copysign) on floats of `dtype`."""
        raise NotImplementedError

    def int64_op(self, op: str, args: list[str]) -> str:
        """An int64 kernel-IR op (unary: neg, abs, sign, floor; binary: arithmetic,
        comparisons, bit operations, shifts, max, min) of a dialect without 64-bit integers,
        with eval.py's semantics."""
        raise NotImplementedError

    def sign(self, x: str, dtype: DType) -> str | None:
        """-1, 0 or 1 of float `x` (+0.0 at +-0 and NaN), or None for the renderer's."""
        return None

    def declare(self, name: str, dtype: DType, value: str, mutable: bool = False) -> str:
        raise NotImplementedError

    def loop(self, var: str, dtype: DType, start: str, stop: str, step: str) -> str:
        """The header of `for var in [start, stop) by step` (the renderer closes it)."""
        raise NotImplementedError

    def load(self, param: Param, index: str) -> str:
        """Element `index` of a buffer, as a register value."""
        raise NotImplementedError

    def store(self, param: Param, index: str, value: str) -> list[str]:
        """Statements writing `value` (a register value) at element `index`."""
        raise NotImplementedError

    def thread(self, kind: str, dim: int, dtype: DType) -> str:
        """The work-group ("group") or work-item in work-group ("local") index along `dim`."""
        raise NotImplementedError

    def barrier(self) -> str:
        raise NotImplementedError

    def groups(self, dim: int, dtype: DType) -> str:
        """The number of work-groups launched along `dim` (dynamic sizes only)."""
        raise DynamicSizeError(f"{self.name}: kernels of dynamic sizes are not supported")

    def shuffle_down(self, x: str, offset: int, dtype: DType) -> str:
        """`x` of the lane `offset` above this one (`warp` lanes; int32, int64, uint32,
        float32 and float64 values)."""
        raise NotImplementedError

    def local_access(self, name: str, index: str) -> str:
        return f"{name}[{index}]"

    def check(self, kernel: Kernel, kernels: KernelGraph) -> None:
        """Refuse what the target cannot carry out (a GridCodegenError naming it)."""

    def unit(self, sources: list[str], kernels: list[Kernel]) -> str:
        """`Program.source`: the kernels' sources as one text."""
        return "\n\n".join(sources) + "\n"

    def metadata(self, kernels: KernelGraph, scheduled: list[Kernel]) -> dict:
        """What the runtime needs besides the kernels (build options, storage layouts)."""
        return {}

    def kernel(self, name: str, params: list[Param], block: tuple[int, ...],
               local: list[tuple[str, DType, int]], body: list[str], comment: str) -> str:
        """The whole kernel: its signature, `local` arrays (name, dtype, length) and body; a
        `dynamic` dialect also takes `sizes=[identifiers]`, int64 scalar arguments after the
        buffers (passed only to a kernel that reads symbols)."""
        raise NotImplementedError


_U64 = DType("uint64", "u64", np.uint64, 1)
"""uint64, for wrapping 64-bit arithmetic in C dialects (not a kernel dtype)."""


class CFamily(Dialect):
    """The C syntax OpenCL C, CUDA and HIP share; their dialects add address spaces, thread
    builtins and bit reinterpretation."""

    TYPES = {"bool": "bool", "int32": "int", "int64": "long", "uint32": "uint",
             "uint64": "ulong", "float32": "float", "float64": "double"}
    SUFFIX = {"int64": "L", "uint32": "u", "uint64": "UL"}
    """Integer literal suffixes by dtype name (C's long is 64-bit in OpenCL, not in CUDA)."""

    def type(self, dtype: DType) -> str:
        return self.TYPES[dtype.name]

    def reinterpret(self, x: str, dst: DType) -> str:
        """The bits of `x` as `dst` (same width)."""
        raise NotImplementedError

    def int_literal(self, value: int, dtype: DType) -> str:
        bits = self.bits(dtype)
        suffix = self.SUFFIX.get(dtype.name, "")
        if dtype.is_signed and value == -(1 << (bits - 1)):
            return f"({value + 1}{suffix} - 1{suffix})"
        return f"{value}{suffix}" if value >= 0 else f"({value}{suffix})"

    def float_literal(self, value: float, dtype: DType) -> str:
        text = repr(float(value)) if dtype == float64 else str(np.float32(value))
        if "e" not in text and "." not in text:
            text += ".0"
        text += "" if dtype == float64 else "f"
        return f"({text})" if text.startswith("-") else text

    def float_bits(self, bits: int, dtype: DType) -> str:
        if dtype == float64:
            return self.reinterpret(f"{bits:#x}{self.SUFFIX['uint64']}", dtype)
        return self.reinterpret(f"{bits:#x}u", dtype)

    def truncate(self, x: str, src: DType, dst: DType) -> str:
        return f"(({self.type(dst)})({x}))"

    def convert(self, x: str, src: DType, dst: DType) -> str:
        if src == dst:
            return x
        if src.is_integer and dst.is_integer:
            if self.bits(src) == self.bits(dst):
                return self.reinterpret(x, dst)
            if self.bits(dst) < self.bits(src) and dst.is_signed:  # wrap, defined in C
                return self.reinterpret(f"(({self.type(uint32)})({x}))", dst)
        return f"(({self.type(dst)})({x}))"

    def select(self, cond: str, a: str, b: str) -> str:
        return f"({cond} ? {a} : {b})"

    def wrap(self, op: str, a: str, b: str, dtype: DType) -> str:
        if not dtype.is_signed:
            return f"({a} {op} {b})"
        unsigned = uint32 if self.bits(dtype) == 32 else _U64
        return self.reinterpret(f"({self.reinterpret(a, unsigned)} {op} "
                                f"{self.reinterpret(b, unsigned)})", dtype)

    def shift(self, op: str, a: str, count: str, dtype: DType) -> str:
        if op == "<<" and dtype.is_signed:
            unsigned = uint32 if self.bits(dtype) == 32 else _U64
            return self.reinterpret(f"({self.reinterpret(a, unsigned)} << {count})", dtype)
        return f"({a} {op} {count})"

    def isnan(self, x: str, dtype: DType) -> str:
        return f"isnan({x})"

    def bitcast(self, x: str, src: DType, dst: DType) -> str:
        return self.reinterpret(x, dst)

    def call(self, fn: str, args: list[str], dtype: DType) -> str:
        return f"{fn}({', '.join(args)})"

    def declare(self, name: str, dtype: DType, value: str, mutable: bool = False) -> str:
        const = "" if mutable else "const "
        return f"{const}{self.type(dtype)} {name} = {value};"

    def loop(self, var: str, dtype: DType, start: str, stop: str, step: str) -> str:
        return f"for ({self.type(dtype)} {var} = {start}; {var} < {stop}; {var} += {step}) {{"



# ---- the renderer -------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_]\w*")
_ATOM = re.compile(r"[A-Za-z_]\w*|\(?-?[0-9][\w.+]*\)?")
RESERVED = frozenset({"bool", "int", "long", "uint", "float", "double", "half", "char", "uchar",
                      "short", "void", "const", "if", "else", "for", "while", "do", "return",
                      "var", "let", "fn", "loop", "select", "i32", "u32", "f32", "true",
                      "false", "global", "local", "kernel", "constant", "private"})
"""Words no local name takes (types and keywords of the C dialects and WGSL)."""


class _Renderer:
    """Renders one kernel as its schedule (compiler/schedule/grid.py) says, taking `params`
    in order, `storage` naming the parameter of each buffer that shares another's (in
    place): statements into `lines`, expressions memoised per scope, local arrays in
    `local`; the schedule is written as a comment above the kernel."""

    def __init__(self, kernel: Kernel, dialect: Dialect, params: list[Param],
                 storage: dict[str, str], symbols: dict[str, str] | None = None,
                 boost: bool = False, span: tuple[int, int] | None = None) -> None:
        self.k = kernel
        self.d = dialect
        self.boost = boost
        """Unroll more, for a static kernel whose loops passed the dialect's `loop_limit`
        rendered as usual: loops take up to `MAX_BOOST` copies of their body, a
        contraction's steps through its local tiles are unrolled, and the dialect's
        loop-free helpers are called (`Dialect.flat_calls`)."""
        self.span = span
        """The points (low, high) a serial kernel's part covers, one of the kernels it is
        split into where its loops would pass the `loop_limit` even unrolled more."""
        self.params = {p.name: p for p in params}
        self.storage = storage
        self.dtypes = {b.name: b.dtype for b in kernel.buffers()}
        self.param_list = params
        self.lines: list[str] = []
        self.depth = 1
        self.symbols = symbols or {}
        """Each symbol's scalar argument (a kernel of dynamic sizes; else empty)."""
        self.taken = {p.name for p in params} | {p.ident for p in params} | {kernel.name} \
            | set(self.symbols.values())
        self.prelude: list[str] = []
        self.sizes: dict[tuple, str] = {}
        self.checks: dict[Poly | Groups, tuple[int, str]] = {}
        """Sizes the runtime checks per call: size -> (largest value, what it protects)."""
        self.work, self.outer = _Bound.of(0), _Bound.of(1)
        """Loop iterations per invocation so far (`counted`), and the enclosing loops'."""
        self.idx = int32 if kernel.index_bits == 32 or not dialect.int64 else int64
        self.memo: dict[int, str] = {}
        self.bound: dict[tuple[str, DType], str] = {}
        self.mutable: set[str] = set()
        self.uses: dict[int, int] = {}
        self.vars: dict[int, str] = {}
        self.acc: str | None = None
        self.acc_type: DType | None = None
        self.local: list[tuple[str, DType, int]] = []
        self._rtype: dict[int, DType] = {}
        roots = [x for s in kernel.stores for x in (s.index, s.value)]
        if kernel.reduce_value is not None:
            roots.append(kernel.reduce_value)
        self.pure: set[int] = set()
        for e in postorder(roots):
            if not isinstance(e, (Load, Acc)) and all(id(c) in self.pure for c in children(e)):
                self.pure.add(id(e))

    # ---- statements ---------------------------------------------------------------------

    def fresh(self, base: str, exact: bool = False) -> str:
        """A new local name: `base` itself (`exact`) or `base<n>`, never a buffer's."""
        n = 0
        name = base if exact else f"{base}0"
        while name in self.taken or name in RESERVED:
            n += 1
            name = f"{base}_{n}" if exact else f"{base}{n}"
        self.taken.add(name)
        return name

    def emit(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    @contextmanager
    def block(self, header: str):
        self.emit(header)
        self.depth += 1
        saved = dict(self.memo), dict(self.bound)
        try:
            yield
        finally:
            self.memo, self.bound = saved
            self.depth -= 1
            self.emit("}")

    def bind(self, text: str, dtype: DType, base: str = "v") -> str:
        """`text` as a name or literal (bound to a new name unless it is one)."""
        if _ATOM.fullmatch(text):
            return text
        key = (text, dtype)
        if key in self.bound:
            return self.bound[key]
        name = self.fresh(base)
        self.emit(self.d.declare(name, dtype, text))
        if "[" not in text and not self.mutable.intersection(_WORD.findall(text)):
            self.bound[key] = name  # the same text again reads the same values
        return name

    def var(self, dtype: DType, value: str, base: str) -> str:
        name = self.fresh(base)
        self.mutable.add(name)
        self.emit(self.d.declare(name, dtype, value, mutable=True))
        return name

    def count_uses(self, roots: list[Expr]) -> None:
        """Parent counts of the nodes under `roots` (a node with two is bound once)."""
        self.uses = {}
        stack = list(roots)
        while stack:
            e = stack.pop()
            self.uses[id(e)] = self.uses.get(id(e), 0) + 1
            if self.uses[id(e)] == 1:
                stack.extend(children(e))

    def wide(self, t: DType) -> bool:
        """Whether int64 values of `t` are emulated (`Dialect.int64_op`)."""
        return t == int64 and not self.d.int64

    def index(self, e: Expr) -> str:
        """`e` as a buffer index: emulated int64 values become 32-bit (larger ones address
        nothing)."""
        text = self.value(e)
        return self.d.convert(text, int64, int32) if self.wide(self.rtype(e)) else text

    # ---- types --------------------------------------------------------------------------

    def rtype(self, e: Expr) -> DType:
        """The register dtype of `e`: its dtype, except index arithmetic of a 32-bit kernel
        (int64 values of loop variables and constants), which is int32."""
        hit = self._rtype.get(id(e))
        if hit is None:
            hit = self._rtype[id(e)] = self._type(e)
        return hit

    def _type(self, e: Expr) -> DType:
        if isinstance(e, Var):
            return self.idx
        if isinstance(e, Sym):
            return self.d.size_type
        if isinstance(e, Acc):
            return self.acc_type
        if isinstance(e, (Const, Load, Cast, RandomUniform)):
            return e.dtype
        if isinstance(e, Unary):
            return bool_ if e.op == "not" else self.rtype(e.x)
        if isinstance(e, Binary):
            return bool_ if BINARY_OPS[e.op].predicate else self.optype(e.a, e.b)
        return self.optype(e.a, e.b)

    def optype(self, *operands: Expr) -> DType:
        """The dtype operands are computed in: int32 when every non-constant int64 operand
        is 32-bit index arithmetic."""
        logical = dtype_of(operands[0], self.k.acc_dtype)
        if logical != int64:
            return logical
        kinds = [self.rtype(x) for x in operands if not isinstance(x, Const)]
        return int32 if kinds and all(t == int32 for t in kinds) else int64

    # ---- expressions --------------------------------------------------------------------

    def operand(self, e: Expr, want: DType) -> str:
        """`e` rendered as `want` (constants written in it, index arithmetic widened)."""
        if isinstance(e, Const):
            return self.literal(e.value, want)
        text = self.value(e)
        return text if self.rtype(e) == want else self.d.convert(text, self.rtype(e), want)

    def literal(self, value, dtype: DType) -> str:
        if dtype == bool_:
            return self.d.bool_literal(bool(value))
        if dtype.is_integer:
            return self.d.int_literal(int(value), dtype)
        v = float(value)
        if math.isfinite(v) and (v == 0 or abs(v) >= (1.2e-38 if dtype == float32
                                                        else 2.3e-308)):
            return self.d.float_literal(v, dtype)
        fmt, ifmt = ("<d", "<Q") if dtype == float64 else ("<f", "<I")
        return self.d.float_bits(struct.unpack(ifmt, struct.pack(fmt, v))[0], dtype)

    def value(self, e: Expr) -> str:
        """The text of `e` (in its register type), bound to a name when used again."""
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit
        text = self._render(e)
        if self.uses.get(id(e), 0) > 1 and children(e):
            text = self.bind(text, self.rtype(e), "e")
        self.memo[id(e)] = text
        return text

    def _render(self, e: Expr) -> str:
        if isinstance(e, Var):
            return self.vars[e.axis]
        if isinstance(e, Sym):
            return self.symbol(e.name)
        if isinstance(e, Const):
            return self.literal(e.value, e.dtype)
        if isinstance(e, Acc):
            return self.acc
        if isinstance(e, Load):
            return self._load(e)
        if isinstance(e, Cast):
            return self.cast(self.value(e.x), self.rtype(e.x), e.dtype)
        if isinstance(e, Where):
            t = self.rtype(e)
            return self.d.select(self.value(e.cond), self.operand(e.a, t), self.operand(e.b, t))
        if isinstance(e, Unary):
            return self._unary(e.op, self.value(e.x), self.rtype(e.x), id(e) in self.pure)
        if isinstance(e, Binary):
            return self._binary(e)
        raise GridCodegenError(f"{self.d.name}: {self.k.name}: cannot render {e!r} (random "
                               "numbers are decomposed before code generation)")

    def param(self, buffer: str) -> Param:
        """The parameter holding `buffer`'s storage."""
        return self.params[self.storage.get(buffer, buffer)]

    def read(self, buffer: str, index: str) -> str:
        """Element `index` of `buffer` (reinterpreted where it shares another's storage)."""
        param = self.param(buffer)
        text = self.d.load(param, index)
        dtype = self.dtypes[buffer]
        return text if dtype == param.dtype else self.d.bitcast(text, param.dtype, dtype)

    def _load(self, e: Load) -> str:
        index = self.index(e.index)
        if e.mask is None:
            return self.read(e.buffer, index)
        other = self.literal(e.other, e.dtype)
        size = self.k_size(e.buffer)
        if isinstance(size, int) and size == 0:
            return other
        mask = self.value(e.mask)
        name = self.var(e.dtype, other, "ld")
        with self.block(f"if ({mask}) {{"):
            self.emit(f"{name} = {self.read(e.buffer, index)};")
        return name

    def k_size(self, name: str) -> Size:
        return next(b.size for b in self.k.buffers() if b.name == name)

    # ---- dynamic sizes ------------------------------------------------------------------

    def symbol(self, name: str) -> str:
        """The scalar argument holding symbol `name` (an int64)."""
        if name not in self.symbols:
            raise GridCodegenError(f"{self.d.name}: {self.k.name}: reads the size {name}, "
                                   "which the kernel does not take")
        return self.symbols[name]

    def size(self, size: Size | Groups, t: DType) -> str:
        """A size (an extent, a count) as a `t` value: a literal, or a name computed once from
        the symbols at the kernel's top (`Groups`: the product of its ceiling divisions,
        capped)."""
        if isinstance(size, int):
            return self.literal(size, t)
        key = (size, t)
        if key not in self.sizes:
            st = self.d.size_type
            text = self.size_text(size)
            if t == st and _ATOM.fullmatch(text):
                return text
            if t != st:
                text = self.d.convert(text, st, t)
            name = self.sizes[key] = self.fresh("n")
            self.prelude.append("  " + self.d.declare(name, t, text))
        return self.sizes[key]

    def size_text(self, size: Size | Groups) -> str:
        """Text of a size of the symbols in the dialect's `size_type` (sizes never overflow:
        plain arithmetic; under a `size_limit` the runtime checks every size rendered)."""
        lit = lambda v: self.literal(v, self.d.size_type)  # noqa: E731
        if isinstance(size, int):
            return lit(size)
        self.limit(size)
        if isinstance(size, Groups):
            parts = []
            for part, divisor in size.parts:
                text = self.size_text(part)
                parts.append(text if divisor == 1 else
                             f"(({text} + {lit(divisor - 1)}) / {lit(divisor)})")
            text = parts[0] if len(parts) == 1 else f"({' * '.join(parts)})"
            if size.most:
                text = self.d.select(f"({text} < {lit(size.most)})", text, lit(size.most))
            return text
        terms = []
        for monomial, coefficient in size.terms:
            factors = ([] if coefficient == 1 and monomial else [lit(coefficient)]) + \
                [self.symbol(name) for name in monomial]
            terms.append(factors[0] if len(factors) == 1 else f"({' * '.join(factors)})")
        return terms[0] if len(terms) == 1 else f"({' + '.join(terms)})"

    def upper(self, size: Size | Groups) -> float:
        """The largest value of a size over the symbols' ranges (inf: unbounded; at most the
        dialect's `size_limit`, which the runtime enforces per call)."""
        if isinstance(size, int):
            return size
        if isinstance(size, Groups):
            if size.most:
                return size.most
            self.limit(size)
            top = math.prod(-(-self.upper(p) // d) if self.upper(p) < math.inf else math.inf
                            for p, d in size.parts)
            return min(top, self.d.size_limit) if self.d.size_limit else top
        self.limit(size)
        try:
            top = size_bounds(size)[1]
        except DynamicSizeError:
            top = math.inf
        return min(top, self.d.size_limit) if self.d.size_limit else top

    def limit(self, size: Poly | Groups) -> None:
        """Record a dynamic size the kernel computes with, for the runtime to check against
        the dialect's `size_limit` per call (a `Groups` uncapped)."""
        if self.d.size_limit:
            size = Groups(size.parts) if isinstance(size, Groups) else size
            self.checks.setdefault(size, (self.d.size_limit, "the 32-bit size limit"))

    # ---- the loop limit -----------------------------------------------------------------

    @contextmanager
    def counted(self, trips: Size | Groups | _Bound):
        """Count a loop of at most `trips` iterations (its header runs once more) in the
        kernel's loop iterations per invocation, `self.work`: what a `loop_limit` bounds.
        Helper functions called in its body add their own loops per iteration."""
        trips = trips if isinstance(trips, _Bound) else _Bound.of(trips)
        outer = self.outer
        self.work = self.work + outer * (trips + _Bound.of(1))
        self.outer = outer * trips
        start = len(self.lines)
        try:
            yield
        finally:
            self.outer = outer
            self.work = self.work + outer * trips * _Bound.of(self.helper_cost(start))

    def helper_cost(self, start: int = 0, lines: list[str] | None = None) -> int:
        """Loop iterations of the helper calls in `lines` (the kernel's from `start`)."""
        text = "\n".join((self.lines if lines is None else lines)[start:])
        return sum(n * text.count(f"{name}(") for name, n in self.d.helper_loops.items())

    def grid_trips(self, plan, count: Size | Groups, per_group: int) -> Size | _Bound:
        """Iterations of a grid-stride loop over `count` items, `per_group` per launched
        work-group each: a `Groups` launch is capped only past its cap's items."""
        grid = plan.grid
        if all(isinstance(g, int) for g in grid):
            threads = math.prod(grid) * per_group
            if isinstance(count, int):
                return -(-count // max(threads, 1))
            return _Bound.of(count).scale(Fraction(1, threads)) + _Bound.of(1)
        most = grid[0].most
        if not most:
            return 1
        return _Bound.of(count).scale(Fraction(1, most * per_group)) + _Bound.of(1)

    def largest(self, size: Poly) -> float:
        """An upper bound of `size` over the symbols' ranges, each symbol at most the
        dialect's `size_limit` (which the runtime enforces): inf where unbounded."""
        env = current_env()
        if env is None:
            return math.inf
        top = 0
        for monomial, coefficient in size.terms:
            value = coefficient
            for name in monomial:
                s = env.symbols.get(name)
                if s is None:
                    return math.inf
                high = min(math.inf if s.hi is None else s.hi,
                           self.d.size_limit or math.inf)
                value *= high if coefficient > 0 else s.lo
            top += value
        return top

    def loop_work(self) -> _Bound:
        """The loop iterations (headers run) per invocation the kernel may take at most:
        its loops' and the helper functions' it calls outside them."""
        return self.work + _Bound.of(self.helper_cost(lines=self.prelude + self.lines))

    def static_work(self) -> int:
        """`loop_work` of a kernel of static sizes: a number."""
        size, scale = self.loop_work().at_most(1)
        assert isinstance(size, int), size
        return -(-size // scale)

    def check_loops(self) -> None:
        """Under a `loop_limit`, a kernel of dynamic sizes keeps its loop iterations per
        invocation to half the limit: a guard on the sizes (a call past it compiles another
        program) and a check the runtime makes per call; `DynamicSizeError` where the traced
        sizes already pass it."""
        limit = self.d.loop_limit // 2
        size, most = self.loop_work().at_most(limit)
        if isinstance(size, int):
            fits = size <= most
        else:
            fits = self.largest(size) <= most
            if not fits:  # a guard on the sizes, and the runtime's check per call
                self.checks[size] = (most, f"{self.d.name}'s loop limit ("
                                           f"{self.d.loop_limit} iterations per invocation)")
                fits = size <= most
        if not fits:
            raise DynamicSizeError(f"{self.d.name}: {self.k.name}: at these sizes its loops "
                                   f"run past {limit} iterations per invocation (the "
                                   f"driver's loop limit): static sizes")

    def flat_type(self, top: float) -> DType:
        """The index dtype for values up to `top`: the kernel's, else int64 (dynamic)."""
        if top < 2 ** 31:
            return self.idx
        if not self.d.int64:
            raise DynamicSizeError(f"{self.d.name}: {self.k.name}: dynamic sizes may exceed "
                                   "32-bit indices")
        return int64

    def launched(self, plan, t: DType) -> str:
        """Work-groups of `plan`'s launch as a `t` value: a literal, or the dialect's count
        of launched work-groups where the runtime computes them per call."""
        if all(isinstance(g, int) for g in plan.grid):
            return self.literal(math.prod(plan.grid), t)
        return self.bind(self.d.groups(0, t), t, "groups")

    def cast(self, x: str, src: DType, dst: DType) -> str:
        """`Cast` semantics (compiler/ops/elementwise.py `convert`)."""
        d = self.d
        if src == dst:
            return x
        if dst == bool_:
            return self.binary("ne", x, self.literal(0, src), src)
        if not (src.is_floating and dst.is_integer):
            return d.convert(x, src, dst)
        x = self.bind(x, src)
        if not dst.is_signed:
            if d.int64:
                return d.convert(self.cast(x, src, int64), int64, dst)
            return self._float_to_u32(x, src)
        bits = d.bits(dst)
        fits = f"({d.call('fabs', [x], src)} < {self.literal(2.0 ** (bits - 1), src)})"
        return d.select(fits, d.truncate(x, src, dst), self.literal(-(1 << (bits - 1)), dst))

    def _float_to_u32(self, x: str, src: DType) -> str:
        """float -> int64 -> low 32 bits, without 64-bit integers."""
        d = self.d
        t = self.bind(d.call("trunc", [x], src), src)
        small = self.cast(t, src, int32)
        k = d.call("floor", [f"({t} * {self.literal(2.0 ** -32, src)})"], src)
        m = f"({t} - {k} * {self.literal(2.0 ** 32, src)})"
        big = d.select(f"({d.call('fabs', [t], src)} < {self.literal(2.0 ** 63, src)})",
                       d.convert(m, src, uint32), self.literal(0, uint32))
        fits = f"({d.call('fabs', [t], src)} < {self.literal(2.0 ** 31, src)})"
        return d.select(fits, d.convert(small, int32, uint32), big)

    def _unary(self, op: str, x: str, t: DType, pure: bool) -> str:
        d = self.d
        if self.wide(t) and op in ("neg", "abs", "sign", "floor"):
            return d.int64_op(op, [x])
        if op == "neg":
            if t.is_floating or pure:
                return f"(-{x})"
            return d.wrap("-", self.literal(0, t), x, t)
        if op in ("exp", "log", "sqrt", "tanh", "erf", "sin", "cos"):
            return d.call(op + "_flat" if self.boost and op in d.flat_calls else op, [x], t)
        if op == "abs":
            return d.call("fabs", [x], t) if t.is_floating else d.int_abs(x, t)
        if op == "sign":
            native = d.sign(x, t) if t.is_floating else None
            if native is not None:
                return native
            x = self.bind(x, t)
            one, zero = self.literal(1, t), self.literal(0, t)
            return d.select(f"({x} > {zero})", one,
                            d.select(f"({x} < {zero})", self.literal(-1, t), zero))
        if op == "floor":
            return d.call("floor", [x], t) if t.is_floating else x
        if op == "reciprocal":
            return f"({self.literal(1.0, t)} / {x})"
        if op == "not":
            return f"(!{x})"
        raise GridCodegenError(f"{d.name}: {self.k.name}: unary {op!r} is decomposed before "
                               "code generation")

    def _binary(self, e: Binary) -> str:
        t = self.optype(e.a, e.b)
        op = e.op
        a, b = self.operand(e.a, t), self.operand(e.b, t)
        return self.binary(op, a, b, t, pure=id(e) in self.pure, divisor=e.b)

    def binary(self, op: str, a: str, b: str, t: DType, pure: bool = False,
               divisor: Expr | None = None) -> str:
        """`a op b` on operands of register dtype `t`."""
        d = self.d
        if self.wide(t) and op not in ("and", "or"):
            flat = self.boost and f"int64_{op}" in d.flat_calls
            return d.int64_op(op + "_flat" if flat else op, [a, b])
        infix = {"add": "+", "sub": "-", "mul": "*"}
        if op in infix:
            if t.is_floating or (pure and t.is_signed):
                return f"({a} {infix[op]} {b})"
            if t == bool_:
                return f"({a} {'&&' if op == 'mul' else '||'} {b})"
            return d.wrap(infix[op], a, b, t)
        if op == "div":
            return f"({a} / {b})"
        cmp = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
        if op in cmp:
            if t == bool_ and op not in ("eq", "ne"):
                return {"lt": f"((!{a}) && {b})", "le": f"((!{a}) || {b})",
                        "gt": f"({a} && (!{b}))", "ge": f"({a} || (!{b}))"}[op]
            return d.compare(cmp[op], a, b, t)
        if op in ("and", "or"):
            return f"({a} {'&&' if op == 'and' else '||'} {b})"
        if op in ("bitand", "bitor", "xor"):
            return f"({a} {dict(bitand='&', bitor='|', xor='^')[op]} {b})"
        if op in ("shl", "shr"):
            mask = d.bits(t) - 1
            count = (self.literal(int(divisor.value) & mask, t)
                     if isinstance(divisor, Const) else f"({b} & {self.literal(mask, t)})")
            return d.shift("<<" if op == "shl" else ">>", a, count, t)
        if op in ("max", "min"):
            return self.extreme(op, a, b, t)
        if op == "pow":
            return self._pow_f(a, b, t) if t.is_floating else self._pow_i(a, b, t)
        if op in ("idiv", "mod"):
            if t.is_floating:
                return self._divmod_f(op, a, b, t)
            return self._divmod_i(op, a, b, t, divisor)
        raise GridCodegenError(f"{d.name}: {self.k.name}: no rendering of {op!r}")

    def extreme(self, op: str, a: str, b: str, t: DType) -> str:
        """NumPy's maximum/minimum: NaN in either operand gives NaN; a tie gives `b`."""
        d = self.d
        if t == bool_:
            return f"({a} {'||' if op == 'max' else '&&'} {b})"
        if self.wide(t):
            return d.int64_op(op, [a, b])
        if not t.is_floating:
            return d.call(op, [a, b], t)
        a, b = self.bind(a, t), self.bind(b, t)
        pick = d.select(f"({a} {'>' if op == 'max' else '<'} {b})", a, b)
        return d.select(d.isnan(a, t), a, pick)

    def _pow_f(self, a: str, b: str, t: DType) -> str:
        if b == self.literal(2.0, t):
            a = self.bind(a, t)
            return f"({a} * {a})"
        return self.d.call("pow", [a, b], t)

    def _pow_i(self, a: str, b: str, t: DType) -> str:
        """Square-and-multiply over the exponent's bits (wrapping), as `int_pow`."""
        d = self.d
        a, b = self.bind(a, t), self.bind(b, t)
        one, zero = self.literal(1, t), self.literal(0, t)
        result = self.var(t, one, "pw")
        base = self.var(t, a, "pb")
        exp = self.var(t, d.select(f"({b} < {zero})", zero, b), "pe")

        def square_and_multiply() -> None:
            odd = f"(({exp} & {one}) == {one})"
            self.emit(f"{result} = {d.select(odd, d.wrap('*', result, base, t), result)};")
            self.emit(f"{base} = {d.wrap('*', base, base, t)};")
            self.emit(f"{exp} = {d.shift('>>', exp, one, t)};")
        if self.boost:  # no loop (`boost`)
            for _ in range(d.bits(t)):
                square_and_multiply()
        else:
            step = self.fresh("pk")
            with self.counted(d.bits(t)), \
                    self.block(d.loop(step, int32, self.literal(0, int32),
                                      self.literal(d.bits(t), int32), self.literal(1, int32))):
                square_and_multiply()
        minus = d.select(f"(({b} & {one}) == {one})", self.literal(-1, t), one)
        negative = d.select(f"({a} == {one})", one,
                            d.select(f"({a} == {self.literal(-1, t)})", minus, zero))
        return d.select(f"({b} < {zero})", negative, result)

    def _divmod_i(self, op: str, a: str, b: str, t: DType, divisor: Expr | None) -> str:
        """Floor division / modulo: 0 for a zero divisor, MIN // -1 == MIN (no traps)."""
        d = self.d
        c = int(divisor.value) if isinstance(divisor, Const) else None
        if c is not None and c > 0 and t.is_signed:
            if c & (c - 1) == 0:
                k = c.bit_length() - 1
                if op == "idiv":
                    return d.shift(">>", a, self.literal(k, t), t)
                return f"({a} & {self.literal(c - 1, t)})"
            a = self.bind(a, t)
            r = self.bind(f"({a} % {b})", t)
            if op == "mod":
                return d.select(f"({r} < {self.literal(0, t)})", f"({r} + {b})", r)
            return f"(({a} / {b}) - {d.convert(f'({r} < {self.literal(0, t)})', bool_, t)})"
        a, b = self.bind(a, t), self.bind(b, t)
        zero, one = self.literal(0, t), self.literal(1, t)
        if not t.is_signed:
            safe = self.bind(d.select(f"({b} == {zero})", one, b), t)
            out = f"({a} / {safe})" if op == "idiv" else f"({a} % {safe})"
            return d.select(f"({b} == {zero})", zero, out)
        minus = self.literal(-1, t)
        bad = self.bind(f"(({b} == {zero}) || ({b} == {minus}))", bool_)
        safe = self.bind(d.select(bad, one, b), t)
        q = self.bind(f"({a} / {safe})", t)
        r = self.bind(f"({a} % {safe})", t)
        fix = self.bind(f"(({r} != {zero}) && (({r} ^ {safe}) < {zero}))", bool_)
        if op == "mod":
            return d.select(bad, zero, d.select(fix, f"({r} + {safe})", r))
        q = d.select(fix, f"({q} - {one})", q)
        return d.select(f"({b} == {minus})", d.wrap("-", zero, a, t),
                        d.select(bad, zero, q))

    def _divmod_f(self, op: str, a: str, b: str, t: DType) -> str:
        """NumPy's float floor_divide and PyTorch's remainder (module docstring)."""
        d = self.d
        a, b = self.bind(a, t), self.bind(b, t)
        zero, one = self.literal(0.0, t), self.literal(1.0, t)
        flat = self.boost and "fmod" in d.flat_calls
        r = self.bind(d.call("fmod_flat" if flat else "fmod", [a, b], t), t)
        differ = f"(({r} < {zero}) != ({b} < {zero}))"
        fix = f"(({r} != {zero}) && {differ})"
        if op == "mod":
            return d.select(fix, f"({r} + {b})", r)
        div = self.bind(f"(({a} - {r}) / {b})", t)
        div = self.bind(d.select(fix, f"({div} - {one})", div), t)
        fl = self.bind(d.call("floor", [div], t), t)
        fl = self.bind(d.select(f"(({div} - {fl}) > {self.literal(0.5, t)})",
                                f"({fl} + {one})", fl), t)
        quotient = self.bind(f"({a} / {b})", t)
        fl = d.select(f"({div} == {zero})", d.call("copysign", [zero, quotient], t), fl)
        return d.select(f"({b} == {zero})", quotient, fl)

    # ---- reductions ---------------------------------------------------------------------

    def identity(self, op: str, t: DType) -> str:
        if op in ("sum", "prod"):
            return self.literal(int(op == "prod"), t)
        low = op in ("max", "argmax")
        if t == bool_:
            return self.literal(not low, t)
        if t.is_floating:
            return self.literal(-math.inf if low else math.inf, t)
        if not t.is_signed:
            return self.literal(0 if low else (1 << self.d.bits(t)) - 1, t)
        bits = self.d.bits(t)
        return self.literal(-(1 << (bits - 1)) if low else (1 << (bits - 1)) - 1, t)

    def combine(self, op: str, acc: str, v: str, t: DType) -> str:
        if op == "sum":
            return self.binary("add", acc, v, t)
        if op == "prod":
            return self.binary("mul", acc, v, t)
        return self.extreme(op, acc, v, t)

    def better(self, op: str, v: str, best: str, t: DType) -> str:
        """Whether `v` replaces `best` in an argmax/argmin scan (the first extreme and the
        first NaN win)."""
        d = self.d
        if t == bool_:
            return f"({v} && (!{best}))" if op == "argmax" else f"((!{v}) && {best})"
        strict = self.binary("gt" if op == "argmax" else "lt", v, best, t)
        if not t.is_floating:
            return strict
        return f"({strict} || ({d.isnan(v, t)} && !{d.isnan(best, t)}))"

    def better_part(self, op: str, v: str, iv: str, best: str, ib: str, t: DType) -> str:
        """Whether partial (v, iv) replaces (best, ib) when partials of one argmax/argmin
        combine: the better value, or the same at a smaller index (NaN first)."""
        d = self.d
        first = f"({iv} < {ib})"
        tie = f"({self.binary('eq', v, best, t)} && {first})"
        if not t.is_floating:
            return f"({self.better(op, v, best, t)} || {tie})"
        strict = f"({v} {'>' if op == 'argmax' else '<'} {best})"
        nan_v, nan_b = d.isnan(v, t), d.isnan(best, t)
        return d.select(nan_b, f"({nan_v} && {first})", f"({nan_v} || {strict} || {tie})")

    # ---- kernel structure ---------------------------------------------------------------

    def point_vars(self, flat: str, flat_type: DType, sizes: tuple[int, ...],
                   first: int) -> None:
        """Loop variables first..first+len(sizes) of the row-major point `flat`."""
        rest = flat if flat_type == self.idx else self.d.convert(flat, flat_type, self.idx)
        rest = self.bind(rest, self.idx, "p")
        for axis in reversed(range(len(sizes))):
            name = self.fresh(f"i{first + axis}", exact=True)
            if axis == 0:
                value = rest
            else:
                value = f"({rest} % {self.size(sizes[axis], self.idx)})"
            self.emit(self.d.declare(name, self.idx, value))
            self.vars[first + axis] = name
            if axis:
                rest = self.bind(f"({rest} / {self.size(sizes[axis], self.idx)})",
                                 self.idx, "p")

    def copies(self, steps: int) -> int:
        """Copies of a loop body per iteration for `steps` steps per work-item: under a
        `loop_limit`, a loop of `LONG` steps or more keeps to a quarter of the limit (at least
        `UNROLL`, at most `MAX_UNROLL` copies); rendered again (`boost`), any loop takes as
        many more as keep it to 7/8 of the limit, at most `MAX_BOOST` (lavapipe compiles
        each copy: some 20 ms for a scatter-add's)."""
        limit = self.d.loop_limit
        if not limit or not isinstance(steps, int):
            return 1
        copies = 1 if steps < LONG else min(MAX_UNROLL, max(UNROLL, -(-4 * steps // limit)))
        if self.boost:  # as few more as keep to 7/8 of the limit: each costs compile time
            return max(copies, min(MAX_BOOST, -(-8 * steps // (7 * limit))))
        return copies

    def strided(self, base: str, t: DType, start: str, stop: int, step: int, body,
                trips: Size | _Bound | None = None, low: int = 0) -> None:
        """`body(var)` for var = start, start + step, ... below `stop`, its body copied per
        iteration as `copies` says (each copy guarded); `start` is below `low + step`.  The
        loop variable is 64-bit when stepping past `stop` could pass INT_MAX (the body still
        sees a `t` value: every value it sees is below `stop`)."""
        d = self.d
        if not (isinstance(stop, int) and isinstance(step, int)):
            return self.strided_dynamic(base, t, start, stop, step, body, trips)
        copies = self.copies(-(-(stop - low) // step))
        w = t
        if t != int64 and stop + step * copies >= 2 ** 31:
            if not d.int64:
                raise GridCodegenError(f"{d.name}: {self.k.name}: a loop to {stop} in steps "
                                       f"of {step * copies} exceeds 32-bit indices")
            w = int64
        var = self.fresh(base)
        with self.counted(-(-(stop - low) // (step * copies))), \
                self.block(d.loop(var, w, d.convert(start, t, w) if w != t else start,
                                  self.literal(stop, w), self.literal(step * copies, w))):
            for j in range(copies):
                if j == 0:
                    saved = dict(self.memo), dict(self.bound)
                    body(self.narrowed(var, w, t, base))
                    self.memo, self.bound = saved
                    continue
                at = self.bind(f"({var} + {self.literal(step * j, w)})", w, base)
                with self.block(f"if ({at} < {self.literal(stop, w)}) {{"):
                    body(self.narrowed(at, w, t, base))

    def strided_dynamic(self, base: str, t: DType, start: str, stop: Size, step: int | str,
                        body, trips: Size | _Bound | None = None) -> None:
        """`strided` where `stop` is a dynamic size or `step` the launched work-items (text
        of the dialect's `size_type`, at most `MAX_GROUPS` work-groups of the kernel's block):
        one copy per iteration, 64-bit where the sizes' ranges may pass INT_MAX.  `trips`:
        the iterations at most (else stop / step + 1, `step` an int)."""
        d, st = self.d, self.d.size_type
        most = step if isinstance(step, int) else MAX_GROUPS * math.prod(self.k.schedule.block)
        w = t if t == int64 else self.flat_type(self.upper(stop) + most)
        stride = self.literal(step, w) if isinstance(step, int) else \
            step if w == st else self.bind(d.convert(step, st, w), w, "st")
        if trips is None:
            trips = _Bound.of(stop).scale(Fraction(1, step)) + _Bound.of(1)
        var = self.fresh(base)
        with self.counted(trips), \
                self.block(d.loop(var, w, d.convert(start, t, w) if w != t else start,
                                  self.size(stop, w), stride)):
            body(self.narrowed(var, w, t, base))

    def narrowed(self, var: str, w: DType, t: DType, base: str) -> str:
        """`var` (of dtype `w`) as a `t` value."""
        return var if w == t else self.bind(self.d.convert(var, w, t), t, base)

    def reduce_loops(self, start: str, step: int) -> _Acc:
        """The reduction at the current point, run sequentially over its flat steps
        start, start + step, ... (`start` "0" and `step` 1: every step, as nested loops,
        or one flat loop where long loops are unrolled)."""
        k = self.k
        t = dtype_of(k.reduce_value)
        op = k.reduce_op
        best = self.var(t, self.identity(op, t), "acc")
        index = self.var(self.idx, self.literal(0, self.idx), "arg") if op in (
            "argmax", "argmin") else None
        nd = len(k.domain)
        total = math.prod(k.reduce)

        def step_body() -> None:
            self.count_uses([k.reduce_value])
            v = self.bind(self.value(k.reduce_value), t, "x")
            if index is None:
                self.emit(f"{best} = {self.combine(op, best, v, t)};")
            else:
                take = self.bind(self.better(op, v, best, t), bool_, "take")
                self.emit(f"{best} = {self.d.select(take, v, best)};")
                self.emit(f"{index} = {self.d.select(take, self.vars[nd], index)};")

        def flat(r: str) -> None:
            self.point_vars(r, self.idx, tuple(k.reduce), nd)
            step_body()

        if start != "0" or step != 1 or self.copies(total) > 1:
            self.strided("r", self.idx, start, total, step, flat)
            return _Acc(best, index, t)
        saved = dict(self.memo), dict(self.bound)
        with ExitStack() as loops:
            for j, n in enumerate(k.reduce):
                name = self.fresh(f"i{nd + j}", exact=True)
                self.vars[nd + j] = name
                loops.enter_context(self.counted(n))
                self.emit(self.d.loop(name, self.idx, self.literal(0, self.idx),
                                      self.size(n, self.idx), self.literal(1, self.idx)))
                self.depth += 1
            step_body()
            self.memo, self.bound = saved
            for _ in k.reduce:
                self.depth -= 1
                self.emit("}")
        return _Acc(best, index, t)

    def stores(self, acc: _Acc | None) -> None:
        k = self.k
        if acc is not None:
            self.acc = acc.index if acc.index is not None else acc.value
            self.acc_type = self.idx if acc.index is not None else acc.dtype
        self.count_uses([x for s in k.stores for x in (s.index, s.value)])
        for s in k.stores:
            param, dtype = self.param(s.buffer), self.dtypes[s.buffer]
            index = self.bind(self.index(s.index), self.idx if self.wide(
                self.rtype(s.index)) else self.rtype(s.index), "at")
            value = self.cast(self.value(s.value), self.rtype(s.value), dtype)
            if s.accumulate:
                value = self.binary("add", self.read(s.buffer, index), value, dtype)
            if dtype != param.dtype:
                value = self.d.bitcast(value, dtype, param.dtype)
            for line in self.d.store(param, index, self.bind(value, param.dtype, "y")):
                self.emit(line)

    def grid_loop(self, plan: GridLoop) -> None:
        """The basic mapping: a work-item per point, grid-stride (module docstring)."""
        d = self.d
        count = plan.count
        if not (isinstance(count, int) and all(isinstance(g, int) for g in plan.grid)):
            return self.grid_loop_dynamic(plan)
        threads = math.prod(plan.grid) * plan.block[0]
        reach = threads * self.copies(-(-count // threads))  # past the end, at most
        flat = self.idx if count + reach < 2 ** 31 else int64
        if flat == int64 and not d.int64:
            raise GridCodegenError(f"{d.name}: {self.k.name}: {count} points exceed 32-bit "
                                   "indices")
        gid = self.linear_group(plan, flat)
        gid = f"(({gid}) * {self.literal(plan.block[0], flat)} + {d.thread('local', 0, flat)})"

        def point(p: str) -> None:
            self.point_vars(p, flat, tuple(self.k.domain), 0)
            acc = self.reduce_loops("0", 1) if self.k.reduce_value is not None else None
            self.stores(acc)
        if self.span:  # one work-item's points low..high, in order (`_render_static`)
            low, high = self.span
            self.strided("p", flat, self.bind(f"({gid} + {self.literal(low, flat)})", flat, "g"),
                         high, threads, point, low=low)
            return
        gid = self.bind(gid, flat, "g")
        self.strided("p", flat, gid, count, threads, point)

    def grid_loop_dynamic(self, plan: GridLoop) -> None:
        """`grid_loop` for a dynamic count: work-items step by those launched."""
        d, block = self.d, plan.block[0]
        static = all(isinstance(g, int) for g in plan.grid)
        most = (math.prod(plan.grid) if static else MAX_GROUPS) * block
        flat = self.flat_type(self.upper(plan.count) + most)
        gid = f"(({self.linear_group(plan, flat)}) * {self.literal(block, flat)} + " \
              f"{d.thread('local', 0, flat)})"
        st = d.size_type
        step: int | str = most if static else \
            f"({self.launched(plan, st)} * {self.literal(block, st)})"

        def point(p: str) -> None:
            self.point_vars(p, flat, tuple(self.k.domain), 0)
            acc = self.reduce_loops("0", 1) if self.k.reduce_value is not None else None
            self.stores(acc)
        self.strided("p", flat, self.bind(gid, flat, "g"), plan.count, step, point,
                     self.grid_trips(plan, plan.count, block))

    def linear_group(self, plan, t: DType) -> str:
        d = self.d
        if len(plan.grid) == 1:
            return d.thread("group", 0, t)
        return (f"{d.thread('group', 1, t)} * {self.literal(plan.grid[0], t)} + "
                f"{d.thread('group', 0, t)}")

    def group_reduction(self, plan: GroupReduction) -> None:
        """A work-group per point: strided partials, then a tree in local memory."""
        d, k = self.d, self.k
        block = plan.block[0]
        t = dtype_of(k.reduce_value)
        op = k.reduce_op
        arg = op in ("argmax", "argmin")
        vals = self.fresh("part")
        self.local.append((vals, t, block))
        idxs = None
        if arg:
            idxs = self.fresh("part_index")
            self.local.append((idxs, self.idx, block))
        lid = self.bind(d.thread("local", 0, self.idx), self.idx, "lid")
        if not isinstance(plan.count, int) and self.upper(plan.count) + MAX_GROUPS >= 2 ** 31 \
                and self.idx != int64:
            raise DynamicSizeError(f"{d.name}: {k.name}: dynamic sizes may exceed 32-bit "
                                   "indices")
        p = self.fresh("p")
        with self.counted(self.grid_trips(plan, plan.count, 1)), \
                self.block(d.loop(p, self.idx, self.linear_group(plan, self.idx),
                                  self.size(plan.count, self.idx),
                                  self.launched(plan, self.idx))):
            self.point_vars(p, self.idx, tuple(k.domain), 0)
            acc = self.reduce_loops(lid, block)
            self.emit(f"{d.local_access(vals, lid)} = {acc.value};")
            if arg:
                self.emit(f"{d.local_access(idxs, lid)} = {acc.index};")
            self.emit(d.barrier())
            lanes = d.warp if d.warp and block >= d.warp and t in _SHUFFLED else 1
            level = self.fresh("s")
            levels = block.bit_length() - lanes.bit_length()
            with self.counted(levels), \
                    self.block(d.loop(level, self.idx, self.literal(0, self.idx),
                                      self.literal(levels, self.idx),
                                      self.literal(1, self.idx))):
                width = self.bind(d.shift(">>", self.literal(block // 2, self.idx), level,
                                          self.idx), self.idx, "w")
                with self.block(f"if ({lid} < {width}) {{"):
                    other = self.bind(f"({lid} + {width})", self.idx, "o")
                    mine = self.bind(d.local_access(vals, lid), t, "a")
                    theirs = self.bind(d.local_access(vals, other), t, "b")
                    if arg:
                        im = self.bind(d.local_access(idxs, lid), self.idx, "ia")
                        it = self.bind(d.local_access(idxs, other), self.idx, "ib")
                        take = self.bind(self.better_part(op, theirs, it, mine, im, t),
                                         bool_, "take")
                        self.emit(f"{d.local_access(vals, lid)} = "
                                  f"{d.select(take, theirs, mine)};")
                        self.emit(f"{d.local_access(idxs, lid)} = {d.select(take, it, im)};")
                    else:
                        self.emit(f"{d.local_access(vals, lid)} = "
                                  f"{self.combine(op, mine, theirs, t)};")
                self.emit(d.barrier())
            if lanes > 1:
                self.warp_reduction(op, lanes, lid, vals, idxs, t)
            else:
                with self.block(f"if ({lid} == {self.literal(0, self.idx)}) {{"):
                    value = self.bind(d.local_access(vals, self.literal(0, self.idx)), t,
                                      "total")
                    index = None
                    if arg:
                        index = self.bind(d.local_access(idxs, self.literal(0, self.idx)),
                                          self.idx, "at")
                    self.stores(_Acc(value, index, t))
            self.emit(d.barrier())

    def warp_reduction(self, op: str, lanes: int, lid: str, vals: str, idxs: str | None,
                       t: DType) -> None:
        """The last levels of a work-group tree in registers: the first `lanes` work-items
        combine their partials with the lane `lanes / 2`, ..., 1 above (the tree's pairs, in
        its order), and lane 0 stores the result."""
        d = self.d
        with self.block(f"if ({lid} < {self.literal(lanes, self.idx)}) {{"):
            value = self.var(t, d.local_access(vals, lid), "wv")
            index = self.var(self.idx, d.local_access(idxs, lid), "wi") if idxs else None
            offset = lanes // 2
            while offset:
                theirs = self.bind(d.shuffle_down(value, offset, t), t, "b")
                if index is None:
                    self.emit(f"{value} = {self.combine(op, value, theirs, t)};")
                else:
                    it = self.bind(d.shuffle_down(index, offset, self.idx), self.idx, "ib")
                    take = self.bind(self.better_part(op, theirs, it, value, index, t), bool_,
                                     "take")
                    self.emit(f"{index} = {d.select(take, it, index)};")
                    self.emit(f"{value} = {d.select(take, theirs, value)};")
                offset //= 2
            with self.block(f"if ({lid} == {self.literal(0, self.idx)}) {{"):
                self.stores(_Acc(value, index, t))

    def tiled_contraction(self, plan: TiledContraction) -> None:
        """Output tiles of `plan.micro` outputs per work-item held in registers (one
        variable each, no register arrays), k staged through local-memory tiles of `a` and
        `b`; every output's sum runs over k in order, as the basic mapping's."""
        d, k = self.d, self.k
        side, t, idx = plan.tile, dtype_of(k.reduce_value), self.idx
        (rm, cm), rows, cols, block = plan.micro, plan.rows, plan.cols, plan.tile * plan.tile
        value = k.reduce_value
        a, b = (value.a, value.b) if plan.a_operand == 0 else (value.b, value.a)
        kax = len(k.domain)
        m_size, n_size, k_size = k.domain[plan.row], k.domain[plan.col], k.reduce[0]
        tiles_a, tiles_b = self.fresh("tile_a"), self.fresh("tile_b")
        self.local += [(tiles_a, t, rows * side), (tiles_b, t, side * cols)]
        lit = lambda v: self.literal(v, idx)  # noqa: E731
        plus = lambda x, v: x if v == 0 else f"({x} + {lit(v)})"  # noqa: E731
        lid = self.bind(d.thread("local", 0, idx), idx, "lid")
        tx = self.bind(f"({lid} % {lit(side)})", idx, "tx")
        ty = self.bind(f"({lid} / {lit(side)})", idx, "ty")
        bx = self.bind(f"({lid} % {lit(cols)})", idx, "bx") if cm > 1 else tx
        by = self.bind(f"({lid} / {lit(cols)})", idx, "by") if cm > 1 else ty
        if isinstance(plan.count, int):
            row_tiles, col_tiles = lit(-(-m_size // rows)), lit(-(-n_size // cols))
        else:
            if idx != int64 and self.upper(plan.count) + MAX_GROUPS >= 2 ** 31:
                raise DynamicSizeError(f"{d.name}: {k.name}: dynamic sizes may exceed 32-bit "
                                       "indices")
            row_tiles, col_tiles = (
                lit(-(-size // side)) if isinstance(size, int) else
                self.size(Groups(((size, side),)), idx)
                for size, side in ((m_size, rows), (n_size, cols)))
        p = self.fresh("p")
        with self.counted(self.grid_trips(plan, plan.count, 1)), \
                self.block(d.loop(p, idx, self.linear_group(plan, idx),
                                  self.size(plan.count, idx), self.launched(plan, idx))):
            tn = self.bind(f"({p} % {col_tiles})", idx, "tn")
            rest = self.bind(f"({p} / {col_tiles})", idx, "p")
            tm = self.bind(f"({rest} % {row_tiles})", idx, "tm")
            if plan.batch:
                self.point_vars(f"({rest} / {row_tiles})", idx,
                                tuple(k.domain[:plan.row]), 0)
            m0 = self.bind(f"({tm} * {lit(rows)} + {ty})", idx, "m")
            n0 = self.bind(f"({tn} * {lit(cols)} + {tx})", idx, "n")
            ms = [m0] + [self.bind(plus(m0, side * i), idx, "m") for i in range(1, rm)]
            ns = [n0] + [self.bind(plus(n0, side * j), idx, "n") for j in range(1, cm)]
            nb = self.bind(f"({tn} * {lit(cols)} + {bx})", idx, "nb") if cm > 1 else n0
            accs = [[self.var(t, self.literal(0, t), "acc") for _ in range(cm)]
                    for _ in range(rm)]

            def k_loop(compute) -> None:
                k0 = self.fresh("k")
                trips = -(-k_size // side) if isinstance(k_size, int) else \
                    _Bound.of(k_size).scale(Fraction(1, side)) + _Bound.of(1)
                with self.counted(trips), \
                        self.block(d.loop(k0, idx, lit(0), self.size(k_size, idx), lit(side))):
                    for j in range(rm):  # element lid + block * j: row ty + side * j, k tx
                        self.stage(a, tiles_a, plus(lid, block * j), ms[j], plan.row, m_size,
                                   f"({k0} + {tx})", kax)
                    for j in range(cm):  # element lid + block * j: k by + block / cols * j
                        self.stage(b, tiles_b, plus(lid, block * j), nb, plan.col, n_size,
                                   plus(f"({k0} + {by})", block // cols * j), kax)
                    self.emit(d.barrier())
                    compute()
                    self.emit(d.barrier())

            def fma() -> None:
                if self.boost:  # every step unrolled, each in a scope of its own
                    for j in range(side):
                        with self.block("{"):
                            fma_step(lit(j))
                    return
                step = self.fresh("j")
                with self.counted(side), self.block(d.loop(step, idx, lit(0), lit(side), lit(1))):
                    fma_step(step)

            def fma_step(step: str) -> None:
                xs = [self.bind(d.local_access(tiles_a, f"({plus(ty, side * i)} * "
                                               f"{lit(side)} + {step})"), t, "x")
                      for i in range(rm)]
                ys = [self.bind(d.local_access(tiles_b, f"({step} * {lit(cols)} + "
                                               f"{plus(tx, side * j)})"), t, "y")
                      for j in range(cm)]
                for i in range(rm):
                    for j in range(cm):
                        self.emit(f"{accs[i][j]} = ({accs[i][j]} + {xs[i]} * {ys[j]});")

            if not self.uses_tf32(plan, t):
                k_loop(fma)
                outs = ms, ns
            else:
                outs = ([self.fresh("om") for _ in ms], [self.fresh("on") for _ in ns])
                self.emit(f"#if {d.tf32_guard}")
                memo, bound = dict(self.memo), dict(self.bound)
                fragments = self.mma_fragments(plan, lid, tm, tn, outs)
                k_loop(lambda: self.mma_stage(plan, tiles_a, tiles_b, accs, fragments))
                self.memo, self.bound = dict(memo), dict(bound)  # names of one branch only
                self.emit("#else")
                for names, values in zip(outs, (ms, ns)):
                    for name, value in zip(names, values):
                        self.emit(d.declare(name, idx, value))
                k_loop(fma)
                self.memo, self.bound = memo, bound
                self.emit("#endif")
            for i in range(rm):
                for j in range(cm):
                    with self.block(f"if (({outs[0][i]} < {self.size(m_size, idx)}) && "
                                    f"({outs[1][j]} < {self.size(n_size, idx)})) {{"):
                        self.vars[plan.row], self.vars[plan.col] = outs[0][i], outs[1][j]
                        self.stores(_Acc(accs[i][j], None, t))

    def uses_tf32(self, plan: TiledContraction, t: DType) -> bool:
        """Whether a float32 contraction runs on TF32 tensor cores: the dialect allows it and
        each warp's outputs are whole 16 x 8 tiles, (rows/2 x cols/2) of them per warp."""
        rm, cm = plan.micro
        return bool(self.d.tf32_guard) and t == float32 and rm % 2 == 0 and cm % 2 == 0 \
            and plan.tile % 8 == 0

    def mma_fragments(self, plan: TiledContraction, lid: str, tm: str, tn: str,
                      outs: tuple[list[str], list[str]]) -> tuple[str, str, str, str]:
        """The TF32 warp layout: warp w takes (micro / 2) 16 x 8 tiles at warp row
        w / (side / 4), column w % (side / 4); lane l holds rows l/4 and l/4 + 8 and columns
        2 (l % 4) and 2 (l % 4) + 1 of each.  Declares the output positions `outs`; returns
        the warp's first row and column in the block tile and the lane's l / 4 and l % 4."""
        d, idx = self.d, self.idx
        lit = lambda v: self.literal(v, idx)  # noqa: E731
        (rm, cm), side = plan.micro, plan.tile
        per_row = side // 4
        warp = self.bind(f"({lid} / {lit(32)})", idx, "warp")
        lane = self.bind(f"({lid} % {lit(32)})", idx, "lane")
        g = self.bind(f"({lane} / {lit(4)})", idx, "g")
        q = self.bind(f"({lane} % {lit(4)})", idx, "q")
        wr = self.bind(f"(({warp} / {lit(per_row)}) * {lit(16 * (rm // 2))})", idx, "wr")
        wc = self.bind(f"(({warp} % {lit(per_row)}) * {lit(8 * (cm // 2))})", idx, "wc")
        m0 = f"({tm} * {lit(plan.rows)} + {wr} + {g})"
        n0 = f"({tn} * {lit(plan.cols)} + {wc} + {q} * {lit(2)})"
        for i, name in enumerate(outs[0]):
            self.emit(d.declare(name, idx, f"({m0} + {lit(16 * (i // 2) + 8 * (i % 2))})"))
        for j, name in enumerate(outs[1]):
            self.emit(d.declare(name, idx, f"({n0} + {lit(8 * (j // 2) + j % 2)})"))
        return wr, wc, g, q

    def mma_stage(self, plan: TiledContraction, tiles_a: str, tiles_b: str,
                  accs: list[list[str]], fragments: tuple[str, str, str, str]) -> None:
        """One staged k block on tensor cores: k steps of 8, each loading the warp's A
        fragments (4 TF32 registers per 16 x 8 tile) and B fragments (2 per 8 x 8), then
        one `mma` per output tile."""
        d, idx = self.d, self.idx
        lit = lambda v: self.literal(v, idx)  # noqa: E731
        (rm, cm), side, cols = plan.micro, plan.tile, plan.cols
        wr, wc, g, q = fragments

        def tf32(tiles: str, index: str) -> str:
            return self.bind(d.tf32(d.local_access(tiles, index)), uint32, "tf")
        for ks in range(0, side, 8):
            a = [[tf32(tiles_a, f"(({wr} + {g} + {lit(16 * fm + 8 * h)}) * {lit(side)} + "
                                f"{q} + {lit(ks + 4 * w)})")
                  for w in range(2) for h in range(2)] for fm in range(rm // 2)]
            b = [[tf32(tiles_b, f"(({q} + {lit(ks + 4 * h)}) * {lit(cols)} + {wc} + {g} + "
                                f"{lit(8 * fn)})") for h in range(2)] for fn in range(cm // 2)]
            for fm in range(rm // 2):
                for fn in range(cm // 2):
                    acc = [accs[2 * fm + h][2 * fn + e] for h in range(2) for e in range(2)]
                    self.emit(d.mma_tf32(acc, a[fm], b[fn]))

    def stage(self, factor: Expr, tiles: str, at: str, outer: str, axis: int, limit: Size,
              step: str, kax: int) -> None:
        """Element `at` of local tile `tiles`: `factor` at `axis` = `outer` and k = `step`,
        0 past the edges (`limit`, the k extent) so partial tiles add nothing."""
        d, idx = self.d, self.idx
        t = dtype_of(self.k.reduce_value)
        step = self.bind(step, idx, "kk")
        staged = self.var(t, self.literal(0, t), "v")
        with self.block(f"if (({outer} < {self.size(limit, idx)}) && "
                        f"({step} < {self.size(self.k.reduce[0], idx)})) {{"):
            self.vars[axis] = outer
            self.vars[kax] = step
            self.count_uses([factor])
            self.emit(f"{staged} = {self.operand(factor, t)};")
        self.emit(f"{d.local_access(tiles, at)} = {staged};")

    def source(self) -> str:
        plan = self.k.schedule
        if isinstance(plan, TiledContraction):
            self.tiled_contraction(plan)
        elif isinstance(plan, GroupReduction):
            self.group_reduction(plan)
        elif isinstance(plan, GridLoop):
            if not isinstance(plan.count, int) or plan.count:
                self.grid_loop(plan)
        else:
            raise GridCodegenError(f"{self.d.name}: kernel {self.k.name}: no renderer for "
                                   f"schedule {type(plan).__name__} (GRID_RULES schedule GPU "
                                   "kernels)")
        if not self.symbols:
            return self.d.kernel(self.k.name, self.param_list, plan.block, self.local,
                                 self.lines, f"schedule: {plan}")
        if self.d.loop_limit:
            self.check_loops()
        if self.d.size_limit:
            for b in self.k.buffers():
                if not isinstance(b.size, int):
                    self.limit(b.size)
        return self.d.kernel(self.k.name, self.param_list, plan.block, self.local,
                             self.prelude + self.lines, f"schedule: {plan}",
                             sizes=list(self.symbols.values()))


_SHUFFLED = (int32, int64, uint32, float32, float64)
"""Register types `Dialect.shuffle_down` exchanges."""


@dataclass
class _Acc:
    """A finished reduction: its value's name, its index's (argmax/argmin), its dtype."""

    value: str
    index: str | None
    dtype: DType


class _Bound:
    """A polynomial in the symbols with rational coefficients: an upper bound of loop
    iterations (a ceiling division bounded by size / divisor + 1, a `Groups` uncapped)."""

    def __init__(self, terms: dict[tuple[str, ...], Fraction]) -> None:
        self.terms = {m: c for m, c in terms.items() if c}

    @staticmethod
    def of(size: Size | Groups) -> _Bound:
        if isinstance(size, int):
            return _Bound({(): Fraction(size)})
        if isinstance(size, Groups):
            total = _Bound.of(1)
            for part, divisor in size.parts:
                total = total * (_Bound.of(part) if divisor == 1 else
                                 _Bound.of(part).scale(Fraction(1, divisor)) + _Bound.of(1))
            return total
        return _Bound({m: Fraction(c) for m, c in size.terms})

    def scale(self, factor: Fraction) -> _Bound:
        return _Bound({m: c * factor for m, c in self.terms.items()})

    def __add__(self, other: _Bound) -> _Bound:
        terms = dict(self.terms)
        for m, c in other.terms.items():
            terms[m] = terms.get(m, 0) + c
        return _Bound(terms)

    def __mul__(self, other: _Bound) -> _Bound:
        terms: dict[tuple[str, ...], Fraction] = {}
        for m, c in self.terms.items():
            for n, e in other.terms.items():
                key = tuple(sorted(m + n))
                terms[key] = terms.get(key, 0) + c * e
        return _Bound(terms)

    def at_most(self, limit: int) -> tuple[Size, int]:
        """`self <= limit` with integer coefficients: (size, most), both scaled by the
        denominators' lcm (a `Dim`, comparable in a shape environment, or an int)."""
        scale = math.lcm(*(c.denominator for c in self.terms.values())) if self.terms else 1
        size = poly_from_terms({m: int(c * scale) for m, c in self.terms.items()})
        return (Dim(*size.terms) if isinstance(size, Poly) else size), limit * scale


# ---- programs -----------------------------------------------------------------------------


def generate_program(kernels: KernelGraph, plan: MemoryPlan | None, target: Target,
                     dialect: Dialect) -> Program:
    """The `Program` of docs/targets/gpu-programs.md: every kernel rendered through
    `dialect` as its schedule says (a kernel not scheduled yet gets `target`'s rules), in
    launch order, with its launch geometry."""
    caps = target.capabilities
    plan = plan_memory(kernels, caps.alignment, caps.bool_bytes) if plan is None else plan
    rules = target_rules(target)
    scheduled = [k if k.schedule is not None else replace(k, schedule=schedule_kernel(
        k, caps, rules)) for k in kernels.kernels]
    outputs, temps = set(kernels.outputs), set(kernels.temporaries())
    shared = outputs | temps
    symbols = program_symbols(kernels)
    idents = _symbol_arguments(kernels, symbols, dialect)
    infos, sources, names, sized, checks = [], [], set(), [], {}
    if dialect.size_limit:
        for s in symbols:
            checks[Poly((((s,), 1),))] = (dialect.size_limit, "the 32-bit size limit")
    rendered: list[Kernel] = []
    """The kernels as rendered, one per entry of `infos` (a schedule may change there)."""

    def fresh(name: str, suffix: str = "_kernel") -> str:
        base, n = name, 0
        while name in names or name in RESERVED or name in kernels.buffers:
            name, n = f"{base}{suffix}{n or ''}", n + 1
        names.add(name)
        return name
    for position, kernel in enumerate(scheduled):
        dialect.check(kernel, kernels)
        name = fresh(re.sub(r"\W", "_", kernel.name))
        kernel = replace(kernel, name=name)
        roots = parameters(kernel, plan)
        storage = {b.name: storage_root(b.name, roots, plan) for b in kernel.buffers()}
        written = {storage[b.name] for b in kernel.outputs}
        params = [Param(r, kernels.buffers[r].dtype, r in written, r in shared,
                        f"b{i}_{re.sub(r'[^A-Za-z0-9_]', '_', r)}")
                  for i, r in enumerate(roots)]
        if caps.max_kernel_buffers and len(params) > caps.max_kernel_buffers:
            raise GridCodegenError(
                f"{dialect.name}: kernel {name} binds {len(params)} buffers, more than the "
                f"limit of {caps.max_kernel_buffers} buffers per kernel (max_kernel_buffers)")
        dynamic = bool(kernel_symbols(kernel)) or not all(
            isinstance(g, int) for g in kernel.schedule.grid)
        if dynamic:
            sized.append(name)
            renderer = _Renderer(kernel, dialect, params, storage, idents)
            source = renderer.source()
            parts = [(kernel, renderer, source)]
        else:
            parts = _render_static(kernel, dialect, params, storage, caps, fresh)
        for kernel, renderer, source in parts:
            rendered.append(replace(scheduled[position], schedule=kernel.schedule))
            for size, (most, what) in renderer.checks.items():
                checks.setdefault(size, (most, what))
            local = sum(count * dtype.itemsize for _, dtype, count in renderer.local)
            if local > caps.local_memory_bytes:
                raise GridCodegenError(
                    f"{dialect.name}: kernel {kernel.name} needs {local} bytes of local (shared) "
                    f"memory, more than the limit of {caps.local_memory_bytes} bytes "
                    "(local_memory_bytes)")
            sources.append(source)
            plan_ = kernel.schedule
            grid = (0,) * len(plan_.grid) if 0 in plan_.grid else plan_.grid
            infos.append(KernelInfo(kernel.name, tuple(p.name for p in params), kernel.comment,
                                    tuple(kernel.domain), source, grid, plan_.block))
    program = Program(
        target=target.device, entry="kernels", source=dialect.unit(sources, rendered),
        inputs=tensor_specs(kernels, kernels.inputs),
        outputs=tensor_specs(kernels, kernels.outputs), buffers=buffer_specs(kernels, plan),
        kernels=infos, arena_bytes=plan.arena_bytes, constants=constant_arrays(kernels),
        memory={"naive": plan.naive_bytes, "planned": plan.arena_bytes,
                "lower_bound": plan.lower_bound_bytes},
        metadata={"schedules": {i.name: str(k.schedule) for i, k in zip(infos, rendered)},
                  **dialect.metadata(kernels, rendered)},
    )
    if symbols:
        program.symbols = symbols
        program.metadata["sized_kernels"] = sized
        if checks:
            unique = {json.dumps(extent_to_json(size)): (size, most, what)
                      for size, (most, what) in checks.items()}
            program.metadata["size_checks"] = [
                {"size": extent_to_json(size), "most": most, "what": what}
                for size, most, what in unique.values()]
    return program


def _render_static(kernel: Kernel, dialect: Dialect, params: list[Param],
                   storage: dict[str, str], caps, fresh) -> list[tuple[Kernel, _Renderer, str]]:
    """A kernel of static sizes rendered as scheduled: [(kernel, renderer, source)].  Under a
    `loop_limit` (lavapipe ends an invocation's loops silently after 65,535 loop-header runs
    in all), one whose loops may pass it is rendered again: unrolled more
    (`_Renderer.boost`); then, for a reduction, as a work-group per output point
    (`grid.group_reduction`), of 256 work-items and of the most the target allows, plain and
    unrolled more; the first that keeps within the limit is taken.  A serial kernel (one
    work-item, in order) that passes it even so becomes several kernels, launched in order,
    each doing a part of its points (`_Renderer.span`, named by `fresh`).
    `GridCodegenError` (at compile time, never a wrong answer) where nothing keeps within
    the limit."""
    renderer = _Renderer(kernel, dialect, params, storage)
    source = renderer.source()
    limit = dialect.loop_limit
    if not limit or renderer.static_work() <= limit:
        return [(kernel, renderer, source)]
    tried = [f"{renderer.static_work()} as scheduled ({type(kernel.schedule).__name__} of "
             f"{kernel.schedule.block[0]} work-items)"]
    plans = [(kernel.schedule, True)]
    for widest in (False, True):
        group = group_reduction(kernel, caps, widest)
        if group is not None and group != kernel.schedule and \
                all(group != plan for plan, _ in plans):
            plans += [(group, False), (group, True)]
    works = []
    for plan, boost in plans:
        candidate = replace(kernel, schedule=plan)
        renderer = _Renderer(candidate, dialect, params, storage, boost=boost)
        source = renderer.source()
        works.append(renderer.static_work())
        if works[-1] <= limit:
            return [(candidate, renderer, source)]
        tried.append(f"{works[-1]} as {type(plan).__name__} of {plan.block[0]} work-items"
                     f"{' unrolled more' if boost else ''}")
    plan = kernel.schedule
    if isinstance(plan, GridLoop) and plan.serial and isinstance(plan.count, int):
        count = plan.count  # parts of at most 7/8 of the limit each
        size = -(-count // -(-works[0] // (limit * 7 // 8)))
        parts = []
        for low in range(0, count, size):
            part = replace(kernel, name=fresh(f"{kernel.name}_part{len(parts)}", "_"))
            renderer = _Renderer(part, dialect, params, storage, boost=True,
                                 span=(low, min(count, low + size)))
            parts.append((part, renderer, renderer.source()))
            if renderer.static_work() > limit:
                tried.append(f"{renderer.static_work()} in parts of {size} points")
                break
        else:
            return parts
    raise GridCodegenError(
        f"{dialect.name}: kernel {kernel.name}: its loops would run past the driver's limit of "
        f"{limit} loop iterations per invocation, after which they stop silently (lavapipe): "
        f"iterations at most {'; '.join(tried)}.  Split the computation (e.g. reduce the "
        "long axis in chunks, then the chunks' results), or run it on another target")


def _symbol_arguments(kernels: KernelGraph, symbols: tuple[str, ...],
                      dialect: Dialect) -> dict[str, str]:
    """Each symbol's scalar argument name; `DynamicSizeError` where the dialect takes no
    dynamic sizes.  A symbol no input dimension carries (a compiled mean's backward reads one
    scalar) is given to the runtime with the call (`run_device(buffers, sizes)`)."""
    if not symbols:
        return {}
    if not dialect.dynamic:
        raise DynamicSizeError(f"{dialect.name}: dynamic sizes are not supported (programs "
                               "of static sizes only)")
    names = set(kernels.buffers)
    return {s: s if s.isidentifier() and s not in RESERVED and s not in names
            and not s.startswith("b") else f"size{i}" for i, s in enumerate(symbols)}
