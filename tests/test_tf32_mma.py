"""TF32 tensor cores for float32 contractions (the `cuda_tf32` target,
`neurenix.backends.allow_tf32`): which kernels take them, that the generated CUDA compiles
for sm_80/sm_90 (tensor cores) and sm_75 (the float32 loop of the same source), and that the
renderer's fragment indexing is right, without a GPU: the same renderer output run on
OpenCL (PoCL) with `mma.sync` emulated by each warp through local memory, the fragment
layouts taken from the PTX ISA (independently of the renderer's).
"""
from __future__ import annotations

import numpy as np
import pytest
from devices import needs_device
from neurenix.compiler import GraphBuilder
from neurenix.compiler.codegen.cstyle import generate_program
from neurenix.compiler.codegen.cuda import CUDA, TF32_PRELUDE
from neurenix.compiler.codegen.opencl import OpenCL
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.pipeline import build
from neurenix.compiler.targets import get_target
from neurenix.compiler.types import float32, float64, int32
from test_gpu_tiled_contraction import forced_kernels
from test_lower import T

EMULATION = """\
uint nx_tf32(float x) {
  uint u = as_uint(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  /* round half away from zero */
  return u & 0xffffe000u;
}
/* mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, one warp of 32 work-items: lane l
   (g = l / 4, q = l % 4) holds A (16 x 8) at (g, q), (g + 8, q), (g, q + 4), (g + 8, q + 4),
   B (8 x 8) at (q, g), (q + 4, g), and C (16 x 8) at (g, 2q), (g, 2q + 1), (g + 8, 2q),
   (g + 8, 2q + 1): the PTX ISA's fragment layouts for .m16n8k8 with .tf32. */
void nx_mma(float* c0, float* c1, float* c2, float* c3, uint a0, uint a1, uint a2, uint a3,
            uint b0, uint b1, __local uint* fa, __local uint* fb) {
  const uint lid = get_local_id(0), lane = lid % 32u, warp = lid - lane;
  fa[lid * 4u] = a0; fa[lid * 4u + 1u] = a1; fa[lid * 4u + 2u] = a2; fa[lid * 4u + 3u] = a3;
  fb[lid * 2u] = b0; fb[lid * 2u + 1u] = b1;
  barrier(CLK_LOCAL_MEM_FENCE);
  float* c[4] = {c0, c1, c2, c3};
  float sums[4];
  for (uint r = 0u; r < 4u; r++) {
    const uint row = lane / 4u + 8u * (r / 2u), col = 2u * (lane % 4u) + r % 2u;
    float s = *c[r];
    for (uint k = 0u; k < 8u; k++) {
      const uint la = warp + (row % 8u) * 4u + k % 4u, ra = row / 8u + 2u * (k / 4u);
      const uint lb = warp + col * 4u + k % 4u, rb = k / 4u;
      s += as_float(fa[la * 4u + ra]) * as_float(fb[lb * 2u + rb]);
    }
    sums[r] = s;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint r = 0u; r < 4u; r++) *c[r] = sums[r];
}
"""


class EmulatedTF32(OpenCL):
    """OpenCL C whose TF32 contractions call `nx_mma`, the emulation above."""

    tf32_guard = "1"

    def tf32(self, x: str) -> str:
        return f"nx_tf32({x})"

    def mma_tf32(self, acc: list[str], a: list[str], b: list[str]) -> str:
        return f"nx_mma({', '.join('&' + c for c in acc)}, {', '.join(a + b)}, nx_fa, nx_fb);"

    def kernel(self, name, params, block, local, body, comment) -> str:
        if any("nx_mma(" in line for line in body):
            threads = int(np.prod(block))
            local = [*local, ("nx_fa", int32, 4 * threads), ("nx_fb", int32, 2 * threads)]
        return super().kernel(name, params, block, local, body, comment).replace(
            "__local int nx_f", "__local uint nx_f")

    def unit(self, sources, kernels) -> str:
        return EMULATION + super().unit(sources, kernels)


def _emulated(graph, micro=None, swap=False, tf32=True):
    target = get_target("opencl")
    kernels = forced_kernels(graph, target, micro, swap)
    caps = target.capabilities
    dialect = EmulatedTF32() if tf32 else OpenCL(caps.float64)
    return generate_program(kernels, plan_memory(kernels, caps.alignment, caps.bool_bytes),
                            target, dialect)


def _matmul_graph(batch, m, k, n, bias=True, dtype=float32):
    b = GraphBuilder()
    x, w = b.input("x", T(*batch, m, k, dtype=dtype)), b.input("w", T(*batch, k, n, dtype=dtype))
    out = b.matmul(x, w)
    if bias:
        c = b.input("bias", T(n, dtype=dtype))
        out = b.add(out, b.expand(b.reshape(c, shape=(1,) * (len(batch) + 1) + (n,)),
                                  shape=out.type.shape))
    return b.build([out])


