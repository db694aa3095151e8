"""Matrix products with torch.matmul's rules for 1-D operands and batch broadcasting."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurenix.compiler.ops import REGISTRY
from neurenix.compiler.types import bool_

from . import elementwise as ew
from .dispatch import _quietly, apply
from .elementwise import as_tensor, broadcast_shapes, result_dtype
from .shapes import broadcast_to, eager_result, permute, reshape
from .state import read_trace
from .tensor import Tensor

_MATMUL = REGISTRY["matmul"]


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b: vectors are promoted to matrices and back; batch dimensions broadcast."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        # the fast path (issue 15): two host matrices (or stacks of one batch shape) of one
        # numeric dtype that fit, outside a trace, are the matmul primitive itself
        da, db = a._data, b._data
        if type(da) is np.ndarray and type(db) is np.ndarray and a._dtype is b._dtype \
                and a._dtype.category:
            n = da.ndim
            if n >= 2 and db.ndim == n and da.shape[-1] == db.shape[-2] \
                    and (n == 2 or da.shape[:-2] == db.shape[:-2]) and read_trace() is None:
                return eager_result(_MATMUL, (a, b), {}, _quietly(_MATMUL.impl, (da, db), {}),
                                    a)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected two Tensors, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both arguments need at least 1 dimension, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: expected both operands to have the same dtype, got "
                        f"{a.dtype.name} and {b.dtype.name}")
    dt = result_dtype(a, b)
    a, b = as_tensor(a, dt), as_tensor(b, dt)
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                         f"multiplied ({a2.shape[-2]}x{a2.shape[-1]} and "
                         f"{b2.shape[-2]}x{b2.shape[-1]})")
    batch = broadcast_shapes(a2.shape[:-2], b2.shape[:-2], op="matmul")
    a3 = broadcast_to(a2, batch + a2.shape[-2:])
    b3 = broadcast_to(b2, batch + b2.shape[-2:])
    out = apply("matmul", a3, b3)
    rows = (a2.shape[-2],) if a.ndim > 1 else ()
    cols = (b2.shape[-1],) if b.ndim > 1 else ()
    shape = batch + rows + cols
    return reshape(out, shape)


def mm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"mm: expected 2-D tensors, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return matmul(a, b)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"bmm: expected 3-D tensors with the same batch size, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return matmul(a, b)


def dot(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"dot: expected 1-D tensors, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return matmul(a, b)


def _einsum_parse(equation: str, operands: Sequence[Tensor]) -> tuple[list[list[str]], list[str]]:
    """Each operand's labels (ellipsis dims as private labels, right-aligned so they
    broadcast) and the output's labels; ValueError naming what does not fit."""
    if not isinstance(equation, str):
        raise TypeError(f"einsum: expected an equation string, got {type(equation).__name__}")
    eq_ = equation.replace(" ", "")
    lhs, arrow, rhs = eq_.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum: the equation {equation!r} names {len(terms)} operands, got "
                         f"{len(operands)}")
    ell_ndim = 0
    labels: list[list[str]] = []
    for term, t in zip(terms, operands):
        if not isinstance(t, Tensor):
            raise TypeError(f"einsum: expected Tensor operands, got {type(t).__name__}")
        head, dots, tail = term.partition("...")
        for ch in head + tail:
            if not ch.isalpha():
                raise ValueError(f"einsum: invalid subscript {ch!r} in {equation!r} (letters "
                                 f"and one '...' per operand only)")
        fixed = len(head) + len(tail)
        n_ell = t.ndim - fixed
        if n_ell < 0 or (not dots and n_ell != 0):
            raise ValueError(f"einsum: the subscripts {term!r} do not match an operand of "
                             f"{t.ndim} dimensions (shape {tuple(t.shape)})")
        ell_ndim = max(ell_ndim, n_ell)
        labels.append(list(head) + [f".{ell_ndim - n_ell + i}" for i in range(n_ell)]
                      + list(tail))
    ell = [f".{i}" for i in range(ell_ndim)]
    if arrow:
        head, dots, tail = rhs.partition("...")
        out = list(head) + (ell if dots else []) + list(tail)
        seen = [c for c in labels for c in c]
        for ch in head + tail:
            if ch not in seen:
                raise ValueError(f"einsum: output subscript {ch!r} of {equation!r} does not "
                                 f"appear in the inputs")
        if len(set(out)) != len(out):
            raise ValueError(f"einsum: output subscripts of {equation!r} repeat a letter")
    else:
        counts: dict[str, int] = {}
        for term in labels:
            for ch in term:
                counts[ch] = counts.get(ch, 0) + 1
        out = ell + sorted(ch for ch, n in counts.items() if n == 1 and not ch.startswith("."))
    return labels, out


