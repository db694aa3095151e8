"""The kernel-IR verifier: checks a `KernelGraph` against the rules of compiler/kernel/ir.py.

Lowering and every rewrite after it (decompositions, index widths, schedules) must hand the
generators well-formed kernels; `verify_kernels` says where one is not, naming the kernel and
the problem, instead of a generator crashing on it or, worse, emitting code that reads out of
bounds.  It checks: op names in the closed set (compiler/kernel/ops.py) with the right arity
and operand dtypes; `Where` conditions and load masks bool, branches of one dtype; indices
integral; every loaded or stored buffer declared by the kernel and by the graph, with one
dtype and size, loads reading inputs and stores writing outputs of their dtype; `Var` axes
inside the loop nest (the reduction axes in the reduction only); `Acc` only in the stores of
a reduction kernel; the reduce op known; the graph's inputs, outputs and constants declared;
`index_bits` 32 or 64; and, for unmasked loads and stores whose index is affine in the loop
variables, that every index the loops reach lies in [0, size).  Run under NEURENIX_SPEC.

Dynamic sizes (docs/compiler/dynamic-shapes.md): a bounds check over dynamic extents passes
when it holds for every value of the symbols (interval bounds in the active shape
environment), fails when it is broken at the symbols' hints or lower bounds, and is skipped
otherwise (or outside an environment); `Sym` leaves are int64.  Nothing here compares dynamic
sizes (which would record guards).
"""
from __future__ import annotations

from ...runtime.sizes import Poly, size_value
from ..symbolic import DynamicSizeError, active_env
from ..types import KERNEL_DTYPES, DType, bool_, int64
from .affine import affine, affine_range
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
    postorder,
)
from .ops import REDUCE_OPS, check_operands


class KernelIRError(ValueError):
    """A kernel breaks the kernel IR's rules; the message names the kernel and the rule."""


def verify_kernels(kernels: KernelGraph) -> None:
    """Raise KernelIRError at the first broken rule of `kernels` (see the module docstring)."""
    declared = kernels.buffers
    for role, names in (("input", kernels.inputs), ("output", kernels.outputs),
                        ("constant", list(kernels.constants))):
        for name in names:
            if name not in declared:
                raise KernelIRError(f"kernel graph: {role} {name!r} is not a declared buffer")
    for k in kernels.kernels:
        _KernelCheck(k, declared).run()


