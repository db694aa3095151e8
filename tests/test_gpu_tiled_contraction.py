"""The GPU tiled contraction (compiler/schedule/grid.py `TiledContraction`, rendered by
compiler/codegen/cstyle.py): register blocking for large outputs, an output per work-item
for small ones, chosen within the target's local memory; compiled matmuls, batched matmuls,
both operand orders, a convolution and a fused linear + bias + relu on OpenCL (PoCL) and
WebGPU (lavapipe) against NumPy, at, below and just past the tile edges; and the register
blocked kernel summing every output exactly as the one-output-per-item kernel does.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler import GraphBuilder
from neurenix.compiler.kernel.decompose import decompose
from neurenix.compiler.kernel.index_bits import choose_index_bits
from neurenix.compiler.kernel.ir import Binary
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule.grid import TiledContraction, launch, tiled_contraction_rule
from neurenix.compiler.schedule.rules import schedule_kernels, target_rules
from neurenix.compiler.targets import Capabilities, get_target
from neurenix.compiler.types import float32, float64
from test_lower import T

import neurenix as nx
from neurenix.nn import functional as F

RNG = np.random.default_rng(5)
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def _data(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _run(device: str, fn, *arrays: np.ndarray) -> np.ndarray:
    """`neurenix.compile(fn)` on `device` tensors, the result on the host."""
    with nx.no_grad():
        out = nx.compile(fn)(*(nx.tensor(a, device=device) for a in arrays))
    assert out.device == device
    return out.numpy()


def _close(got: np.ndarray, want: np.ndarray, dtype) -> None:
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want.astype(dtype), rtol=TOL[dtype],
                               atol=TOL[dtype] * scale)


# ---- schedules ------------------------------------------------------------------------------


def _contraction(m: int, k: int, n: int, dtype=float32, batch: tuple[int, ...] = ()):
    """The lowered kernel of an (m x k) @ (k x n) matmul."""
    b = GraphBuilder()
    x, y = b.input("x", T(*batch, m, k, dtype=dtype)), b.input("y", T(*batch, k, n, dtype=dtype))
    kernels = lower(b.build([b.matmul(x, y)]), caps=get_target("opencl").capabilities)
    return next(kern for kern in kernels.kernels if kern.reduce_value is not None)


def _caps(local: int = 1 << 16, workgroup: int = 1024) -> Capabilities:
    return replace(get_target("opencl").capabilities, local_memory_bytes=local,
                   max_workgroup_size=workgroup)


@pytest.mark.parametrize("shape, micro", [
    ((128, 128, 128), (4, 4)), ((64, 64, 64), (4, 4)), ((63, 64, 65), (2, 4)),
    ((40, 20, 100), (2, 4)), ((20, 20, 20), (1, 1)), ((16, 16, 16), (1, 1))])
def test_large_outputs_block_registers_and_small_ones_take_an_output_per_item(shape, micro):
    plan = tiled_contraction_rule(_contraction(*shape), _caps())
    assert plan.micro == micro
    assert plan.rows == 16 * micro[0] and plan.cols == 16 * micro[1]
    r, c = micro
    assert f"in {16 * r} x {16 * c} tiles, {r} x {c} outputs per work-item" in str(plan)
    assert plan.block == (256,)
    m, _, n = shape
    assert plan.count == -(-m // plan.rows) * -(-n // plan.cols)


def test_the_micro_tile_keeps_within_local_memory_and_the_work_group_limit():
    kernel = _contraction(128, 128, 128)
    assert tiled_contraction_rule(kernel, _caps(local=8192)).micro == (4, 4)  # 2 * 64 * 16 * 4
    assert tiled_contraction_rule(kernel, _caps(local=8191)).micro in ((2, 4), (4, 2))
    assert tiled_contraction_rule(kernel, _caps(local=4096)).micro == (2, 2)
    assert tiled_contraction_rule(kernel, _caps(local=2048)).micro == (1, 1)
    assert tiled_contraction_rule(kernel, _caps(local=2047)) is None
    assert tiled_contraction_rule(kernel, _caps(workgroup=128)) is None
    wide = _contraction(128, 128, 128, float64)
    plan = tiled_contraction_rule(wide, _caps(local=8192))
    assert plan.micro == (2, 2) and plan.local_elements * 8 <= 8192
    assert tiled_contraction_rule(wide, _caps(local=16384)).micro == (4, 4)


def test_a_batched_contraction_counts_its_tiles_per_batch():
    plan = tiled_contraction_rule(_contraction(70, 33, 70, batch=(3,)), _caps())
    assert plan.micro == (4, 4) and plan.batch == (0,) and plan.count == 3 * 2 * 2


# ---- on the devices -----------------------------------------------------------------------


MATMULS = [(63, 64, 65), (64, 64, 64), (65, 17, 130), (1, 300, 7), (128, 128, 128),
           (16, 16, 16), (33, 48, 20)]


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
def test_matmuls_at_and_past_the_tile_edges(device):
    needs_device(device)
    for m, k, n in MATMULS:
        if device == "webgpu" and m * n * k > 128 ** 3:
            continue  # lavapipe is slow
        a, b = _data(m, k), _data(k, n)
        _close(_run(device, lambda x, y: x @ y, a, b), a.astype(np.float64) @ b, np.float32)


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
def test_batched_and_transposed_operands(device):
    needs_device(device)
    a, b = _data(3, 70, 33), _data(3, 33, 70)
    _close(_run(device, lambda x, y: x @ y, a, b), a.astype(np.float64) @ b, np.float32)
    x, w = _data(70, 40), _data(96, 40)
    _close(_run(device, lambda x, w: x @ w.T, x, w), x.astype(np.float64) @ w.T, np.float32)
    _close(_run(device, lambda w, x: w @ x.T, w, x), w.astype(np.float64) @ x.T, np.float32)


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
def test_a_fused_linear_bias_relu_epilogue_and_a_convolution(device):
    needs_device(device)
    x, w, bias = _data(70, 48), _data(66, 48), _data(66)
    want = np.maximum(x.astype(np.float64) @ w.T + bias, 0)
    _close(_run(device, lambda x, w, b: F.relu(F.linear(x, w, b)), x, w, bias), want,
           np.float32)
    img, kern = _data(2, 8, 12, 12), _data(70, 8, 3, 3)
    got = _run(device, lambda x, k: F.conv2d(x, k, padding=1), img, kern)
    padded = np.pad(img.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    _close(got, np.einsum("nchwij,ocij->nohw", windows, kern), np.float32)


def test_float64_on_opencl():
    needs_device("opencl")
    for m, k, n in [(65, 17, 130), (64, 64, 64), (20, 30, 40)]:
        a, b = _data(m, k, dtype=np.float64), _data(k, n, dtype=np.float64)
        _close(_run("opencl", lambda x, y: x @ y, a, b), a @ b, np.float64)
    a, b = _data(3, 70, 33, dtype=np.float64), _data(3, 33, 70, dtype=np.float64)
    _close(_run("opencl", lambda x, y: x @ y, a, b), a @ b, np.float64)


def forced_kernels(graph, target, micro: tuple[int, int] | None, swap: bool = False):
    """The scheduled kernels of `graph` for `target`, its contraction forced to `micro`
    (None: the rule's), with the factors of its product swapped (`swap`: `a` is factor 1)."""
    caps = target.capabilities
    kernels = choose_index_bits(decompose(lower(graph, caps=caps), caps.native_ops),
                                caps.index_bits, caps.preferred_index_bits)
    if swap:
        kernels = replace(kernels, kernels=[
            replace(kern, reduce_value=Binary("mul", kern.reduce_value.b, kern.reduce_value.a))
            if kern.reduce_value is not None else kern for kern in kernels.kernels])
    kernels = schedule_kernels(kernels, caps, target_rules(target))
    forced = []
    for kern in kernels.kernels:
        plan = kern.schedule
        if micro is not None and isinstance(plan, TiledContraction):
            plan = replace(plan, micro=micro)
            tiles = (int(np.prod(kern.domain[:plan.row])) * -(-kern.domain[plan.row] // plan.rows)
                     * -(-kern.domain[plan.col] // plan.cols))
            grid, block = launch(tiles, plan.tile * plan.tile, caps.max_grid)
            plan = replace(plan, count=tiles, grid=grid, block=block)
        forced.append(replace(kern, schedule=plan))
    return replace(kernels, kernels=forced)


def _program(graph, micro: tuple[int, int] | None, swap: bool = False):
    """The OpenCL program of `graph`, its contraction forced (`forced_kernels`)."""
    target = get_target("opencl")
    caps = target.capabilities
    kernels = forced_kernels(graph, target, micro, swap)
    return target.generate()(kernels, plan_memory(kernels, caps.alignment, caps.bool_bytes),
                             target)


@pytest.mark.parametrize("dtype", [float32, float64])
def test_register_blocking_sums_exactly_as_an_output_per_item(dtype):
    """The same sums in the same order: bit-identical results on the same device."""
    needs_device("opencl")
    from neurenix.runtime.opencl import OpenCLExecutable
    b = GraphBuilder()
    x, w = b.input("x", T(2, 67, 90, dtype=dtype)), b.input("w", T(2, 90, 131, dtype=dtype))
    bias = b.input("bias", T(131, dtype=dtype))
    out = b.matmul(x, w)
    graph = b.build([b.add(out, b.expand(b.reshape(bias, shape=(1, 1, 131)),
                                         shape=out.type.shape))])
    data = [_data(2, 67, 90, dtype=dtype.np_type), _data(2, 90, 131, dtype=dtype.np_type),
            _data(131, dtype=dtype.np_type)]
    results = {}
    for micro, swap, form in [(None, False, "4 x 4 outputs per work-item, batch (0), a = "
                               "factor 0"), ((1, 1), False, "1 x 1 outputs"),
                              ((2, 4), False, "2 x 4 outputs"), (None, True, "a = factor 1")]:
        program = _program(graph, micro, swap)
        schedules = list(program.metadata["schedules"].values())
        assert any(form in s for s in schedules), schedules
        results[micro, swap] = OpenCLExecutable(program).run(data)[0]
    for key in results:
        np.testing.assert_array_equal(results[None, False], results[key])
    _close(results[None, False], data[0].astype(np.float64) @ data[1] + data[2], dtype.np_type)
