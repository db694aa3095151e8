"""Contractions whose rows and columns are both dynamic take the tiled path: the column tiles
and groups are counted per call and the last tile is clamped (a regression: such products,
`a @ b` called at several sizes of both, and convolutions over images of several sizes, ran
the generic loop nest, 20-40x slower than the static program).  Products of rank 4 with a
dynamic sequence (attention) and a convolution's input gradient get one dynamic program too
(they were compiled per shape: the index of a flattened batch divided by a dynamic plane, or
by a padded image's, did not simplify)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import Acc, Binary, Const, Kernel, Load, Store, Sym, Var
from neurenix.compiler.schedule import Choice, Contraction
from neurenix.compiler.schedule.contraction import KC
from neurenix.compiler.symbolic import ShapeEnv
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import float32
from test_dynamic_codegen import buf, compile_symbolic, graph, index, mul, program_schedule

import neurenix
from neurenix import nn

# (rows, columns): one column, fewer than a tile, a tile exactly (32 at 512 bits), one past
# it, several column groups, and rows below and past the few-rows variants
SIZES = [(1, 1), (2, 31), (7, 32), (13, 33), (64, 100), (100, 7), (257, 650), (1000, 64)]


def product_graph(k: int | None, *, bias: bool):
    """y[i, j] = sum_l x[i, l] w[l, j] (+ bias[j], relu) with x (n, k) and w (k, c): rows n
    and columns c both dynamic, k too when None."""
    env = ShapeEnv()
    n, c = env.symbol("n", 64), env.symbol("c", 96)
    stride = k
    if k is None:
        k, stride = env.symbol("k", 40), Sym("k")
    x, w, y = buf("x", (n, k)), buf("w", (k, c)), buf("y", (n, c))
    product = mul(Load("x", index((0, stride), (2, 1)), float32),
                  Load("w", index((2, Sym("c")), (1, 1)), float32))
    inputs, value = [x, w], Acc()
    shapes = {"x": ((n, k), float32), "w": ((k, c), float32)}
    if bias:
        inputs.append(buf("bias", (c,)))
        shapes["bias"] = ((c,), float32)
        value = Binary("max", Binary("add", Acc(), Load("bias", Var(1), float32)),
                       Const(0.0, float32))
    store = Store("y", index((0, Sym("c")), (1, 1)), value)
    kern = Kernel("mm", tuple(inputs), (y,), (n, c), (store,), reduce=(k,), reduce_op="sum",
                  reduce_value=product)
    return graph([kern], shapes, {"y": ((n, c), float32)}), env


def last_variant(plan):
    while isinstance(plan, Choice):
        plan = plan.large
    return plan


@pytest.mark.parametrize("k,bias", [(40, True), (300, False)])
def test_dynamic_rows_and_columns_are_tiled_and_exact(k, bias):
    """One program for every (rows, columns); k = 300 runs in K blocks through the partial
    sums of a column group."""
    kg, env = product_graph(k, bias=bias)
    program, exe = compile_symbolic(kg, env)
    plan = last_variant(program_schedule(kg, env))
    assert isinstance(plan, Contraction)
    assert not isinstance(plan.blocking.col_tiles, int)  # counted per call
    assert set(program.metadata["paths"]["neurenix_mm"].split("|")) == {"tiled"}
    rng = np.random.default_rng(0)
    for n, c in SIZES:
        arrays = [rng.standard_normal((n, k)).astype(np.float32),
                  rng.standard_normal((k, c)).astype(np.float32)]
        if bias:
            arrays.append(rng.standard_normal(c).astype(np.float32))
        got, = exe.run(arrays)
        want, = run_schedule(kg, arrays)
        assert got.shape == (n, c)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{(n, c)}")


def test_dynamic_k_with_dynamic_rows_runs_one_k_block_when_short():
    """With dynamic rows and k as well, a call with k <= KC runs one K block (no partial
    sums), as a static program does; longer ones go through the partial sums."""
    kg, env = product_graph(None, bias=False)
    program, exe = compile_symbolic(kg, env)
    found = []

    def walk(plan):
        if isinstance(plan, Choice):
            if str(plan.size) == "k" and plan.limit == KC:
                found.append(plan)
            walk(plan.small)
            walk(plan.large)

    walk(program_schedule(kg, env))
    assert found and all(choice.small.blocking.k_blocks == 1 for choice in found)
    rng = np.random.default_rng(3)
    for n, c, k in [(64, 96, 40), (100, 33, KC), (300, 70, KC + 1), (7, 5, 500), (1000, 64, 3)]:
        arrays = [rng.standard_normal((n, k)).astype(np.float32),
                  rng.standard_normal((k, c)).astype(np.float32)]
        got, = exe.run(arrays)
        want, = run_schedule(kg, arrays)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{(n, c, k)}")


def test_dynamic_columns_edge_tile_takes_the_narrowest_vector():
    """The last, partial column tile of dynamic columns runs NR / 4, NR / 2 or NR lanes wide,
    picked per call (as a static program picks it at compile time)."""
    kg, env = product_graph(40, bias=False)
    program, _ = compile_symbolic(kg, env)
    nr = 2 * get_target("llvm").capabilities.vector_bits // 32
    widths = [w for w in (nr // 4, nr // 2, nr) if w >= 4]
    for width in widths:
        assert f"llvm.fmuladd.v{width}f32" in program.source


@pytest.mark.parametrize("form", ["a@b", "a.T@b", "(a.T@b).T"])
def test_compiled_products_at_many_shapes_match_eager(form):
    """Through `neurenix.compile`: automatic dynamic shapes make every size dynamic after
    the second shape; every later shape runs the one tiled program, as eagerly."""
    fn = {"a@b": lambda a, b: a @ b, "a.T@b": lambda a, b: a.T @ b,
          "(a.T@b).T": lambda a, b: (a.T @ b).T}[form]
    compiled = neurenix.compile(fn)
    rng = np.random.default_rng(1)
    for m, n, k in [(64, 64, 64), (40, 70, 33), (33, 1, 9), (5, 300, 16), (129, 33, 257)]:
        shape_a = (k, m) if form != "a@b" else (m, k)
        a = neurenix.Tensor(rng.standard_normal(shape_a).astype(np.float32))
        b = neurenix.Tensor(rng.standard_normal((k, n)).astype(np.float32))
        np.testing.assert_allclose(compiled(a, b).numpy(), fn(a, b).numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=f"{(m, n, k)}")
    assert compiled.stats()["dynamic"]  # the last call ran the dynamic program (a size of 1
    assert "elementwise" not in compiled.source()  # gets a static one)
    # laid out as the static program of a shape like the hint's is (dynamic strides asked
    # whether an index steps by one along an axis without comparing sizes)
    static = neurenix.compile(fn, dynamic=False)
    static(a, b)
    assert layout(compiled.source()) == layout(static.source())


def layout(source: str) -> tuple[str, str, str]:
    """(rows axis, columns axis, how b is read) of the last tiled variant of a program's
    only product."""
    found = re.findall(r"tiled: \w+ rows axis (\d+) x \d+, columns axis (\d+) x .*?, "
                       r"b ([a-z ]+);", source)
    assert found, source[:2000]
    return found[-1]


def test_convolution_over_images_of_several_sizes_matches_eager():
    """A convolution's output pixels are its product's columns: with dynamic height and
    width they are tiled as for a static image (the window gather packed per column tile)."""
    conv = nn.Conv2d(3, 8, 3, padding=1)
    compiled = neurenix.compile(conv)
    rng = np.random.default_rng(2)
    with neurenix.no_grad():
        for size in (12, 9, 17, 5):
            x = neurenix.Tensor(rng.standard_normal((2, 3, size, size)).astype(np.float32))
            np.testing.assert_allclose(compiled(x).numpy(), conv(x).numpy(), rtol=1e-4,
                                       atol=1e-4, err_msg=f"{size}")
    assert "columns axis 2 x" in compiled.source()  # the pixels are the tiles' columns


def attention(q, k, v):
    scores = (q @ k.transpose(-2, -1)) * 0.25
    return scores.softmax(-1) @ v


def test_attention_over_sequences_of_several_lengths_is_one_dynamic_program():
    compiled = neurenix.compile(attention)
    rng = np.random.default_rng(4)
    for length in (17, 33, 5, 64, 2, 40):
        arrays = [rng.standard_normal((2, 4, length, 16)).astype(np.float32) for _ in range(3)]
        mine = [neurenix.Tensor(a, requires_grad=True) for a in arrays]
        eager = [neurenix.Tensor(a, requires_grad=True) for a in arrays]
        got, want = compiled(*mine), attention(*eager)
        got.sum().backward()
        want.sum().backward()
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=f"{length}")
        for a, b in zip(mine, eager):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert compiled.stats()["dynamic"]
    assert compiled.cache_size == 2  # the first length, and one program for every other


def test_convolution_input_gradient_over_images_of_several_sizes_is_one_dynamic_program():
    conv = nn.Conv2d(3, 7, 3, padding=1)

    def loss(x):
        return (conv(x) ** 2).mean()

    compiled = neurenix.compile(loss)
    rng = np.random.default_rng(5)
    for batch, height, width in [(2, 17, 33), (3, 65, 7), (2, 5, 40), (3, 8, 8)]:
        a = rng.standard_normal((batch, 3, height, width)).astype(np.float32)
        x, y = neurenix.Tensor(a, requires_grad=True), neurenix.Tensor(a, requires_grad=True)
        compiled(x).backward()
        got = conv.weight.grad.numpy().copy()
        conv.zero_grad()
        loss(y).backward()
        np.testing.assert_allclose(x.grad.numpy(), y.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got, conv.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        conv.zero_grad()
    assert compiled.stats()["dynamic"]