class _KernelCheck:
    def __init__(self, kernel: Kernel, declared: dict[str, BufferArg]) -> None:
        self.k = kernel
        self.declared = declared
        self.args = {b.name: b for b in kernel.buffers()}
        self.inputs = {b.name for b in kernel.inputs}
        self.outputs = {b.name for b in kernel.outputs}
        self.dtypes: dict[int, DType] = {}

    def fail(self, problem: str) -> None:
        raise KernelIRError(f"kernel {self.k.name}: {problem}")

    def run(self) -> None:
        k = self.k
        if k.index_bits not in (32, 64):
            self.fail(f"index_bits {k.index_bits} is not 32 or 64")
        for b in k.buffers():
            d = self.declared.get(b.name)
            if d is None:
                self.fail(f"buffer {b.name} is not declared by the kernel graph")
            if d.dtype != b.dtype or not _same_size(d.size, b.size):
                self.fail(f"buffer {b.name} is {b.size} x {b.dtype.name} here but "
                          f"{d.size} x {d.dtype.name} in the kernel graph")
        self._reduction()
        n_dom = len(k.domain)
        for s in k.stores:
            self._store(s, n_dom)

    def _reduction(self) -> None:
        k = self.k
        if k.reduce_value is None:
            if k.reduce_op is not None or k.reduce:
                self.fail("reduce_op or reduce axes without a reduce_value")
            return
        if k.reduce_op not in REDUCE_OPS:
            self.fail(f"reduce_op {k.reduce_op!r} is not one of {sorted(REDUCE_OPS)}")
        if k.reduce_op in ("argmax", "argmin") and len(k.reduce) != 1:
            self.fail(f"{k.reduce_op} reduces exactly one axis, got {len(k.reduce)}")
        axes = len(k.domain) + len(k.reduce)
        self.expr(k.reduce_value, axes, "the reduce_value", acc=False)

    def _store(self, s: Store, n_dom: int) -> None:
        if s.buffer not in self.outputs:
            self.fail(f"stores to {s.buffer}, which is not one of its outputs")
        where = f"the store to {s.buffer}"
        index = self.expr(s.index, n_dom, f"the index of {where}", acc=True)
        if not index.is_integer:
            self.fail(f"the index of {where} is {index.name}, not an integer")
        value = self.expr(s.value, n_dom, where, acc=True)
        want = self.args[s.buffer].dtype
        if value != want:
            self.fail(f"{where} writes {value.name} into a buffer of {want.name}")
        self._bounds(s.index, s.buffer, self.k.domain, where)

    def _bounds(self, index: Expr, buffer: str, extents: tuple[int, ...], what: str) -> None:
        """An affine index stays in [0, size) over the whole loop nest (an empty one reaches
        nothing)."""
        form = affine(index)
        size = self.args[buffer].size
        if form is None or any(isinstance(n, int) and n == 0 for n in extents):
            return
        if any(isinstance(n, Poly) for n in (*extents, size, *form.values())):
            self._dynamic_bounds(form, extents, size, buffer, what)
            return
        lo, hi = affine_range(form, extents)
        if lo < 0 or hi >= size:
            self.fail(f"{what} reaches {buffer}[{lo}..{hi}], outside its {size} elements")

    def _dynamic_bounds(self, form: dict[int, int], extents: tuple, size, buffer: str,
                        what: str) -> None:
        """`_bounds` over dynamic extents or size (see the module docstring)."""
        try:
            env = active_env()
        except DynamicSizeError:
            return
        if any(isinstance(n, Poly) and env.bounds(n)[0] < 1 for n in extents):
            return  # an extent that may be 0 reaches nothing then: not checked
        lo = hi = form.get(-1, 0)
        for axis, k in form.items():
            if axis >= 0:  # k * (extent - 1): its sign is k's, as extents are at least 1
                k_lo, k_hi = env.bounds(k)
                if k_lo < 0 < k_hi:
                    return  # a dynamic stride of either sign: not checked
                span = k * (extents[axis] - 1)
                lo, hi = (lo + span, hi) if k_hi <= 0 else (lo, hi + span)
        above, below = size - 1 - hi, lo
        if all(env.bounds(x)[0] >= 0 for x in (above, below)):
            return
        for values in (env.hints(), {s.name: s.lo for s in env.symbols.values()}):
            if env.excludes(values):
                continue  # sizes the trace's guards exclude: the program never runs there
            if any(size_value(x, values) < 0 for x in (above, below)):
                self.fail(f"{what} reaches {buffer}[{size_value(lo, values)}.."
                          f"{size_value(hi, values)}], outside its {size_value(size, values)} "
                          f"elements at sizes {values}")

    def expr(self, root: Expr, n_axes: int, where: str, acc: bool) -> DType:
        """Check every node under `root` (each once) and return the root's dtype; `n_axes`
        loop variables exist there and `acc` says whether Acc() may appear."""
        for e in postorder([root]):
            self.dtypes[id(e)] = self._node(e, n_axes, where, acc)
        return self.dtypes[id(root)]

    def _node(self, e: Expr, n_axes: int, where: str, acc: bool) -> DType:
        dt = lambda x: self.dtypes[id(x)]  # noqa: E731 - children are checked first
        if isinstance(e, Var):
            if not 0 <= e.axis < n_axes:
                self.fail(f"Var({e.axis}) in {where}, outside its {n_axes} loop axes")
            return int64
        if isinstance(e, Sym):
            return int64
        if isinstance(e, Const):
            if e.dtype not in KERNEL_DTYPES:
                self.fail(f"constant of unknown dtype {e.dtype!r} in {where}")
            return e.dtype
        if isinstance(e, Acc):
            if not acc or self.k.reduce_value is None:
                self.fail(f"Acc() in {where}, which is not a store of a reduction kernel")
            return self.k.acc_dtype
        if isinstance(e, Load):
            return self._load(e, dt, n_axes, where)
        if isinstance(e, Unary):
            return self._op(e.op, (dt(e.x),), where)
        if isinstance(e, Binary):
            return self._op(e.op, (dt(e.a), dt(e.b)), where)
        if isinstance(e, Where):
            if dt(e.cond) != bool_:
                self.fail(f"a select's condition is {dt(e.cond).name}, not bool, in {where}")
            if dt(e.a) != dt(e.b):
                self.fail(f"a select's branches are {dt(e.a).name} and {dt(e.b).name} in "
                          f"{where}")
            return dt(e.a)
        if isinstance(e, Cast):
            if e.dtype not in KERNEL_DTYPES:
                self.fail(f"cast to unknown dtype {e.dtype!r} in {where}")
            return e.dtype
        if isinstance(e, RandomUniform):
            if dt(e.seed) != int64 or not dt(e.counter).is_integer:
                self.fail(f"rng_uniform takes an int64 seed and an integer counter, got "
                          f"{dt(e.seed).name} and {dt(e.counter).name} in {where}")
            if not e.dtype.is_floating:
                self.fail(f"rng_uniform of {e.dtype.name} in {where}: it makes floats")
            return e.dtype
        self.fail(f"{e!r} in {where} is not a kernel expression")
        raise AssertionError("unreachable")

    def _op(self, op: str, operands: tuple[DType, ...], where: str) -> DType:
        try:
            return check_operands(op, operands)
        except ValueError as exc:
            self.fail(f"{exc} in {where}")
            raise

    def _load(self, e: Load, dt, n_axes: int, where: str) -> DType:
        if e.buffer not in self.inputs:
            self.fail(f"loads {e.buffer} in {where}, which is not one of its inputs")
        buf = self.args[e.buffer]
        if e.dtype != buf.dtype:
            self.fail(f"loads {e.buffer} as {e.dtype.name}; the buffer holds {buf.dtype.name}")
        if not dt(e.index).is_integer:
            self.fail(f"the index of a load of {e.buffer} is {dt(e.index).name}, not an "
                      f"integer, in {where}")
        if e.mask is not None and dt(e.mask) != bool_:
            self.fail(f"the mask of a load of {e.buffer} is {dt(e.mask).name}, not bool, in "
                      f"{where}")
        if e.mask is None:
            extents = (tuple(self.k.domain) + tuple(self.k.reduce))[:n_axes]
            self._bounds(e.index, e.buffer, extents, f"a load in {where}")
        return e.dtype


def _same_size(a, b) -> bool:
    """Whether two sizes are the same (dynamic ones structurally: no guard recorded)."""
    if isinstance(a, Poly) or isinstance(b, Poly):
        return isinstance(a, Poly) and isinstance(b, Poly) and a.terms == b.terms
    return a == b