def _tf32(x: np.ndarray) -> np.ndarray:
    """`x` rounded to TF32 as cvt.rna does (half away from zero, 10 mantissa bits)."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


# ---- which kernels take tensor cores ------------------------------------------------------


def _source(graph, target: str) -> str:
    return build(graph, target)[0].source


def test_float32_contractions_get_tensor_cores_and_a_float32_fallback():
    source = _source(_matmul_graph((), 256, 300, 200), "cuda_tf32")
    assert "#if __CUDA_ARCH__ >= 800" in source and "#else" in source
    assert source.count("nx_mma_tf32(") > 1 and TF32_PRELUDE in source
    assert source.startswith(CUDA().preamble())


@pytest.mark.parametrize("graph, why", [
    (_matmul_graph((), 256, 300, 200), "the plain cuda target"),
    (_matmul_graph((), 256, 300, 200, dtype=float64), "float64"),
    (_matmul_graph((), 20, 30, 40), "one output per thread (16 x 16 tiles)"),
], ids=["cuda", "float64", "small"])
def test_no_tensor_cores_where_they_do_not_apply(graph, why):
    target = "cuda" if why == "the plain cuda target" else "cuda_tf32"
    source = _source(graph, target)
    assert "nx_mma_tf32" not in source and "__CUDA_ARCH__" not in source, why


def test_hip_never_takes_tf32():
    assert "mma" not in _source(_matmul_graph((), 256, 300, 200), "hip")


# ---- the fragment indexing, on OpenCL with mma emulated ---------------------------------


CASES = [((2,), 67, 90, 131, None, False), ((), 256, 300, 200, None, False),
         ((), 64, 64, 64, (4, 4), False), ((), 70, 40, 50, (2, 2), False),
         ((3,), 33, 17, 65, (2, 4), False), ((2,), 67, 90, 131, None, True)]


@pytest.mark.parametrize("batch, m, k, n, micro, swap", CASES)
def test_emulated_tensor_cores_sum_exactly_on_tf32_values(batch, m, k, n, micro, swap):
    """Small integers are exact in TF32 and in float32 sums: any fragment placed wrong shows
    as a wrong output, bit for bit."""
    needs_device("opencl")
    from neurenix.runtime.opencl import OpenCLExecutable
    program = _emulated(_matmul_graph(batch, m, k, n), micro, swap)
    assert "nx_mma(" in program.source
    rng = np.random.default_rng(m + k + n)
    x = rng.integers(-8, 9, (*batch, m, k)).astype(np.float32)
    w = rng.integers(-8, 9, (*batch, k, n)).astype(np.float32)
    bias = rng.integers(-8, 9, n).astype(np.float32)
    got = OpenCLExecutable(program).run([x, w, bias])[0]
    np.testing.assert_array_equal(got, (x.astype(np.float64) @ w + bias).astype(np.float32))


def test_emulated_tensor_cores_round_operands_to_tf32():
    """Random operands: the products of TF32-rounded operands, summed in float32 (close to
    NumPy on rounded inputs, off from the exact float32 product by TF32's precision)."""
    needs_device("opencl")
    from neurenix.runtime.opencl import OpenCLExecutable
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((200, 300), np.float32), rng.standard_normal((300, 150),
                                                                             np.float32)
    bias = np.zeros(150, np.float32)
    graph = _matmul_graph((), 200, 300, 150)
    got = OpenCLExecutable(_emulated(graph)).run([x, w, bias])[0]
    exact = OpenCLExecutable(_emulated(graph, tf32=False)).run([x, w, bias])[0]
    rounded = _tf32(x).astype(np.float64) @ _tf32(w)
    scale = np.abs(x).astype(np.float64) @ np.abs(w)
    assert np.max(np.abs(got - rounded) / scale) < 1e-6
    assert np.max(np.abs(exact - rounded) / scale) > 1e-5  # TF32 rounding did happen
    assert np.max(np.abs(got - exact) / scale) < 2e-3


def test_emulated_tensor_cores_in_a_convolution():
    needs_device("opencl")
    from neurenix.runtime.opencl import OpenCLExecutable

    import neurenix as nx
    from neurenix.nn import functional as F
    traced = nx.compile(lambda x, k: F.conv2d(x, k, padding=1), backend="reference")
    traced(nx.zeros((2, 8, 20, 20)), nx.zeros((64, 8, 3, 3)))
    graph = traced.graph  # pad, unfold, matmul
    program = _emulated(graph)
    if "nx_mma(" not in program.source:
        pytest.fail("the convolution took no tiled contraction with tensor cores: "
                    + "; ".join(program.metadata["schedules"].values()))
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, (2, 8, 20, 20)).astype(np.float32)
    k = rng.integers(-4, 5, (64, 8, 3, 3)).astype(np.float32)
    got = OpenCLExecutable(program).run([x, k])[0]
    plain = OpenCLExecutable(_emulated(graph, tf32=False)).run([x, k])[0]
    np.testing.assert_array_equal(got, plain)


