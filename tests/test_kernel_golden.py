# ruff: noqa: E501 - expected kernel text keeps its long lines as printed
"""Kernel-level golden tests: the printed kernel IR (`format_kernel`) of representative
graphs, written out in full.  Each expected text was read and checked by hand: loop nests,
index arithmetic (strides, the divisions of a non-contiguous view), masks, fused epilogues and
the shared subexpressions bound as e<k>.  A change to lowering, fusion or the index algebra
that alters a kernel shows up here as a readable diff."""
from __future__ import annotations

import pytest
from neurenix.compiler import GraphBuilder
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.types import int64
from test_lower import T, bcast, layer_norm, linear, relu, softmax


def chain():
    """x * a (a broadcast along rows), then tanh, sub, abs, neg, exp: one kernel; the
    broadcast keeps the 2-D domain (a flat one would need i % 6 to read a)."""
    b = GraphBuilder("chain")
    x = b.input("x", T(4, 6))
    a = b.input("a", T(6))
    y = b.mul(x, bcast(b, a, (4, 6)))
    y = b.exp(b.neg(b.abs(b.sub(b.tanh(y), x))))
    return b.build([y])


def soft():
    """Max, then sum of exp(x - max), then exp(x - max) / sum: three kernels, exp
    recomputed rather than stored (it costs less than its load)."""
    b = GraphBuilder("softmax")
    x = b.input("x", T(4, 10))
    return b.build([softmax(b, x)])


def mm():
    """A GEMM with bias and relu as its epilogue; acc + bias computed once (e0)."""
    b = GraphBuilder("linear")
    x = b.input("x", T(4, 6))
    w = b.input("fc.weight", T(5, 6), "param")
    bias = b.input("fc.bias", T(5), "param")
    return b.build([relu(b, linear(b, x, w, bias))])


def conv():
    """3x3 stride-2 conv with padding 1 as pad -> unfold -> matmul: one GEMM whose right
    operand is the masked window gather (tap i2, window i1; x strides: row 5, channel 25)."""
    b = GraphBuilder("conv")
    x = b.input("x", T(1, 2, 5, 5))
    w = b.input("w", T(3, 2, 3, 3), "param")
    xp = b.pad(x, lo=(0, 0, 1, 1), hi=(0, 0, 1, 1), interior=(0, 0, 0, 0), value=0.0)
    cols = b.unfold(xp, kernel=(3, 3), stride=(2, 2), dilation=(1, 1))
    cols = b.reshape(cols, shape=(18, 9))
    out = b.matmul(b.reshape(w, shape=(3, 18)), cols)
    return b.build([b.reshape(out, shape=(1, 3, 3, 3))])


def colsum():
    """Sum over rows: domain = the 5 columns, reduction over 8 rows at stride 5."""
    b = GraphBuilder("colsum")
    x = b.input("x", T(8, 5))
    return b.build([b.reduce_sum(x, axes=(0,))])


def view():
    """permute(2, 0, 1) then reshape to (4, 6) of a contiguous x: pure strides, no division
    (the reshape merges two axes that stay adjacent after the permute)."""
    b = GraphBuilder("view")
    x = b.input("x", T(2, 3, 4))
    y = b.reshape(b.permute(x, perm=(2, 0, 1)), shape=(4, 6))
    return b.build([b.add(y, y)])


def ln():
    """Mean, then 1/sqrt(var + eps) of the centred values, then the affine output: three
    kernels, the divisions by 8 and the reciprocal fused as epilogues."""
    b = GraphBuilder("layer_norm")
    x = b.input("x", T(3, 8))
    w = b.input("w", T(8), "param")
    bb = b.input("b", T(8), "param")
    return b.build([layer_norm(b, x, w, bb)])


def emb():
    """table[ids] along axis 0: each row read at a loaded index, masked to 0 <= id < 10."""
    b = GraphBuilder("embedding")
    table = b.input("table", T(10, 4), "param")
    ids = b.input("ids", T(2, 3, dtype=int64))
    return b.build([b.gather(table, ids, axis=0)])


