"""Regression tests for compiled-code bugs, each with the smallest graph that showed it."""
import numpy as np
import pytest
from neurenix.compiler import GraphBuilder, evaluate, pipeline
from neurenix.compiler.targets import default_target
from neurenix.compiler.types import TensorType, float32

from neurenix.compilation.executables import load

pytestmark = pytest.mark.skipif(default_target() != "llvm",
                                reason="needs the LLVM code generator (llvmlite)")


def test_inplace_store_does_not_clobber_an_input_a_later_store_reads():
    # A GRU-like cell: the fused kernel stores t, then reads the input t's storage would
    # reuse. Memory planning once let the first store overwrite that input.
    b = GraphBuilder("gru_like")
    x = b.input("x", TensorType((2, 4), float32))
    w = b.input("w", TensorType((4, 8), float32))
    h = b.apply("full", shape=(2, 4), dtype="float32", value=0.5)
    m = b.apply("matmul", h, w)
    m0 = b.apply("slice", m, starts=(0, 0), stops=(2, 4), steps=(1, 1))
    m1 = b.apply("slice", m, starts=(0, 4), stops=(2, 8), steps=(1, 1))
    t = b.apply("tanh", b.apply("add", x, b.apply("mul", b.apply("sigmoid", m0), m1)))
    out = b.apply("add", t, b.apply("mul", b.apply("sigmoid", m1), b.apply("sub", h, t)))
    graph = b.build([out])
    rng = np.random.default_rng(0)
    args = [rng.uniform(-1, 1, (2, 4)).astype(np.float32),
            rng.uniform(-1, 1, (4, 8)).astype(np.float32)]
    got = load(pipeline.build(graph, "llvm")[0]).run(args)[0]
    np.testing.assert_allclose(got, evaluate(graph, args)[0], rtol=1e-5, atol=1e-6)


def test_a_replaced_layer_recompiles_and_uses_its_own_weights():
    """The compiled module caches its tensor list; a replaced sub-module must not reuse the
    program that reads the old weights (it did while the signature held only names)."""
    import neurenix
    from neurenix import nn
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).eval()
    compiled = neurenix.compile(model)
    x = neurenix.randn(2, 4)
    with neurenix.no_grad():
        compiled(x)
        model[0] = nn.Linear(4, 3)
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-7)
    assert compiled.cache_size == 2
