"""Lowering: a `Graph` becomes a `KernelGraph` of kernels (compiler/kernel/ir.py).

`compiler.lowering.fusion` decides which values live in memory and which nodes share a kernel;
this module writes each group as one loop nest.  A kernel's stores evaluate its roots "at the
domain index", and every node they need that is not in memory is inlined as an expression at
whatever index the consumer asks for: views (reshape, permute, expand, slice, pad, concat,
unfold) and sources (full, iota, rng_uniform) cost nothing but index arithmetic
(`compiler.lowering.index`), pads and concats become masked loads under a `Where`, gathers become
loads at a loaded index, and a reduction's input is its prologue.

Buffers: graph inputs keep their names (made valid identifiers), constants become constant
buffers, graph output i is written to "out<i>" (copied when it is an input, a constant or a
repeat), and every other materialised value is a temporary "t<k>".  All are contiguous and
row-major.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from math import prod

import numpy as np

from ...runtime.sizes import Size
from ..graph.ir import CONSTANT, Graph, Node, ancestors
from ..kernel.ir import (
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
    Unary,
    Var,
    Where,
)
from ..kernel.ops import BINARY_PRIMITIVES, UNARY_PRIMITIVES
from ..passes.select_max import select_max
from ..passes.stacked_sums import stacked_sums
from ..symbolic import DynamicSizeError
from ..targets import Capabilities
from ..types import DType, int64
from .fusion import FusionPlan, Group, is_buffer, plan_fusion
from .index import (
    FALSE,
    MOVEMENT_OPS,
    TRUE,
    ZERO,
    Index,
    IndexAlgebra,
    disjoint_fold_index,
    disjoint_windows,
    fold_index,
    matmul_domain,
    matmul_operand_indices,
    movement_index,
)
from .sizes import empty, is_dynamic, is_one, is_zero, size_const

REDUCE_OP = {"reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min",
             "reduce_prod": "prod", "argmax": "argmax", "argmin": "argmin", "matmul": "sum",
             "fold": "sum"}

CONCAT_SPLIT_INPUTS = 3  # a stored concat of this many inputs is written piece by piece

# words a C, CUDA, OpenCL, WGSL or LLVM-facing name must not be
RESERVED = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if
    inline int long register restrict return short signed sizeof static struct switch typedef
    union unsigned void volatile while bool true false half kernel global local private
    constant fn let var loop array ptr uniform storage workgroup function i32 u32 f32 f16 i64
    main new delete class this template typename namespace using uint size_t NULL nullptr
    """.split())


class LoweringError(RuntimeError):
    """A graph the lowering cannot express (an internal error: fusion promised otherwise)."""


def lower(graph: Graph, fuse: bool = True, caps: Capabilities | None = None) -> KernelGraph:
    """Lower a graph to a list of kernels.

    `fuse=False` gives one kernel per node (every intermediate in memory): for debugging, and
    to test the lowering of each primitive alone.  `caps` answers the fusion questions that
    depend on the target (default: the llvm target's).
    """
    if fuse:
        graph = stacked_sums(select_max(graph))
    plan = plan_fusion(graph, fuse=fuse, caps=caps)
    names = _name_buffers(graph, plan)
    args = {name: BufferArg(name, n.type.dtype, n.type.numel) for n, name in names.items()}
    kernels: list[Kernel] = []
    for group in plan.groups:
        kernels.extend(_GroupLowering(plan, names, args, group, len(kernels)).kernels())
    kernels.extend(_output_copies(graph, names, len(kernels)))
    buffers: dict[str, BufferArg] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for node, name in names.items():
        buffers.setdefault(name, BufferArg(name, node.type.dtype, node.type.numel))
        shapes.setdefault(name, node.type.shape)
    outputs = [f"out{i}" for i in range(len(graph.outputs))]
    for name, node in zip(outputs, graph.outputs):
        buffers.setdefault(name, BufferArg(name, node.type.dtype, node.type.numel))
        shapes.setdefault(name, node.type.shape)
    constants = {names[n]: np.ascontiguousarray(graph.constants[n.name])
                 for n in graph.nodes if n.op == CONSTANT and n in names}
    return KernelGraph(kernels, buffers, [names[n] for n in graph.inputs], outputs, shapes,
                    constants)


