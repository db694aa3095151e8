"""int64 emulated in WGSL (compiler/codegen/wgsl_int64.py) against the graph reference, on
the WebGPU adapter: every elementwise op, cast, reduction, argmax/argmin, scatter-add and a
gather through int64 indices, on every pair of edge values (0, +-1, +-2**31, +-2**32,
INT64_MIN/MAX, ...) and on random 64-bit values, exactly.  One program: fast to build."""
from __future__ import annotations

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler import GraphBuilder, evaluate, pipeline
from neurenix.compiler.types import TensorType, float32, int32, int64

I64 = np.iinfo(np.int64)
EDGES = [0, 1, -1, 2, -2, 3, 63, 64, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**32, -2**32,
         2**32 + 1, 2**53 + 1, I64.max, I64.min, I64.min + 1, I64.max - 1]


def _operands() -> tuple[np.ndarray, np.ndarray]:
    """Every pair of edges, then random pairs: full-range, and small by large."""
    rng = np.random.default_rng(7)
    a, b = (np.array(v, np.int64).ravel() for v in np.meshgrid(EDGES, EDGES))
    wide = rng.integers(I64.min, I64.max, (2, 200), dtype=np.int64, endpoint=True)
    small = rng.integers(-1000, 1000, 200, dtype=np.int64)
    return (np.concatenate([a, wide[0], small, wide[1]]),
            np.concatenate([b, wide[1], wide[0], small]))


def _graph(n: int, rows: int):
    b = GraphBuilder("int64")
    x = b.input("x", TensorType((n,), int64))
    y = b.input("y", TensorType((n,), int64))
    f = b.input("f", TensorType((n,), float32))
    i = b.input("i", TensorType((n,), int32))
    binary = ["add", "sub", "mul", "floordiv", "remainder", "pow", "maximum", "minimum",
              "eq", "ne", "lt", "le", "gt", "ge"]
    outs = [b.apply(op, x, y) for op in binary]
    outs += [b.apply(op, x) for op in ("neg", "abs", "sign")]
    outs += [b.apply("cast", x, dtype=d) for d in ("float32", "int32", "bool")]
    outs += [b.apply("cast", f, dtype="int64"), b.apply("cast", i, dtype="int64")]
    m = b.apply("reshape", x, shape=(rows, n // rows))
    outs += [b.apply(op, m, axes=(1,)) for op in ("reduce_sum", "reduce_prod", "reduce_max",
                                                  "reduce_min")]
    outs += [b.apply(op, m, axis=1) for op in ("argmax", "argmin")]
    outs.append(b.apply("reduce_sum", x, axes=(0,)))  # one long reduction: a work-group
    slots = b.apply("full", shape=(5,), dtype="int64", value=0)
    index = b.apply("remainder", y, b.apply("full", shape=(n,), dtype="int64", value=5))
    outs.append(b.apply("scatter_add", slots, index, x, axis=0))
    outs.append(b.apply("gather", f, index, axis=0))  # an int64 value as an index
    return b.build(outs)


def test_every_int64_operation_is_exact():
    needs_device("webgpu")
    from neurenix.runtime import webgpu

    x, y = _operands()
    n = len(x) - len(x) % 4
    x, y = x[:n], y[:n]
    rng = np.random.default_rng(3)
    f = np.concatenate([np.float32([0, -0.0, 1.5, -1.5, 2**31, -2**31, 2**40, -2**62, 2**63,
                                    -2**63, 1e30, np.nan, np.inf, -np.inf]),
                        (rng.standard_normal(n) * 1e12).astype(np.float32)])[:n]
    i = rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)
    graph = _graph(n, 4)
    program, _ = pipeline.build(graph, "webgpu")
    got = webgpu.Executable(program).run([x, y, f, i])
    with np.errstate(all="ignore"):
        want = evaluate(graph, [x, y, f, i])
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, k
        bad = ~((g == w) | (np.isnan(g) & np.isnan(w)) if g.dtype.kind == "f" else (g == w))
        assert not bad.any(), (k, x[bad.ravel()][:4] if bad.size == n else None,
                               g[bad][:4], w[bad][:4])


@pytest.mark.parametrize("value", [2**40 + 3, -2**63, 2**63 - 1])
def test_wide_values_round_trip_through_eager_ops(value):
    needs_device("webgpu")
    import neurenix as nx

    t = nx.tensor(np.array([value, 1], np.int64)).to("webgpu")
    np.testing.assert_array_equal((t + 0).numpy(), [value, 1])
    assert t.sum().item() == (value + 1 + 2**63) % 2**64 - 2**63  # wrapping
