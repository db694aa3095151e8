"""Products whose `b` is contiguous along k (`x @ w.T`, a Linear layer's forward): the tiled
path packs `b` a W x W square at a time, transposed in registers (W: the host vector's lanes),
and the last `klen % W` steps of each K block element by element.

Every case must equal NumPy's product, read nothing out of bounds (guard pages on both sides)
and give the same bits on any number of threads, for float32 and float64 and for 16- and
8-lane vectors, with K blocks that are whole squares, ragged ones, several of them, and a
narrow last column tile (which keeps the element-wise pack).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from kernel_helpers import assert_same_across_threads
from neurenix.compiler.schedule import Contraction
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import float32, float64
from test_codegen_llvm import assert_tiled_matmuls_right, build_matmul_program

import neurenix as nx

CAPS = get_target("llvm").capabilities

CASES = [  # (batch, m, k, n, a transposed, b transposed, bias, dtype)
    # rows of `a` past dot.MAX_ROWS_BYTES, so that the tiled path takes them (dot products
    # take smaller ones)
    (0, 1040, 128, 64, False, True, False, float32),   # one K block of whole squares
    (0, 1100, 125, 70, False, True, True, float32),    # a tail of 13 (or 5) steps, narrow edge
    (2, 450, 300, 40, False, True, False, float32),    # batched, three K blocks of 100
    (0, 520, 130, 40, False, True, True, float64),     # float64: two K blocks of 65, squares
                                                       # of 8 (or 4) lanes
    (0, 24, 7, 64, False, True, False, float32),       # a short k: no whole square
]


@pytest.fixture(scope="module", params=[512, 256], ids=["avx512", "avx2"])
def program(request):
    caps = replace(CAPS, vector_bits=request.param, masked_loads=True)
    return build_matmul_program("km", CASES, 5, caps)


def test_k_major_products_match_np_matmul_and_stay_in_bounds(program):
    s, prog = program[:2]
    assert all(isinstance(k.schedule, Contraction) and k.schedule.k_major
               for k in s.kernels)
    assert "tpack_k" in prog.source  # the square-at-a-time pack was emitted
    assert_tiled_matmuls_right(program, CASES, "km")


def test_k_major_products_split_across_threads_identically(program):
    _, _, exe, inputs, _ = program
    assert_same_across_threads(exe, inputs, (2, 3))


def test_compiled_linear_through_the_square_pack_equals_eager_and_torch():
    """Through the public API: a compiled Linear of 600 rows by 300 inputs (past the dot
    products' 512 KiB, so its forward packs the weight square by square) against the same
    layer eager and PyTorch, forward and gradients, over repeated calls with the weight changed
    in place between them."""
    rng = np.random.default_rng(8)
    layer = nx.nn.Linear(300, 96)
    twin = torch.nn.Linear(300, 96).double()
    compiled = nx.compile(layer)
    for step in range(3):
        x = rng.standard_normal((600, 300)).astype(np.float32)
        g = rng.standard_normal((600, 96)).astype(np.float32)
        with torch.no_grad():
            twin.weight.copy_(torch.from_numpy(layer.weight.detach().numpy().astype(np.float64)))
            twin.bias.copy_(torch.from_numpy(layer.bias.detach().numpy().astype(np.float64)))
        twin.zero_grad()
        tx = torch.from_numpy(x.astype(np.float64)).requires_grad_()
        (twin(tx) * torch.from_numpy(g.astype(np.float64))).sum().backward()
        results = []
        for run in (compiled, layer):
            layer.zero_grad()
            nx_x = nx.Tensor(x, requires_grad=True)
            out = run(nx_x)
            (out * nx.Tensor(g)).sum().backward()
            results.append([out.detach().numpy(), nx_x.grad.numpy(), layer.weight.grad.numpy(),
                            layer.bias.grad.numpy()])
        want = [twin(tx).detach().numpy(), tx.grad.numpy(), twin.weight.grad.numpy(),
                twin.bias.grad.numpy()]
        for got_compiled, got_eager, ref in zip(*results, want):
            np.testing.assert_allclose(got_compiled, ref, rtol=1e-4, atol=1e-3, err_msg=step)
            np.testing.assert_allclose(got_compiled, got_eager, rtol=1e-4, atol=1e-3,
                                       err_msg=step)
        assert "tpack_k" in compiled.source()  # the forward packed its weight in squares
        with nx.no_grad():
            layer.weight.mul_(-0.5)  # the next call must read the changed weight