# ---- buffer names -------------------------------------------------------------------------


def sanitize(name: str) -> str:
    """`name` as a C/WGSL identifier: invalid characters become '_', a leading digit or
    underscore gets a letter, a reserved word an underscore ('fc.weight' -> 'fc_weight')."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name)
    out = re.sub(r"__+", "_", out)
    if not out or not out[0].isalpha():
        out = "v" + out
    if out in RESERVED:
        out += "_"
    return out


def _name_buffers(graph: Graph, plan: FusionPlan) -> dict[Node, str]:
    taken = {f"out{i}" for i in range(len(graph.outputs))}
    names: dict[Node, str] = {}

    def unique(base: str) -> str:
        name, k = base, 1
        while name in taken or re.fullmatch(r"t\d+", name):
            name = f"{base}_{k}"
            k += 1
        taken.add(name)
        return name

    for n in graph.inputs:
        names[n] = unique(sanitize(n.name))
    needed = ancestors(graph.outputs)
    for n in graph.nodes:
        if n.op == CONSTANT and n in needed:
            names[n] = unique(sanitize(n.name))
    for i, o in enumerate(graph.outputs):
        if not is_buffer(o) and o not in names:
            names[o] = f"out{i}"
    temp = 0
    for group in plan.groups:
        for r in group.roots:
            if r not in names:
                names[r] = f"t{temp}"
                temp += 1
    return names


# ---- expressions --------------------------------------------------------------------------


def scalar(value, dtype: DType) -> Const:
    """A constant of `dtype` holding `value` converted as NumPy converts it."""
    return Const(np.array(value).astype(dtype.np_type).item(), dtype)


def where(cond: Expr | None, a: Expr, b: Expr) -> Expr:
    """cond ? a : b, folded when cond is constant (None means true)."""
    if cond is None or cond == TRUE:
        return a
    if cond == FALSE:
        return b
    return Where(cond, a, b)


class _Emitter:
    """Builds the expression of a node at an index inside one kernel.

    `own` are the nodes this kernel computes even when they are also stored; `reduction` is
    the kernel's reduction node, read as `Acc()` at the domain index `acc_flat`; without
    `acc_flat` it is a fold with disjoint windows, read as its one tap at each position.
    """

    def __init__(self, plan: FusionPlan, names: dict[Node, str], alg: IndexAlgebra,
                 own: set[Node], reduction: Node | None = None,
                 acc_flat: Expr | None = None) -> None:
        self.plan = plan
        self.names = names
        self.alg = alg
        self.own = own
        self.reduction = reduction
        self.acc_flat = acc_flat
        self.memo: dict[tuple, Expr] = {}

    def value(self, node: Node, idx: Index, valid: Expr | None = None) -> Expr:
        key = (node, idx, valid)
        if key not in self.memo:
            self.memo[key] = self._value(node, idx, valid)
        return self.memo[key]

    def _value(self, node: Node, idx: Index, valid: Expr | None) -> Expr:
        if is_buffer(node) or (self.plan.is_loaded(node) and node not in self.own):
            dtype = node.type.dtype
            return Load(self.names[node], self.alg.flat(idx, node.type.shape), dtype, valid,
                        scalar(0, dtype).value)
        if node is self.reduction and self.acc_flat is None:
            x_idx, cond = disjoint_fold_index(self.alg, idx, node)
            return self.guarded(node.inputs[0], x_idx, valid, cond,
                                scalar(0, node.type.dtype))
        if node is self.reduction:
            if self.alg.flat(idx, node.type.shape) != self.acc_flat:
                raise LoweringError(f"{node.op} {node.type} is read at an index other than "
                                    "its kernel's")
            return Acc()
        return self._compute(node, idx, valid)

    def _mask(self, valid: Expr | None, cond: Expr | None) -> Expr | None:
        m = self.alg.all_of(valid, cond)
        return None if m == TRUE else m

    def guarded(self, node: Node, idx: Index, valid: Expr | None, cond: Expr | None,
                 fill: Const) -> Expr:
        """cond ? node[idx] : fill, reading nothing where cond is false.  A plain load
        becomes one masked load that yields `fill` itself."""
        mask = self._mask(valid, cond)
        inner = self.value(node, idx, mask)
        if isinstance(inner, Load) and inner.mask is not None and inner.mask == mask:
            return Load(inner.buffer, inner.index, inner.dtype, mask, fill.value)
        return where(cond, inner, fill)

    def _compute(self, n: Node, idx: Index, valid: Expr | None) -> Expr:
        op = n.op
        args = n.inputs
        if op in UNARY_PRIMITIVES:
            return Unary(UNARY_PRIMITIVES[op], self.value(args[0], idx, valid))
        if op in BINARY_PRIMITIVES:
            return Binary(BINARY_PRIMITIVES[op], self.value(args[0], idx, valid),
                          self.value(args[1], idx, valid))
        if op == "where":
            return Where(*(self.value(a, idx, valid) for a in args))
        if op == "cast":
            x = self.value(args[0], idx, valid)
            return x if args[0].type.dtype == n.type.dtype else Cast(n.type.dtype, x)
        if op == "stop_gradient" or (op.startswith("reduce_") and not n.attr["axes"]):
            return self.value(args[0], idx, valid)
        if op in MOVEMENT_OPS:
            return self._movement(n, idx, valid)
        if op == "full":
            value = n.attr["value"]
            if is_dynamic(value):  # a dynamic size as a number (the count of a mean)
                e = size_const(value)
                return e if n.type.dtype == int64 else Cast(n.type.dtype, e)
            return scalar(value, n.type.dtype)
        if op == "iota":
            e = idx[n.attr["axis"]]
            return e if n.type.dtype == int64 else Cast(n.type.dtype, e)
        if op == "rng_uniform":
            seed = self.value(args[0], (), valid)
            return RandomUniform(seed, self.alg.flat(idx, n.type.shape), n.type.dtype)
        if op == "gather":
            return self._gather(n, idx, valid)
        raise LoweringError(f"{op} {n.type} cannot be inlined into a kernel")

    def _movement(self, n: Node, idx: Index, valid: Expr | None) -> Expr:
        branches = movement_index(self.alg, n, idx)
        if n.op == "pad":
            pos, sub, cond = branches[0]
            fill = scalar(n.attr["value"], n.type.dtype)
            if cond == FALSE:
                return fill
            if cond is None:
                return self.value(n.inputs[pos], sub, valid)
            return self.guarded(n.inputs[pos], sub, valid, cond, fill)
        result: Expr | None = None
        for pos, sub, cond in reversed(branches):
            e = self.value(n.inputs[pos], sub, self._mask(valid, cond))
            result = e if result is None else where(cond, e, result)
        if result is None:
            raise LoweringError(f"{n.op} {n.type} reads nothing")
        return result

    def _gather(self, n: Node, idx: Index, valid: Expr | None) -> Expr:
        x, ind = n.inputs
        axis = n.attr["axis"]
        k = ind.type.ndim
        iv = self.value(ind, idx[axis:axis + k], valid)
        if ind.type.dtype != int64:
            iv = Cast(int64, iv)
        cond = self.alg.in_range(iv, x.type.shape[axis])
        sub = idx[:axis] + (iv,) + idx[axis + k:]
        return self.guarded(x, sub, valid, cond, scalar(0, n.type.dtype))


# ---- kernels ------------------------------------------------------------------------------


def _vars(start: int, n: int) -> Index:
    return tuple(Var(start + i) for i in range(n))


def _squeezed_vars(shape: Sequence[Size], start: int) -> Index:
    """An index over `shape` whose size-1 axes are the constant 0 and whose other axes are
    consecutive loop variables from `start` (a loop nest without trivial loops)."""
    out: list[Expr] = []
    k = start
    for d in shape:
        if is_one(d):
            out.append(ZERO)
        else:
            out.append(Var(k))
            k += 1
    return tuple(out)


class _GroupLowering:
    """The kernel(s) of one fusion group."""

    def __init__(self, plan: FusionPlan, names: dict[Node, str], args: dict[str, BufferArg],
                 group: Group, first: int) -> None:
        self.plan = plan
        self.names = names
        self.args = args
        self.group = group
        self.first = first
        self.out: list[Kernel] = []

    def kernels(self) -> list[Kernel]:
        try:
            return self._kernels()
        except DynamicSizeError as e:  # name the ops for the caller that falls back to static
            raise DynamicSizeError(f"lowering {describe(self.group.nodes)}: {e}") from e

    def _kernels(self) -> list[Kernel]:
        g = self.group
        if g.kind == "reduce":
            self._reduce()
        elif g.kind == "scatter":
            self._scatter()
        elif split_concat(g):
            self._concat_pieces(g.roots[0])
        else:
            self._elementwise([(self.names[r], r, r) for r in g.roots], set(g.roots))
        return self.out

    def _emit(self, label: str, domain: Sequence[int], stores: Sequence[Store],
              **extra) -> None:
        exprs = [e for s in stores for e in (s.index, s.value)]
        if extra.get("reduce_value") is not None:
            exprs.append(extra["reduce_value"])
        loaded = list(dict.fromkeys(ld.buffer for ld in _loads(exprs)))
        stored = list(dict.fromkeys(s.buffer for s in stores))
        name = f"k{self.first + len(self.out)}_{label}"
        self.out.append(Kernel(name, tuple(self.args[b] for b in loaded),
                               tuple(self.args[b] for b in stored), tuple(domain), tuple(stores),
                               comment=describe(self.group.nodes), **extra))

    def _elementwise(self, targets: list[tuple[str, Node, Node]], own: set[Node],
                     label: str | None = None, into: tuple[Node, int] | None = None) -> None:
        """Store each (buffer, value node, shape node) over the shape's domain; the domain
        collapses to one axis when no index then needs a division.

        `into` = (concat, offset) stores the values as the part of a concat's buffer that
        starts at `offset` along the concat's axis."""
        shape = targets[0][2].type.shape
        if empty(shape):
            return
        squeezed = tuple(d for d in shape if not is_one(d))
        attempts = [(prod(shape),)] if len(squeezed) > 1 else []
        attempts.append(squeezed)
        for domain in attempts:
            alg = IndexAlgebra(domain)
            if domain is squeezed:
                idx = _squeezed_vars(shape, 0)
            else:
                idx = alg.unflatten(Var(0), shape)
            em = _Emitter(self.plan, self.names, alg, own)
            if into is None:
                at = alg.flat(idx, shape)
            else:
                whole, offset = into
                axis = whole.attr["axis"]
                shifted = idx[:axis] + (alg.add(idx[axis], size_const(offset)),) + idx[axis + 1:]
                at = alg.flat(shifted, whole.type.shape)
            stores = [Store(buf, at, em.value(node, idx)) for buf, node, _ in targets]
            if domain is squeezed or not _has_divmod(stores):
                break
        label = label or targets[0][1].op
        self._emit(label, domain, stores)

    def _concat_pieces(self, c: Node) -> None:
        """A stored concat as one kernel per input, each writing its part of the buffer: no
        per-element choice between the inputs, and each input computed only where it lands."""
        axis = c.attr["axis"]
        offset = 0
        for piece in c.inputs:
            self._elementwise([(self.names[c], piece, piece)], set(self.group.nodes),
                              "concat", (c, offset))
            offset = offset + piece.type.shape[axis]

    def _reduce(self) -> None:
        r = self.group.reduction
        extra: dict = {"reduce_op": REDUCE_OP[r.op]}
        if r.op == "matmul":
            full, red = matmul_domain(r)
        elif r.op == "fold":
            full, red = r.type.shape, tuple(r.attr["kernel"])
        else:
            x_shape = r.inputs[0].type.shape
            axes = (r.attr["axis"],) if r.op in ("argmax", "argmin") else r.attr["axes"]
            full = tuple(d for i, d in enumerate(x_shape) if i not in axes)
            red = tuple(x_shape[i] for i in axes)
        if empty(full):
            return
        if r.op == "fold" and disjoint_windows(r):
            self._disjoint_fold(r)
            return
        # size-1 axes leave the loop nest, except a matmul's documented (B,) M, N layout
        domain = full if r.op == "matmul" else tuple(d for d in full if not is_one(d))
        alg = IndexAlgebra(domain + red)
        dvars = _squeezed_vars(full, 0) if r.op != "matmul" else _vars(0, len(full))
        rvars = _vars(len(domain), len(red))
        flat = alg.flat(dvars, full)
        em = _Emitter(self.plan, self.names, alg, set(self.group.nodes), r, flat)
        if empty(red):
            # an empty reduction reads nothing (its input may be a view with nothing to read,
            # such as a concat of empty parts): the loop never runs, each result is the
            # identity, and the value is a placeholder of the input's dtype
            rv = scalar(0, r.inputs[0].type.dtype)
        elif r.op == "matmul":
            a_idx, b_idx = matmul_operand_indices(alg, r)
            la, lb = em.value(r.inputs[0], a_idx), em.value(r.inputs[1], b_idx)
            rv: Expr = Binary("mul", la, lb)
            extra["contraction"] = _contraction(alg, r, la, lb, domain)
        elif r.op == "fold":
            x_idx, cond = fold_index(alg, dvars, rvars, r)
            rv = em.guarded(r.inputs[0], x_idx, None, cond, scalar(0, r.type.dtype))
        else:
            it_d, it_r = iter(dvars), iter(rvars)
            x_idx = tuple(next(it_r) if i in axes else next(it_d) for i in range(len(x_shape)))
            rv = em.value(r.inputs[0], x_idx)
        extra.update(reduce=red, reduce_value=rv)
        stores = []
        for n in self.group.roots:
            if n.op == "permute" and n is not r:
                # a transposed store: the permute's input is at the kernel's own index
                src = alg.unflatten(flat, n.inputs[0].type.shape)
                idx = tuple(src[p] for p in n.attr["perm"])
                stores.append(Store(self.names[n], alg.flat(idx, n.type.shape),
                                    em.value(n, idx)))
            else:
                idx = alg.unflatten(flat, n.type.shape)
                stores.append(Store(self.names[n], flat, em.value(n, idx)))
        self._emit(r.op, domain, stores, **extra)

    def _disjoint_fold(self, r: Node) -> None:
        """A fold whose windows do not overlap (pooling's gradient): each output position
        takes at most one tap, so it is an elementwise kernel reading that tap, with no
        reduction over the taps nor the masked loads of the taps that miss."""
        full = r.type.shape
        domain = tuple(d for d in full if not is_one(d))
        alg = IndexAlgebra(domain)
        dvars = _squeezed_vars(full, 0)
        em = _Emitter(self.plan, self.names, alg, set(self.group.nodes), r)
        stores = []
        for n in self.group.roots:
            idx = alg.unflatten(alg.flat(dvars, full), n.type.shape)
            stores.append(Store(self.names[n], alg.flat(idx, n.type.shape), em.value(n, idx)))
        self._emit("fold", domain, stores)

    def _scatter(self) -> None:
        s = self.group.roots[0]
        base, ind, src = s.inputs
        buf = self.names[s]
        self._elementwise([(buf, base, s)], {s}, "scatter_add_init")
        shape = s.type.shape
        if empty(shape) or empty(src.type.shape):
            return
        axis = s.attr["axis"]
        k = ind.type.ndim
        alg = IndexAlgebra(src.type.shape)
        idx = _vars(0, src.type.ndim)
        em = _Emitter(self.plan, self.names, alg, {s})
        iv = em.value(ind, idx[axis:axis + k])
        if ind.type.dtype != int64:
            iv = Cast(int64, iv)
        cond = alg.in_range(iv, shape[axis])
        target = idx[:axis] + (where(cond, iv, ZERO),) + idx[axis + k:]
        value = where(cond, em.value(src, idx), scalar(0, s.type.dtype))
        store = Store(buf, alg.flat(target, shape), value, accumulate=True)
        self._emit("scatter_add", src.type.shape, [store], parallel=False)