def _diagonal(t: Tensor, labels: list[str]) -> tuple[Tensor, list[str]]:
    """t with every repeated label reduced to its diagonal (each label once)."""
    while len(set(labels)) != len(labels):
        ch = next(c for c in labels if labels.count(c) > 1)
        i = labels.index(ch)
        j = labels.index(ch, i + 1)
        if t.shape[i] != t.shape[j]:
            raise ValueError(f"einsum: subscript {ch!r} repeated in one operand with sizes "
                             f"{t.shape[i]} and {t.shape[j]}")
        n = t.shape[i]
        shape = [1] * t.ndim
        shape[i], shape[j] = n, n
        on = ew.eq(apply("iota", shape=tuple(shape), axis=i, dtype="int64"),
                   apply("iota", shape=tuple(shape), axis=j, dtype="int64"))
        t = _sum(ew.where(on, t, 0), (j,))
        labels = labels[:j] + labels[j + 1:]
    return t, labels


def einsum(equation: str, *operands: Tensor) -> Tensor:
    """Einstein summation (torch.einsum): 'ij,jk->ik', implicit outputs, '...' broadcasting,
    repeated subscripts (diagonals).  Operands are contracted left to right, each pair as one
    batched matmul of permuted and reshaped operands; labels one operand alone carries are
    summed out first.  Operands must share a dtype."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum: expected at least one operand")
    labels, out = _einsum_parse(equation, operands)
    dtypes = {t.dtype for t in operands}
    if len(dtypes) > 1:
        raise TypeError(f"einsum: expected operands of one dtype, got "
                        f"{', '.join(sorted(d.name for d in dtypes))}")
    if bool_ in dtypes:
        raise TypeError("einsum: expected numeric operands, got bool")
    sizes: dict[str, int] = {}
    for t, ls in zip(operands, labels):
        for ch, n in zip(ls, t.shape):
            prev = sizes.get(ch)
            if prev is None or prev == 1:
                sizes[ch] = n
            elif n not in (1, prev):
                name = "..." if ch.startswith(".") else ch
                raise ValueError(f"einsum: subscript {name!r} has sizes {prev} and {n}, which "
                                 f"do not broadcast")
    items = [_diagonal(t, list(ls)) for t, ls in zip(operands, labels)]
    current, cur = items[0]
    for k in range(1, len(items) + 1):
        later = set(out)
        for _, ls in items[k:]:
            later |= set(ls)
        nxt = items[k] if k < len(items) else None
        other = set(nxt[1]) if nxt is not None else set()
        alone = [i for i, ch in enumerate(cur) if ch not in later and ch not in other]
        if alone:
            current = _sum(current, tuple(alone))
            cur = [ch for i, ch in enumerate(cur) if i not in alone]
        if nxt is None:
            break
        current, cur = _contract(current, cur, *nxt, later, sizes)
    perm = tuple(cur.index(ch) for ch in out)
    if perm != tuple(range(len(perm))):
        current = permute(current, perm)
    return current


def _contract(a: Tensor, la: list[str], b: Tensor, lb: list[str], keep: set[str],
              sizes: dict[str, int]) -> tuple[Tensor, list[str]]:
    """a and b multiplied, summing the labels they share that nothing later needs: one
    batched matmul (batch = shared labels kept, then a's, then b's own labels)."""
    lonely_b = [i for i, ch in enumerate(lb) if ch not in keep and ch not in la]
    if lonely_b:
        b = _sum(b, tuple(lonely_b))
        lb = [ch for i, ch in enumerate(lb) if i not in lonely_b]
    batch = [ch for ch in la if ch in lb and ch in keep]
    summed = [ch for ch in la if ch in lb and ch not in keep]
    left = [ch for ch in la if ch not in lb]
    right = [ch for ch in lb if ch not in la]
    a = _arrange(a, la, batch + left + summed, sizes)
    b = _arrange(b, lb, batch + summed + right, sizes)
    nb, nl, ns, nr = (_size(g, sizes) for g in (batch, left, summed, right))
    out = apply("matmul", reshape(a, (nb, nl, ns)), reshape(b, (nb, ns, nr)))
    labels = batch + left + right
    return reshape(out, tuple(sizes[ch] for ch in labels)), labels


def _sum(t: Tensor, axes: tuple[int, ...]) -> Tensor:
    """t summed over `axes`, keeping its dtype."""
    return apply("reduce_sum", t, axes=tuple(sorted(axes)))


def _size(labels: list[str], sizes: dict[str, int]) -> int:
    n = 1
    for ch in labels:
        n *= sizes[ch]
    return n


def _arrange(t: Tensor, have: list[str], want: list[str], sizes: dict[str, int]) -> Tensor:
    """t with its axes in the order `want` and every size-1 (broadcast) axis grown."""
    perm = tuple(have.index(ch) for ch in want)
    if perm != tuple(range(len(perm))):
        t = permute(t, perm)
    full = tuple(sizes[ch] for ch in want)
    return broadcast_to(t, full) if tuple(t.shape) != full else t
