"""Lowering decisions that shape a compiled LSTM: concats written piece by piece, matmul
operands that view a computed value, weights read in place (never copied transposed), and the
gate-major LSTM step (each gate a contiguous slab, so the gate kernel runs flat)."""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen import generate
from neurenix.compiler.kernel.affine import affine
from neurenix.compiler.kernel.ir import Load
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.lowering.fusion import plan_fusion
from neurenix.compiler.lowering.lower import CONCAT_SPLIT_INPUTS, lower, walk
from neurenix.runtime.cpu import CpuExecutable
from test_lower import T, assert_matches, check

import neurenix as nx
from neurenix import nn


def _run_compiled(graph, arrays):
    schedule = lower(graph)
    exe = CpuExecutable(generate(schedule, plan_memory(schedule)))
    return exe.run(arrays)


def _stacked_steps(steps: int):
    """h_t = tanh(h_(t-1) @ w) for `steps` steps, the h's stacked: an RNN layer's output."""
    b = GraphBuilder("stack")
    h = b.input("h", T(4, 6))
    w = b.input("w", T(6, 6), "param")
    outs = []
    for _ in range(steps):
        h = b.tanh(b.matmul(h, w))
        outs.append(b.reshape(h, shape=(1, 4, 6)))
    stacked = b.concat(*outs, axis=0)  # read by a matmul: stored
    return b.build([b.matmul(b.reshape(stacked, shape=(steps * 4, 6)), w)])


def test_stacked_steps_are_written_piece_by_piece():
    s = check(_stacked_steps(5))
    pieces = [k for k in s.kernels if k.name.endswith("_concat")]
    assert len(pieces) == 5, s
    (buf,) = {st.buffer for k in pieces for st in k.stores}
    for k in pieces:  # each piece is one flat copy: no select between the inputs
        assert len(k.domain) == 1 and k.domain[0] == 24
        assert all(ld.mask is None for ld in walk([k.stores[0].value]) if isinstance(ld, Load))
    starts = sorted(affine(k.stores[0].index).get(-1, 0) for k in pieces)
    assert starts == [0, 24, 48, 72, 96]
    assert s.buffers[buf].size == 120


def test_stacked_steps_run_compiled_with_a_shared_buffer():
    g = _stacked_steps(4)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n.type.shape).astype(np.float32) * 0.5 for n in g.inputs]
    (got,) = _run_compiled(g, arrays)
    np.testing.assert_allclose(got, evaluate(g, arrays)[0], rtol=1e-4, atol=1e-5)


def test_two_plain_pieces_stay_one_kernel():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    y = b.input("y", T(3, 2))
    s = check(b.build([b.concat(x, y, axis=1)]))
    assert len(s.kernels) == 1 and CONCAT_SPLIT_INPUTS > 2


def test_computed_pieces_split_along_an_inner_axis():
    b = GraphBuilder()
    x = b.input("x", T(3, 4))
    y = b.input("y", T(3, 2))
    cat = b.concat(b.exp(x), b.neg(y), axis=1)
    s = check(b.build([b.mul(b.matmul(cat, b.permute(cat, perm=(1, 0))),
                             b.full(shape=(3, 3), value=2.0, dtype="float32"))]))
    pieces = [k for k in s.kernels if k.name.endswith("_concat")]
    assert [k.domain for k in pieces] == [(3, 4), (3, 2)], s


def test_matmul_of_a_broadcast_activation_stores_the_activation_once():
    b = GraphBuilder()
    x = b.input("x", T(5, 3))
    w = b.input("w", T(4, 3, 3), "param")
    h = b.tanh(x)
    out = b.matmul(b.expand(b.reshape(h, shape=(1, 5, 3)), shape=(4, 5, 3)), w)
    g = b.build([out])
    plan = plan_fusion(g)
    assert h in plan.materialised
    assert not any(n.op == "expand" for n in plan.materialised)
    s = check(g)
    assert max(buf.size for buf in s.buffers.values() if buf.name.startswith("t")) == 15


@pytest.mark.parametrize("rows,k", [(32, 20), (8, 63), (32, 16), (32, 15), (7, 20), (32, 64)])
def test_transposed_weight_is_read_in_place(rows, k):
    """`x @ w.T` reads the PyTorch-layout weight in place whatever k: the CPU backend packs
    a short-k operand itself, so no transposed copy is stored."""
    b = GraphBuilder()
    x = b.input("x", T(rows, k))
    w = b.input("fc.weight", T(24, k), "param")
    wt = b.permute(w, perm=(1, 0))
    g = b.build([b.matmul(x, wt)])
    assert wt not in plan_fusion(g).materialised
    s = check(g)
    gemm = next(kk for kk in s.kernels if kk.contraction is not None)
    assert gemm.contraction["b_strides"][1:] == (1, k)
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n.type.shape).astype(np.float32) for n in g.inputs]
    (got,) = _run_compiled(g, arrays)
    np.testing.assert_allclose(got, evaluate(g, arrays)[0], rtol=1e-4, atol=1e-4)


def test_broadcast_weight_is_never_copied_per_batch_element():
    b = GraphBuilder()
    x = b.input("x", T(3, 16, 20))
    w = b.input("w", T(8, 20), "param")
    wt = b.expand(b.reshape(b.permute(w, perm=(1, 0)), shape=(1, 20, 8)), shape=(3, 20, 8))
    g = b.build([b.matmul(x, wt)])
    assert not plan_fusion(g).materialised - set(g.outputs)
    check(g)


def _lstm_program(batch: int, steps: int, layers: int = 2):
    nx.manual_seed(0)
    lstm = nn.LSTM(3, 5, num_layers=layers, batch_first=True)
    lstm.eval()
    compiled = nx.compile(lstm)
    x = nx.Tensor(np.random.default_rng(0).standard_normal((batch, steps, 3))
                  .astype(np.float32))
    with nx.no_grad():
        got, (h, c) = compiled(x)
        want, (h_want, c_want) = lstm(x)
    for a, e in ((got, want), (h, h_want), (c, c_want)):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4, atol=1e-5)
    return compiled


def test_compiled_lstm_gate_kernels_run_flat():
    compiled = _lstm_program(batch=4, steps=3)
    schedule = lower(compiled.graph)
    gate_kernels = [k for k in schedule.kernels
                    if not any(st.buffer.startswith("out") for st in k.stores)
                    and any(getattr(e, "op", None) == "sigmoid"
                            for st in k.stores for e in walk([st.value]))]
    assert len(gate_kernels) >= 2 * 3 - 1  # the last steps feed the output kernels
    assert all(k.domain == (4 * 5,) for k in gate_kernels), schedule
    gemms = [k for k in schedule.kernels if k.contraction is not None]
    # per layer: the input projection up front and one batched GEMM per step, + its weights
    assert len(gemms) == 2 * (1 + 3)
    assert sum(k.domain == (4, 4, 5) for k in gemms) == 2 * 3, schedule  # gate-major steps


def test_compiled_lstm_schedule_matches_the_reference():
    compiled = _lstm_program(batch=2, steps=4)
    g = compiled.graph
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(n.type.shape).astype(n.type.dtype.np_type) * 0.5
              for n in g.inputs]
    assert_matches(g, arrays)