def split_concat(group: Group) -> bool:
    """Whether a group storing only a concat is lowered as one kernel per input.

    One kernel over the whole concat chooses the input per element through a chain of
    selects, and vector code evaluates every branch: that pays when the inputs are few plain
    reads (one masked load each), not for a stack of many steps' values or for computed
    inputs, which would be computed over the whole concat."""
    if group.kind != "elementwise" or len(group.roots) != 1 or group.roots[0].op != "concat":
        return False
    c = group.roots[0]
    computed = any(n.op not in MOVEMENT_OPS for n in group.nodes)
    return len(c.inputs) >= CONCAT_SPLIT_INPUTS or computed


def _contraction(alg: IndexAlgebra, r: Node, la: Expr, lb: Expr,
                 domain: tuple[int, ...]) -> dict | None:
    """The matmul as strided loads, for generators with a fast GEMM (None if it is not)."""
    if not all(isinstance(x, Load) and x.mask is None for x in (la, lb)):
        return None
    fa, fb = alg.affine(la.index), alg.affine(lb.index)
    if fa is None or fb is None or not is_zero(fa[1]) or not is_zero(fb[1]):
        return None
    nd = len(domain)
    b_axis, m, n, k = (0 if nd == 3 else -1), nd - 2, nd - 1, nd
    if not set(fa[0]) <= {b_axis, m, k} or not set(fb[0]) <= {b_axis, k, n}:
        return None
    a_shape, b_shape = r.inputs[0].type.shape, r.inputs[1].type.shape
    return {"a": la.buffer, "b": lb.buffer, "batch": prod(a_shape[:-2]), "m": a_shape[-2],
            "n": b_shape[-1], "k": a_shape[-1],
            "a_strides": (fa[0].get(b_axis, 0), fa[0].get(m, 0), fa[0].get(k, 0)),
            "b_strides": (fb[0].get(b_axis, 0), fb[0].get(k, 0), fb[0].get(n, 0))}