EXPECTED = {
    "chain": """\
// reshape + expand + mul + tanh + sub + abs + neg + exp
kernel k0_exp(f32* x[24], f32* a[6], f32* out0[24]) {
  for i0 in 0..4 parallel:
    for i1 in 0..6:
      out0[((i0 * 6) + i1)] = exp(neg(abs((tanh((x[((i0 * 6) + i1)] * a[i1])) - x[((i0 * 6) + i1)]))))
}
""",
    "soft": """\
// reduce_max + reshape + stop_gradient
kernel k0_reduce_max(f32* x[40], f32* t0[4]) {
  for i0 in 0..4 parallel:
    acc = init_max
    for i1 in 0..10:
      acc = max(acc, x[((i0 * 10) + i1)])
    t0[i0] = acc
}

// expand + sub + exp + reduce_sum + reshape
kernel k1_reduce_sum(f32* x[40], f32* t0[4], f32* t1[4]) {
  for i0 in 0..4 parallel:
    acc = init_sum
    for i1 in 0..10:
      acc = sum(acc, exp((x[((i0 * 10) + i1)] - t0[i0])))
    t1[i0] = acc
}

// expand + sub + exp + expand + div
kernel k2_div(f32* x[40], f32* t0[4], f32* t1[4], f32* out0[40]) {
  for i0 in 0..4 parallel:
    for i1 in 0..10:
      out0[((i0 * 10) + i1)] = (exp((x[((i0 * 10) + i1)] - t0[i0])) / t1[i0])
}
""",
    "mm": """\
// permute + matmul + reshape + expand + add + full + gt + where
kernel k0_matmul(f32* x[24], f32* fc_weight[30], f32* fc_bias[5], f32* out0[20]) {
  for i0 in 0..4 parallel:
    for i1 in 0..5:
      acc = init_sum
      for i2 in 0..6:
        acc = sum(acc, (x[((i0 * 6) + i2)] * fc_weight[((i1 * 6) + i2)]))
      e0 = (acc + fc_bias[i1])
      out0[((i0 * 5) + i1)] = ((e0 > 0.0) ? e0 : 0.0)
}
""",
    "conv": """\
// pad + unfold + reshape + reshape + matmul + reshape
kernel k0_matmul(f32* w[54], f32* x[50], f32* out0[27]) {
  for i0 in 0..3 parallel:
    for i1 in 0..9:
      acc = init_sum
      for i2 in 0..18:
        e0 = ((i2 // 3) % 3)
        e1 = (i1 % 3)
        e2 = (i1 // 3)
        e3 = (i2 % 3)
        e4 = ((e0 + (e2 * 2)) - 1)
        e5 = (((e1 * 2) + e3) - 1)
        acc = sum(acc, (w[((i0 * 18) + i2)] * (((((e4 >= 0) && (e4 < 5)) && (e5 >= 0)) && (e5 < 5)) ? x[((((((e0 * 5) + (e1 * 2)) + (e2 * 10)) + e3) + ((i2 // 9) * 25)) - 6)] : 0.0)))
      out0[((i0 * 9) + i1)] = acc
}
""",
    "colsum": """\
// reduce_sum
kernel k0_reduce_sum(f32* x[40], f32* out0[5]) {
  for i0 in 0..5 parallel:
    acc = init_sum
    for i1 in 0..8:
      acc = sum(acc, x[(i0 + (i1 * 5))])
    out0[i0] = acc
}
""",
    "view": """\
// permute + reshape + add
kernel k0_add(f32* x[24], f32* out0[24]) {
  for i0 in 0..4 parallel:
    for i1 in 0..6:
      out0[((i0 * 6) + i1)] = (x[(i0 + (i1 * 4))] + x[(i0 + (i1 * 4))])
}
""",
    "ln": """\
// reduce_sum + reshape + full + div
kernel k0_reduce_sum(f32* x[24], f32* t0[3]) {
  for i0 in 0..3 parallel:
    acc = init_sum
    for i1 in 0..8:
      acc = sum(acc, x[((i0 * 8) + i1)])
    t0[i0] = (acc / 8.0)
}

// expand + sub + mul + reduce_sum + reshape + full + div + full + add + sqrt + reciprocal
kernel k1_reduce_sum(f32* x[24], f32* t0[3], f32* t1[3]) {
  for i0 in 0..3 parallel:
    acc = init_sum
    for i1 in 0..8:
      e0 = (x[((i0 * 8) + i1)] - t0[i0])
      acc = sum(acc, (e0 * e0))
    t1[i0] = reciprocal(sqrt(((acc / 8.0) + 1e-05)))
}

// expand + sub + expand + mul + reshape + expand + mul + reshape + expand + add
kernel k2_add(f32* x[24], f32* t0[3], f32* t1[3], f32* w[8], f32* b[8], f32* out0[24]) {
  for i0 in 0..3 parallel:
    for i1 in 0..8:
      out0[((i0 * 8) + i1)] = ((((x[((i0 * 8) + i1)] - t0[i0]) * t1[i0]) * w[i1]) + b[i1])
}
""",
    "emb": """\
// gather
kernel k0_gather(f32* table[40], i64* ids[6], f32* out0[24]) {
  for i0 in 0..2 parallel:
    for i1 in 0..3:
      for i2 in 0..4:
        out0[(((i0 * 12) + (i1 * 4)) + i2)] = (((ids[((i0 * 3) + i1)] >= 0) && (ids[((i0 * 3) + i1)] < 10)) ? table[(i2 + (ids[((i0 * 3) + i1)] * 4))] : 0.0)
}
""",
}


GRAPHS = {"chain": chain, "soft": soft, "mm": mm, "conv": conv, "colsum": colsum,
          "view": view, "ln": ln, "emb": emb}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_printed_kernels(name):
    assert str(lower(GRAPHS[name]())) + "\n" == EXPECTED[name]
