"""Convolutions whose GEMM gathers its own windows (im2col folded into the matmul kernel).

Fusion keeps `pad -> unfold -> reshape -> matmul` as one kernel whose right operand is the
masked window gather; the CPU tiled path packs that computed operand per column tile, with the
output row and column of each packed column (`n // W`, `n % W`) computed once per tile.  These
cases check values against the graph's NumPy reference, the kernel interpreter and PyTorch,
bounds with guard pages, and the fusion decision's limits.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from kernel_helpers import assert_same_across_threads, assert_same_guarded, merge
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen import generate
from neurenix.compiler.codegen.llvm_matmul import _column_only
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import Binary, Const, Load, Var
from neurenix.compiler.lowering.fusion import plan_fusion
from neurenix.compiler.lowering.lower import lower, walk
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import TensorType, float32, float64, int64
from neurenix.runtime.cpu import CpuExecutable

# (batch, channels, h, w, out channels, kernel, padding, stride, dilation, dtype)
CONVS = [
    (2, 3, 9, 9, 16, (3, 3), (1, 1), (1, 1), (1, 1), float32),    # the CNN's first layer
    (1, 16, 7, 7, 32, (3, 3), (1, 1), (1, 1), (1, 1), float32),   # batch 1: no batch axis
    (2, 3, 11, 10, 8, (3, 3), (1, 1), (2, 2), (1, 1), float32),   # stride 2, odd size
    (2, 2, 13, 12, 5, (3, 2), (2, 1), (1, 1), (2, 3), float32),   # dilation, odd channels
    (3, 4, 10, 7, 6, (2, 3), (0, 2), (2, 1), (1, 2), float64),    # float64, mixed everything
    (2, 3, 5, 5, 64, (3, 3), (1, 1), (2, 2), (1, 1), float32),    # 9 columns: roles swap
    (2, 2, 3, 3, 4, (2, 2), (0, 0), (1, 1), (1, 1), float32),     # tiny: generic nest
    (2, 5, 37, 33, 7, (5, 5), (2, 2), (1, 1), (1, 1), float64),   # several column tiles
]


def conv_graph(case, bias: bool = True):
    """relu(conv2d(x, w) + b) written as the frontend does: pad, unfold, reshape, matmul."""
    n, c, h, w, o, k, pad, stride, dil, dtype = case
    b = GraphBuilder("conv")
    x = b.input("x", TensorType((n, c, h, w), dtype))
    wt = b.input("w", TensorType((o, c) + k, dtype), "param")
    if any(pad):
        x = b.pad(x, lo=(0, 0) + pad, hi=(0, 0) + pad, interior=(0, 0, 0, 0), value=0.0)
    cols = b.unfold(x, kernel=k, stride=stride, dilation=dil)
    wins = cols.type.shape[4:]
    taps = c * k[0] * k[1]
    cols = b.reshape(cols, shape=(n, taps, wins[0] * wins[1]))
    wm = b.expand(b.reshape(wt, shape=(1, o, taps)), shape=(n, o, taps))
    out = b.reshape(b.matmul(wm, cols), shape=(n, o) + wins)
    if bias:
        bv = b.input("b", TensorType((o,), dtype), "param")
        out = b.add(out, b.expand(b.reshape(bv, shape=(1, o, 1, 1)), shape=out.type.shape))
        zero = b.full(shape=out.type.shape, value=0.0, dtype=dtype.name)
        out = b.where(b.gt(out, zero), out, zero)
    return b.build([out])


def data(graph, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n.type.shape).astype(n.type.dtype.np_type) for n in graph.inputs]


@pytest.fixture(scope="module")
def conv_program():
    graphs = [conv_graph(case) for case in CONVS]
    schedules = [lower(g) for g in graphs]
    merged = merge(schedules)
    program = generate(merged)
    exe = CpuExecutable(program)
    arrays = [data(g, i) for i, g in enumerate(graphs)]
    inputs = [a for group in arrays for a in group]
    return graphs, schedules, program, exe, arrays, inputs


def test_each_conv_is_one_kernel_reading_the_input_itself(conv_program):
    graphs, schedules, _, _, _, _ = conv_program
    for case, s in zip(CONVS, schedules):
        (k,) = s.kernels
        assert k.contraction is None, case
        padded = any(case[6])
        loads = [e for e in walk([k.reduce_value]) if isinstance(e, Load) and e.buffer == "x"]
        assert loads and all((ld.mask is not None) == padded for ld in loads), case


def test_gathered_convs_match_numpy_and_the_interpreter(conv_program):
    graphs, schedules, _, exe, arrays, inputs = conv_program
    got = exe.run(inputs)
    for case, g, s, arr, y in zip(CONVS, graphs, schedules, arrays, got):
        want = evaluate(g, arr)[0]
        (interp,) = run_schedule(s, arr)
        tol = 1e-4 if case[-1] == float32 else 1e-10
        np.testing.assert_allclose(interp, want, rtol=tol, atol=tol, err_msg=str(case))
        np.testing.assert_allclose(y, want, rtol=tol, atol=tol, err_msg=str(case))
    assert_same_guarded(exe, inputs, got)


def test_gathered_convs_split_across_threads_identically(conv_program):
    _, _, _, exe, _, inputs = conv_program
    assert_same_across_threads(exe, inputs, (2, 3))


def test_gathered_convs_take_the_tiled_path(conv_program):
    _, _, program, _, _, _ = conv_program
    paths = program.metadata["paths"]
    tiled = [name for name, path in paths.items() if path == "tiled"]
    assert len(tiled) == len(CONVS) - 1  # all but the tiny one
    assert "strip" in program.source  # n // W and n % W computed once per column tile


def test_column_divisions_are_hoisted_but_not_those_reading_k():
    n, k = Var(1), Var(2)
    row = Binary("idiv", n, _c(7))
    col = Binary("mod", n, _c(7))
    mixed = Binary("idiv", Binary("add", n, k), _c(7))
    e = Binary("add", Binary("add", row, col), Binary("add", mixed, row))
    assert _column_only(e, k_axis=2, col=1) == [row, col]


def _c(v: int) -> Const:
    return Const(v, int64)


def test_the_inline_unfold_limit_is_the_targets():
    """Fusion asks the capability record how many output channels keep the gather inline."""
    caps = get_target("llvm").capabilities
    graph = conv_graph((2, 3, 6, 6, 16, (3, 3), (1, 1), (1, 1), (1, 1), float32))
    assert len(plan_fusion(graph).groups) == len(plan_fusion(graph, caps=caps).groups) == 1
    assert len(plan_fusion(graph, caps=replace(caps, inline_unfold_limit=15)).groups) == 2


def test_wide_products_and_shared_windows_still_store_the_im2col():
    limit = get_target("llvm").capabilities.inline_unfold_limit
    wide = conv_graph((2, 3, 6, 6, limit + 1, (3, 3), (1, 1), (1, 1), (1, 1), float32))
    assert len(lower(wide).kernels) == 2  # too many output channels to recompute the gather
    b = GraphBuilder("shared")
    x = b.input("x", TensorType((2, 3, 6, 6), float32))
    w1 = b.input("w1", TensorType((1, 4, 27), float32), "param")
    w2 = b.input("w2", TensorType((1, 5, 27), float32), "param")
    cols = b.reshape(b.unfold(x, kernel=(3, 3), stride=(1, 1), dilation=(1, 1)),
                     shape=(2, 27, 16))
    y1 = b.matmul(b.expand(w1, shape=(2, 4, 27)), cols)
    y2 = b.matmul(b.expand(w2, shape=(2, 5, 27)), cols)
    g = b.build([y1, y2])
    s = lower(g)
    assert len(s.kernels) == 3  # the windows are gathered once, read by both GEMMs
    arr = data(g, 0)
    for got, want in zip(run_schedule(s, arr), evaluate(g, arr)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, c, o, size, kw", [
    (1, 3, 16, 28, dict(padding=1)),
    (4, 16, 32, 15, dict(padding=2, stride=2)),
    (3, 5, 8, 17, dict(padding=1, dilation=2)),
    (2, 4, 12, 9, dict(stride=(2, 1), padding=(0, 1))),
])
def test_compiled_conv_modules_match_pytorch(n, c, o, size, kw):
    import neurenix as nx
    from neurenix import nn

    nx.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(c, o, 3, **kw), nn.ReLU()).eval()
    compiled = nx.compile(m)
    x = np.random.default_rng(1).standard_normal((n, c, size, size)).astype(np.float32)
    with nx.no_grad():
        got = compiled(nx.Tensor(x)).detach().numpy()
    assert len(compiled._last.forward.program.kernels) == 1
    conv = m[0]
    want = torch.relu(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(conv.weight.detach().numpy()),
        torch.from_numpy(conv.bias.detach().numpy()), **kw)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