def _output_copies(graph: Graph, names: dict[Node, str], first: int) -> list[Kernel]:
    """Copy kernels for outputs that are inputs, constants, or repeats of an earlier output."""
    kernels = []
    seen: dict[Node, int] = {}
    for i, o in enumerate(graph.outputs):
        if o in seen or is_buffer(o):
            src = names[o] if is_buffer(o) else f"out{seen[o]}"
            dst = f"out{i}"
            t = o.type
            seen.setdefault(o, i)
            if empty(t.shape):
                continue
            domain = (t.numel,) if t.shape else ()
            index = Var(0) if t.shape else ZERO
            load = Load(src, index, t.dtype)
            kernels.append(Kernel(f"k{first + len(kernels)}_copy",
                                  (BufferArg(src, t.dtype, t.numel),),
                                  (BufferArg(dst, t.dtype, t.numel),), domain,
                                  (Store(dst, index, load),),
                                  comment=f"copy {src} to output {i}"))
        else:
            seen[o] = i
    return kernels


# ---- expression walks ---------------------------------------------------------------------


def walk(exprs: Iterable[Expr]) -> Iterable[Expr]:
    """Every sub-expression once (by identity), so shared subtrees are not walked again."""
    stack = list(exprs)
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        children = [c for c in vars(e).values() if hasattr(c, "__dataclass_fields__")]
        stack.extend(reversed(children))


def _loads(exprs: Iterable[Expr]) -> list[Load]:
    return [e for e in walk(exprs) if isinstance(e, Load)]


def _has_divmod(stores: Sequence[Store]) -> bool:
    """Whether an index (a store's, a load's or a load's mask) divides: the flat domain then
    costs index arithmetic.  A value's own floor division (the `floordiv` primitive) does not
    count."""
    indices = [s.index for s in stores]
    indices += [x for ld in _loads([s.value for s in stores]) for x in (ld.index, ld.mask)
                if x is not None]
    return any(isinstance(e, Binary) and e.op in ("idiv", "mod") for e in walk(indices))


def describe(nodes: Iterable[Node]) -> str:
    """A kernel comment: the ops it computes (in graph order) and the user source lines
    (file:line) they came from."""
    nodes = list(nodes)
    ops = [n.op for n in nodes]
    if len(ops) > 24:
        ops = ops[:24] + [f"... {len(ops) - 24} more"]
    sources = list(dict.fromkeys(n.source for n in nodes if n.source))
    text = " + ".join(ops) if ops else "copy"
    return f"{text} ({', '.join(sources)})" if sources else text
