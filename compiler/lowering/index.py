"""The index-expression algebra of lowering: views folded into simplified int64 expressions.

Lowering never copies data for a view.  A value is computed "at an index": a tuple of int64
kernel expressions, one per axis.  A movement op maps its output index to its input's index
(`movement_index`), possibly with a condition (pad, concat) under which the input is read at
all; a buffer turns an index into a flat row-major offset (`IndexAlgebra.flat`).

To keep the generated index arithmetic as cheap as the view it came from, every expression is
built through `IndexAlgebra`, which keeps sums in a canonical linear form over the loop
variables (whose extents it knows) and simplifies floor division and modulo with them: a
reshape of a contiguous buffer folds back to the plain flat index, a permuted one to strides,
and only a genuinely non-contiguous reshape keeps an `idiv`/`mod`.  The rules are the
integer identities

    (q*c + r) // c = q + r // c,  (q*c + r) % c = r % c        (q integral)
    r // c = lo // c and r % c = r - c*(lo // c)  when lo // c == hi // c (range of r)
    (g*B + s) // (g*c) = B // c,  (g*B + s) % (g*c) = g*(B % c) + s   when 0 <= s < g
    c*(X // c) + X % c = X,  a*((X // a) % b) + X % a = X % (a*b)

Shape-polymorphic graphs (docs/compiler/dynamic-shapes.md): an extent, stride, offset or
divisor may be a dynamic size (`compiler.symbolic.Dim`).  Linear forms then have polynomial
coefficients, written into expressions as `Sym`s (`kernel.ir.size_expr`); ranges have
polynomial or infinite ends; and a rule fires only where the symbols' ranges prove its
condition for every value (`lowering.sizes`), never by comparing sizes, which would guard.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from math import gcd, prod

from ...runtime.sizes import Size
from ..graph.ir import Node
from ..kernel.affine import affine
from ..kernel.ir import Binary, Const, Expr, Sym, Var, Where, format_expr, size_expr
from ..symbolic import DynamicSizeError, hint
from ..types import bool_, int64, same_shape
from .sizes import (
    Bound,
    badd,
    bmax,
    bmin,
    bounds,
    bscale,
    empty,
    exact_div,
    exact_floor,
    floor_bounds,
    floor_by_size,
    is_dynamic,
    is_one,
    is_zero,
    provably_le,
    provably_lt,
    same_size,
    sign,
    size_const,
    split,
    symbol_size,
)

TRUE = Const(True, bool_)
FALSE = Const(False, bool_)
ZERO = Const(0, int64)

Index = tuple[Expr, ...]
Range = tuple[Bound, Bound]
# one input read by a movement op: (operand position, index into that operand, condition or None)
Branch = tuple[int, Index, Expr | None]

MOVEMENT_OPS = ("reshape", "permute", "expand", "slice", "pad", "concat", "unfold")


def const(value: int) -> Const:
    """An int64 constant."""
    return Const(int(value), int64)


def divisor(e: Expr, op: str) -> int | None:
    """The constant positive divisor of `e` when it is an `op` ("idiv" or "mod") by one, the
    only kind index arithmetic makes; None for anything else (a value's own floor division,
    whose divisor may be computed, zero or negative, is then an opaque atom)."""
    if isinstance(e, Binary) and e.op == op and isinstance(e.b, Const) \
            and not isinstance(e.b.value, bool) and int(e.b.value) > 0:
        return int(e.b.value)
    return None


def _atom_key(e: Expr) -> tuple:
    if isinstance(e, Var):
        return (0, e.axis, "")
    return (1, 0, format_expr(e))


class IndexAlgebra:
    """Builds simplified int64 index expressions over loop variables of known extents.

    `sizes[i]` is the extent of `Var(i)` (the kernel's domain, then its reduction axes).  An
    extent, a stride or a coefficient may be a dynamic size (`compiler.symbolic.Dim`): it
    appears in expressions as `Sym`s, linear forms keep it as a polynomial coefficient, and
    a simplification that needs a fact about it fires only where the symbols' ranges (in
    the active `ShapeEnv`) prove that fact for every value.
    """

    def __init__(self, sizes: Sequence[Size]) -> None:
        self.sizes = tuple(s if is_dynamic(s) else int(s) for s in sizes)
        self._ranges: dict[Expr, Range | None] = {}
        self._forms: dict[Expr, tuple[dict[Expr, Size], Size]] = {}

    # ---- linear forms ---------------------------------------------------------------------

    def _lin(self, e: Expr) -> tuple[dict[Expr, Size], Size]:
        """`e` as ({atom: coefficient}, constant); atoms are the non-affine parts."""
        form = self._forms.get(e)
        if form is None:
            form = self._forms[e] = self._linear(e)
        return dict(form[0]), form[1]

    def _linear(self, e: Expr) -> tuple[dict[Expr, Size], Size]:
        if isinstance(e, Const) and not isinstance(e.value, bool):
            return {}, int(e.value)
        if isinstance(e, Sym):
            return {}, symbol_size(e.name)
        if isinstance(e, Var) and is_one(self.sizes[e.axis]):
            return {}, 0
        if isinstance(e, Binary) and e.op in ("add", "sub"):
            ta, ca = self._lin(e.a)
            tb, cb = self._lin(e.b)
            sign = 1 if e.op == "add" else -1
            terms = dict(ta)
            for atom, k in tb.items():
                terms[atom] = terms.get(atom, 0) + sign * k
            return terms, ca + sign * cb
        if isinstance(e, Binary) and e.op == "mul":
            for x, y in ((e.a, e.b), (e.b, e.a)):
                k = self._size_of(y)
                if k is not None:
                    tx, cx = self._lin(x)
                    return {a: v * k for a, v in tx.items()}, cx * k
        return {e: 1}, 0

    def _size_of(self, e: Expr) -> Size | None:
        """The size an atom-free expression is (a constant, or a polynomial of `Sym`s)."""
        if isinstance(e, Const):
            return None if isinstance(e.value, bool) else int(e.value)
        if not isinstance(e, (Sym, Binary)) or not _only_sizes(e):
            return None
        terms, c = self._lin(e)
        return None if terms else c

    def _divisor(self, e: Expr, op: str) -> Size | None:
        """`divisor`, also for a dynamic divisor that is positive for every value."""
        if not (isinstance(e, Binary) and e.op == op):
            return None
        c = self._size_of(e.b)
        if c is None or (isinstance(c, int) and c <= 0) or (is_dynamic(c) and bounds(c)[0] < 1):
            return None
        return c

    def _recombine(self, terms: dict[Expr, Size]) -> Size:
        """Fold c*(X//c) + X%c into X and a*((X//a)%b) + X%a into X%(a*b), in place.

        Returns the constant the folded terms contribute."""
        extra: Size = 0
        changed = True
        while changed:
            changed = False
            for atom, k in list(terms.items()):
                c = self._divisor(atom, "mod")
                if c is None or is_zero(k):
                    continue
                x = atom.a
                partner = Binary("idiv", x, size_const(c))
                if partner in terms and same_size(terms[partner], k * c):
                    del terms[atom], terms[partner]
                    tx, cx = self._lin(x)
                    for a, v in tx.items():
                        terms[a] = terms.get(a, 0) + k * v
                    extra = extra + k * cx
                    changed = True
                    break
                a_ = self._divisor(x, "idiv")
                ka = None if a_ is None else exact_div(k, a_)
                if ka is not None:
                    inner = Binary("mod", x.a, size_const(a_))
                    if inner in terms and same_size(terms[inner], ka):
                        del terms[atom], terms[inner]
                        merged = self.mod(x.a, a_ * c)
                        tm, cm = self._lin(merged)
                        for a, v in tm.items():
                            terms[a] = terms.get(a, 0) + ka * v
                        extra = extra + ka * cm
                        changed = True
                        break
            for atom in [a for a, v in terms.items() if is_zero(v)]:
                del terms[atom]
        return extra

    def _build(self, terms: dict[Expr, Size], c: Size) -> Expr:
        """The canonical expression of a linear form: atoms in a fixed order, constant last."""
        terms = {a: k for a, k in terms.items() if not is_zero(k)}
        c = c + self._recombine(terms)
        expr: Expr | None = None
        for atom in sorted(terms, key=_atom_key):
            k = terms[atom]
            if is_dynamic(k):
                term = Binary("mul", atom, size_expr(k))
                expr = term if expr is None else Binary("add", expr, term)
                continue
            mag = abs(k)
            term = atom if mag == 1 else Binary("mul", atom, const(mag))
            if expr is None:
                expr = term if k > 0 else Binary("mul", atom, const(k))
            else:
                expr = Binary("add" if k > 0 else "sub", expr, term)
        if is_dynamic(c):
            return size_expr(c) if expr is None else Binary("add", expr, size_expr(c))
        if expr is None:
            return const(c)
        if c:
            expr = Binary("add" if c > 0 else "sub", expr, const(abs(c)))
        return expr

    # ---- ranges ---------------------------------------------------------------------------

    def range(self, e: Expr) -> Range | None:
        """Inclusive (lo, hi) bounds of an index expression, or None when unknown (an end
        may be a dynamic size, or infinite)."""
        if e in self._ranges:
            return self._ranges[e]
        r = self._range(e)
        self._ranges[e] = r
        return r

    def _range(self, e: Expr) -> Range | None:
        if isinstance(e, Const):
            return int(e.value), int(e.value)
        if isinstance(e, Sym):
            s = symbol_size(e.name)
            return s, s
        if isinstance(e, Var):
            return 0, self.sizes[e.axis] - 1
        if isinstance(e, Binary):
            if e.op in ("add", "sub") or (e.op == "mul" and self._size_of(e.b) is not None):
                terms, c = self._lin(e)
                return self._lin_range(terms, c)
            c = self._divisor(e, e.op) if e.op in ("idiv", "mod") else None
            if c is not None:
                return self._divmod_range(e.op, self.range(e.a), c)
        if isinstance(e, Where):
            ra, rb = self.range(e.a), self.range(e.b)
            if ra is not None and rb is not None:
                return bmin(ra[0], rb[0]), bmax(ra[1], rb[1])
        return None

    def _divmod_range(self, op: str, r: Range | None, c: Size) -> Range | None:
        if is_dynamic(c):
            inside = r is not None and self._within(r, c)
            if op == "idiv":
                if r is None or not provably_le(0, r[0]):
                    return None
                if inside:
                    return 0, 0
                lo, hi = floor_by_size(r[0], c), floor_by_size(r[1], c)
                return (0 if lo is None else lo), (r[1] if hi is None else hi)
            return r if inside else (0, c - 1)
        if op == "idiv":
            return None if r is None else (floor_bounds(r[0], c)[0], floor_bounds(r[1], c)[1])
        q = None if r is None else exact_floor(r[0], c)
        if q is not None and same_size(q, exact_floor(r[1], c)):
            return r[0] - c * q, r[1] - c * q
        return 0, c - 1

    @staticmethod
    def _within(r: Range, c: Size) -> bool:
        """Whether the range lies in [0, c) for every value of the symbols."""
        return provably_le(0, r[0]) and provably_lt(r[1], c)

    def _lin_range(self, terms: dict[Expr, Size], c: Size) -> Range | None:
        lo: Bound = c
        hi: Bound = c
        for atom, k in terms.items():
            r = self.range(atom)
            s = sign(k)
            if r is None or s is None:
                return None
            a, b = bscale(r[0], k), bscale(r[1], k)
            if s < 0:
                a, b = b, a
            lo = badd(lo, a)
            hi = badd(hi, b)
        return lo, hi

    # ---- arithmetic -----------------------------------------------------------------------

    def add(self, *es: Expr) -> Expr:
        """The canonical sum of index expressions."""
        terms: dict[Expr, Size] = {}
        c: Size = 0
        for e in es:
            t, k = self._lin(e)
            for atom, v in t.items():
                terms[atom] = terms.get(atom, 0) + v
            c = c + k
        return self._build(terms, c)

    def sub(self, a: Expr, b: Expr) -> Expr:
        """a - b, canonical."""
        return self.add(a, self.mul(b, -1))

    def mul(self, e: Expr, k: Size) -> Expr:
        """e * k for an integer constant (or dynamic size) k, canonical."""
        terms, c = self._lin(e)
        return self._build({a: v * k for a, v in terms.items()}, c * k)

    def _parts(self, e: Expr, c: Size) -> tuple[dict, Size, dict, Size]:
        """`e` as c*(q + qc) + (r + rc): the terms whose coefficients c divides, and the rest."""
        terms, k0 = self._lin(e)
        q: dict[Expr, Size] = {}
        r: dict[Expr, Size] = {}
        for a, k in terms.items():
            kq = exact_div(k, c)
            if kq is None:
                r[a] = k
            else:
                q[a] = kq
        qc, rc = split(k0, c)
        return q, qc, r, rc

    def idiv(self, e: Expr, c: Size) -> Expr:
        """Floor division by a positive constant (or dynamic size), simplified."""
        if is_one(c):
            return e
        _check_divisor(c)
        q, qc, r, rc = self._parts(e, c)
        return self.add(self._build(q, qc), self._idiv_rest(r, rc, c))

    def _idiv_rest(self, r: dict[Expr, Size], rc: Size, c: Size) -> Expr:
        rng = self._lin_range(r, rc)
        floor = floor_by_size if is_dynamic(c) else exact_floor
        q = None if rng is None else floor(rng[0], c)
        if q is not None and same_size(q, floor(rng[1], c)):
            return size_const(q)
        split_ = self._gcd_split(r, rc, c)
        if split_ is not None:
            g, big, bc, _, _ = split_
            return self.idiv(self._build(big, bc), exact_div(c, g))
        if is_dynamic(c):
            return Binary("idiv", self._build(r, rc), size_expr(c))
        if is_zero(rc) and len(r) == 1:
            (atom, k), = r.items()
            if is_one(k) and divisor(atom, "idiv") is not None:
                return self.idiv(atom.a, divisor(atom, "idiv") * c)
        return Binary("idiv", self._build(r, rc), const(c))

    def _gcd_split(self, r: dict[Expr, Size], rc: Size, c: Size) -> tuple | None:
        """`r + rc` as `g * (big + bc) + (small + sc)` with `small + sc` in [0, g), for the
        largest such divisor g > 1 of c (of every coefficient of a dynamic c): then x // c
        and x % c only need `big + bc`.  With dynamic coefficients g is one of them that
        divides c (a row-major flat index divided by a dynamic row count times a constant:
        `(i * s*s + j * s + k) // (4 * s*s)` is `i // 4`)."""
        if is_dynamic(rc) or any(is_dynamic(k) for k in r.values()):
            return self._size_split(r, rc, c)
        content = c if isinstance(c, int) else gcd(*(k for _, k in c.terms))
        for g in sorted({gcd(content, k) for k in r.values()} - {1}, reverse=True):
            big = {a: k // g for a, k in r.items() if k % g == 0}
            small = {a: k for a, k in r.items() if k % g != 0}
            bc, sc = divmod(rc, g)
            srng = self._lin_range(small, sc)
            if srng is not None and provably_le(0, srng[0]) and provably_lt(srng[1], g):
                return g, big, bc, small, sc
        return None

    def _size_split(self, r: dict[Expr, Size], rc: Size, c: Size) -> tuple | None:
        """`_gcd_split` where g is a dynamic coefficient of `r` dividing c, the largest
        (by its least value) for which the rest provably lies in [0, g)."""
        found = {}
        for k in r.values():
            if is_dynamic(k) and exact_div(c, k) is not None:
                found.setdefault(str(k), k)
        for g in sorted(found.values(), key=lambda g: -bounds(g)[0]):
            big = {a: exact_div(k, g) for a, k in r.items() if exact_div(k, g) is not None}
            small = {a: k for a, k in r.items() if a not in big}
            bc, sc = split(rc, g)
            srng = self._lin_range(small, sc)
            if srng is not None and provably_le(0, srng[0]) and provably_lt(srng[1], g):
                return g, big, bc, small, sc
        return None

    def mod(self, e: Expr, c: Size) -> Expr:
        """Floor modulo by a positive constant (or dynamic size), simplified."""
        if is_one(c):
            return ZERO
        _check_divisor(c)
        _, _, r, rc = self._parts(e, c)
        if not r and not is_dynamic(rc):
            return const(rc % c) if isinstance(c, int) else (
                const(rc) if 0 <= rc and provably_lt(rc, c) else
                Binary("mod", const(rc), size_expr(c)))
        rng = self._lin_range(r, rc)
        floor = floor_by_size if is_dynamic(c) else exact_floor
        q = None if rng is None else floor(rng[0], c)
        if q is not None and same_size(q, floor(rng[1], c)):
            return self._build(r, rc - c * q)
        split_ = self._gcd_split(r, rc, c)
        if split_ is not None:
            g, big, bc, small, sc = split_
            return self.add(self.mul(self.mod(self._build(big, bc), exact_div(c, g)), g),
                            self._build(small, sc))
        if is_dynamic(c):
            return Binary("mod", self._build(r, rc), size_expr(c))
        if is_zero(rc) and len(r) == 1:
            (atom, k), = r.items()
            if is_one(k) and divisor(atom, "mod") is not None \
                    and divisor(atom, "mod") % c == 0:
                return self.mod(atom.a, c)
        return Binary("mod", self._build(r, rc), const(c))

    # ---- layouts --------------------------------------------------------------------------

    def flat(self, idx: Sequence[Expr], shape: Sequence[Size]) -> Expr:
        """The row-major offset of `idx` in a contiguous array of `shape`.

        An axis of size 1 adds nothing: any in-bounds index on it is 0 (and an access that is
        out of bounds there is masked off)."""
        terms = []
        stride: Size = 1
        for e, n in zip(reversed(tuple(idx)), reversed(tuple(shape))):
            if not is_one(n):
                terms.append(self.mul(e, stride))
            stride = stride * n
        return self.add(*terms) if terms else ZERO

    def unflatten(self, f: Expr, shape: Sequence[Size]) -> Index:
        """The index of row-major offset `f` in an array of `shape` (the inverse of `flat`)."""
        shape = tuple(shape)
        if empty(shape):
            return (ZERO,) * len(shape)
        strides: list[Size] = []
        stride: Size = 1
        for n in reversed(shape):
            strides.append(stride)
            stride = stride * n
        return tuple(self.mod(self.idiv(f, s), n) for s, n in zip(reversed(strides), shape))

    def affine(self, e: Expr) -> tuple[dict[int, Size], Size] | None:
        """`e` as ({axis: coefficient}, offset) when it is affine in the loop variables (an
        axis of extent 1 contributes nothing: its variable is 0)."""
        form = affine(e)
        if form is None:
            return None
        return ({a: k for a, k in form.items()
                 if a >= 0 and not is_zero(k) and not is_one(self.sizes[a])},
                form.get(-1, 0))

    # ---- conditions -----------------------------------------------------------------------

    def lt(self, e: Expr, n: Size) -> Expr:
        """e < n, decided statically when the range of e allows."""
        r = self.range(e)
        if r is not None and provably_lt(r[1], n):
            return TRUE
        if r is not None and provably_le(n, r[0]):
            return FALSE
        return Binary("lt", e, size_const(n))

    def ge(self, e: Expr, n: Size) -> Expr:
        """e >= n, decided statically when the range of e allows."""
        r = self.range(e)
        if r is not None and provably_le(n, r[0]):
            return TRUE
        if r is not None and provably_lt(r[1], n):
            return FALSE
        return Binary("ge", e, size_const(n))

    def divisible(self, e: Expr, s: int) -> Expr:
        """e % s == 0."""
        m = self.mod(e, s)
        if isinstance(m, Const):
            return TRUE if m.value == 0 else FALSE
        return Binary("eq", m, ZERO)

    def in_range(self, e: Expr, n: Size) -> Expr:
        """0 <= e < n."""
        return self.all_of(self.ge(e, 0), self.lt(e, n))

    @staticmethod
    def all_of(*conds: Expr | None) -> Expr:
        """The conjunction of conditions (None means true), constant-folded."""
        out: Expr = TRUE
        for c in conds:
            if c is None or c == TRUE:
                continue
            if c == FALSE:
                return FALSE
            out = c if out == TRUE else Binary("and", out, c)
        return out


def _only_sizes(e: Expr) -> bool:
    """Whether `e` is built of constants and `Sym`s by add, sub and mul (a size)."""
    if isinstance(e, Sym):
        return True
    if isinstance(e, Const):
        return not isinstance(e.value, bool) and isinstance(e.value, int)
    return isinstance(e, Binary) and e.op in ("add", "sub", "mul") \
        and _only_sizes(e.a) and _only_sizes(e.b)


def _check_divisor(c: Size) -> None:
    if isinstance(c, int):
        return
    if bounds(c)[0] < 1:
        raise DynamicSizeError(f"index arithmetic divides by the dynamic size {c}, which may "
                               "be 0")


# ---- movement ops as index maps -----------------------------------------------------------


def _reshape_blocks(src: tuple[Size, ...],
                    dst: tuple[Size, ...]) -> list[tuple[int, int, int, int]]:
    """Split a reshape into runs of axes with equal products: (src lo, src hi, dst lo, dst hi).

    Products are equal when they are the same size (structurally, for dynamic ones); which
    side grows next is decided by the sizes' hints (a heuristic: any split is correct)."""
    blocks = []
    i = j = 0
    while i < len(src) or j < len(dst):
        i0, j0 = i, j
        ps: Size = 1
        pd: Size = 1
        if i < len(src):
            ps = ps * src[i]
            i += 1
        if j < len(dst):
            pd = pd * dst[j]
            j += 1
        while not same_size(ps, pd):
            if hint(ps) < hint(pd) and i < len(src):
                ps = ps * src[i]
                i += 1
            elif j < len(dst):
                pd = pd * dst[j]
                j += 1
            else:
                return [(0, len(src), 0, len(dst))]
        while i < len(src) and is_one(src[i]) and (j >= len(dst) or not is_one(dst[j])):
            i += 1
        while j < len(dst) and is_one(dst[j]) and (i >= len(src) or not is_one(src[i])):
            j += 1
        blocks.append((i0, i, j0, j))
    return blocks


def reshape_index(alg: IndexAlgebra, idx: Index, src: tuple[Size, ...],
                  dst: tuple[Size, ...]) -> Index:
    """The index into a reshape's input (shape `src`) of output index `idx` (shape `dst`)."""
    if same_shape(src, dst):
        return idx
    if empty(src):
        return (ZERO,) * len(src)
    out: list[Expr] = []
    for i0, i1, j0, j1 in _reshape_blocks(src, dst):
        if i1 - i0 == 1 and j1 - j0 == 1:
            out.append(idx[j0])
            continue
        f = alg.flat(idx[j0:j1], dst[j0:j1])
        out.extend(alg.unflatten(f, src[i0:i1]))
    return tuple(out)


def movement_index(alg: IndexAlgebra, node: Node, idx: Index) -> list[Branch]:
    """The inputs a movement node reads at output index `idx`.

    Every op but `concat` reads one operand; `pad` and `concat` attach a condition under which
    the branch is taken (pad's fill value, in `node.attr["value"]`, applies elsewhere).
    """
    op, a = node.op, node.attr
    x_shape = node.inputs[0].type.shape
    if op == "reshape":
        return [(0, reshape_index(alg, idx, x_shape, node.type.shape), None)]
    if op == "permute":
        src: list[Expr] = [ZERO] * len(idx)
        for i, p in enumerate(a["perm"]):
            src[p] = idx[i]
        return [(0, tuple(src), None)]
    if op == "expand":
        return [(0, tuple(ZERO if is_one(d) else e for e, d in zip(idx, x_shape)), None)]
    if op == "slice":
        return [(0, tuple(alg.add(alg.mul(e, st), size_const(lo))
                          for e, lo, st in zip(idx, a["starts"], a["steps"])), None)]
    if op == "pad":
        return [_pad_branch(alg, idx, x_shape, a["lo"], a["interior"])]
    if op == "concat":
        return _concat_branches(alg, idx, node, a["axis"])
    if op == "unfold":
        d = len(a["kernel"])
        taps, wins = idx[2:2 + d], idx[2 + d:]
        spatial = tuple(alg.add(alg.mul(o, st), alg.mul(t, dl))
                        for t, o, st, dl in zip(taps, wins, a["stride"], a["dilation"]))
        return [(0, tuple(idx[:2]) + spatial, None)]
    raise ValueError(f"movement_index: {op} is not a movement op")


def _pad_branch(alg: IndexAlgebra, idx: Index, shape, lo, interior) -> Branch:
    src = []
    conds = []
    for e, d, low, inner in zip(idx, shape, lo, interior):
        j = e if is_zero(low) else alg.sub(e, size_const(low))
        if inner:
            s = inner + 1
            i = alg.idiv(j, s)
            conds += [alg.ge(j, 0), alg.divisible(j, s), alg.lt(i, d)]
        else:
            i = j
            conds += [alg.ge(j, 0), alg.lt(j, d)]
        src.append(i)
    cond = alg.all_of(*conds)
    return 0, tuple(src), None if cond == TRUE else cond


def _concat_branches(alg: IndexAlgebra, idx: Index, node: Node, axis: int) -> list[Branch]:
    out = []
    offset = 0
    for k, x in enumerate(node.inputs):
        size = x.type.shape[axis]
        i = idx[axis] if is_zero(offset) else alg.sub(idx[axis], size_const(offset))
        cond = alg.all_of(alg.ge(i, 0), alg.lt(i, size))
        offset = offset + size
        if is_zero(size) or cond == FALSE:
            continue
        out.append((k, idx[:axis] + (i,) + idx[axis + 1:], None if cond == TRUE else cond))
    return out


def fold_index(alg: IndexAlgebra, idx: Index, taps: Index,
               node: Node) -> tuple[Index, Expr | None]:
    """For fold: the index into its input (N, C, *kernel, *windows) of output position `idx`
    (N, C, *spatial) at kernel tap `taps`, and the condition that such a window exists."""
    a = node.attr
    wins = node.inputs[0].type.shape[2 + len(a["kernel"]):]
    src = []
    conds = []
    for s, t, st, dl, n in zip(idx[2:], taps, a["stride"], a["dilation"], wins):
        j = alg.sub(s, alg.mul(t, dl))
        o = alg.idiv(j, st)
        conds += [alg.ge(j, 0), alg.divisible(j, st), alg.lt(o, n)]
        src.append(o)
    cond = alg.all_of(*conds)
    return tuple(idx[:2]) + tuple(taps) + tuple(src), None if cond == TRUE else cond


def disjoint_windows(node: Node) -> bool:
    """Whether a fold's windows never overlap along any spatial axis (stride at least the
    window's extent), so each output position takes at most one tap."""
    a = node.attr
    return all(st >= (k - 1) * dl + 1
               for k, st, dl in zip(a["kernel"], a["stride"], a["dilation"]))


def disjoint_fold_index(alg: IndexAlgebra, idx: Index,
                        node: Node) -> tuple[Index, Expr | None]:
    """For a fold with `disjoint_windows`: the index into its input (N, C, *kernel, *windows)
    of the one tap output position `idx` takes, and the condition that it exists."""
    a = node.attr
    wins = node.inputs[0].type.shape[2 + len(a["kernel"]):]
    taps, src, conds = [], [], []
    for s, k, st, dl, n in zip(idx[2:], a["kernel"], a["stride"], a["dilation"], wins):
        o, j = alg.idiv(s, st), alg.mod(s, st)
        t = alg.idiv(j, dl)
        conds += [alg.divisible(j, dl), alg.lt(t, k), alg.lt(o, n)]
        taps.append(t)
        src.append(o)
    cond = alg.all_of(*conds)
    return tuple(idx[:2]) + tuple(taps) + tuple(src), None if cond == TRUE else cond


def strided_view(node: Node, is_buffer: Callable[[Node], bool], alg: IndexAlgebra,
                 idx: Index) -> tuple[Node, dict[int, int], int] | None:
    """Follow movement ops down from `node` (read at `idx`) to the first node `is_buffer`
    accepts, and return (that node, {axis: stride}, offset) when the walk makes a plain
    strided read of it; None when a view needs a mask or an index that is not affine, or
    a computed value is reached first."""
    while not is_buffer(node):
        if node.op not in MOVEMENT_OPS:
            return None
        branches = movement_index(alg, node, idx)
        if len(branches) != 1 or branches[0][2] is not None:
            return None
        pos, idx, _ = branches[0]
        node = node.inputs[pos]
    form = alg.affine(alg.flat(idx, node.type.shape))
    if form is None:
        return None
    return node, form[0], form[1]




def matmul_domain(node: Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A matmul kernel's (domain, reduce): (M, N) or, with batch axes flattened into one,
    (B, M, N); the reduction is over (K,).  An empty batch (B = 0) keeps its axis, so the
    domain is empty too."""
    a, b = node.inputs[0].type.shape, node.inputs[1].type.shape
    batch = prod(a[:-2])
    mn = (a[-2], b[-1])
    return ((batch,) + mn if not is_one(batch) else mn), (a[-1],)


def matmul_operand_indices(alg: IndexAlgebra, node: Node) -> tuple[Index, Index]:
    """The indices at which a matmul kernel reads its two operands."""
    a_shape = node.inputs[0].type.shape
    batch_shape = a_shape[:-2]
    domain, _ = matmul_domain(node)
    nd = len(domain)
    if nd == 3:
        batch = alg.unflatten(Var(0), batch_shape)
    else:
        batch = (ZERO,) * len(batch_shape)
    m, n, k = Var(nd - 2), Var(nd - 1), Var(nd)
    return batch + (m, k), batch + (k, n)