# ---- neurenix.backends.allow_tf32 ---------------------------------------------------------


@pytest.fixture
def tf32_off():
    import neurenix as nx
    yield nx.backends
    nx.backends.allow_tf32 = False


def test_the_switch_is_off_by_default_and_takes_only_bools(tf32_off):
    from neurenix.compilation.placement import backend_for
    from neurenix.device import Device
    assert tf32_off.allow_tf32 is False
    with pytest.raises(TypeError, match="allow_tf32 must be a bool, got int 1"):
        tf32_off.allow_tf32 = 1
    cuda = Device("cuda")
    assert backend_for(cuda, None) == "cuda"
    tf32_off.allow_tf32 = True
    assert backend_for(cuda, None) == "cuda_tf32"
    assert backend_for(cuda, "cuda") == "cuda"  # an explicit backend wins
    assert backend_for(Device("opencl"), None) == "opencl"


def test_eager_device_programs_are_kept_per_target(tf32_off):
    from neurenix.device import Device
    from neurenix.device_ops import _key
    before = _key("matmul", Device("cuda"), (), {})
    tf32_off.allow_tf32 = True
    assert _key("matmul", Device("cuda"), (), {}) != before


def test_flipping_the_switch_recompiles_and_says_why(tf32_off, monkeypatch, caplog):
    """A program compiled under one value of the switch is not reused under the other (here
    on the CPU, made to depend on the switch: the reference target while it is on)."""
    import logging

    from neurenix.compiler.targets import target_for_device

    import neurenix as nx
    from neurenix.compilation import placement
    monkeypatch.setattr(placement, "depends_on_switches", lambda kind: True)
    monkeypatch.setattr(placement, "target_for", lambda kind: "reference"
                        if tf32_off.allow_tf32 else target_for_device(kind))
    f = nx.compile(lambda a, b: a @ b)
    x, w = nx.ones((4, 3)), nx.ones((3, 2))
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        f(x, w)
        assert f.backend == target_for_device("cpu")
        tf32_off.allow_tf32 = True
        np.testing.assert_array_equal(f(x, w).numpy(), np.full((4, 2), 3.0, np.float32))
        assert f.backend == "reference"
        assert "neurenix.backends.allow_tf32: False -> True" in caplog.text
        tf32_off.allow_tf32 = False
        f(x, w)
        assert f.backend == target_for_device("cpu")


# ---- on a GPU (tools/gpu_check.sh) -----------------------------------------------------------


def test_tensor_cores_on_a_cuda_gpu(tf32_off):
    """A compiled float32 matmul on CUDA with TF32 allowed: exact on small integers, within
    TF32 rounding of the rounded operands' product on random values, exact float32 again when
    the switch goes back (compiled again)."""
    needs_device("cuda")
    import neurenix as nx
    rng = np.random.default_rng(2)
    f = nx.compile(lambda a, b: a @ b)
    ints = [rng.integers(-8, 9, s).astype(np.float32) for s in ((300, 200), (200, 260))]
    reals = [rng.standard_normal(s, np.float32) for s in ((300, 200), (200, 260))]
    with nx.no_grad():
        tf32_off.allow_tf32 = True
        got = f(*(nx.tensor(v).to("cuda") for v in ints)).cpu().numpy()
        np.testing.assert_array_equal(got, ints[0] @ ints[1])
        assert f.backend == "cuda_tf32"
        got = f(*(nx.tensor(v).to("cuda") for v in reals)).cpu().numpy()
        scale = np.abs(reals[0]).astype(np.float64) @ np.abs(reals[1])
        rounded = _tf32(reals[0]).astype(np.float64) @ _tf32(reals[1])
        assert np.max(np.abs(got - rounded) / scale) < 1e-5
        tf32_off.allow_tf32 = False
        exact = f(*(nx.tensor(v).to("cuda") for v in reals)).cpu().numpy()
        assert f.backend == "cuda"
        np.testing.assert_allclose(exact, reals[0].astype(np.float64) @ reals[1],
                                   rtol=0, atol=2e-5 * float(scale.max()))
