"""Toolchain proofs of the CUDA and HIP targets, without a GPU: every program of the corpus
(tests/gpu_corpus.py: the parity suite's case tables and the spec models, forward, backward,
inference and training steps) is generated whole and compiled by NVIDIA's and AMD's real
compilers: NVRTC to PTX and ptxas to machine code for sm_80 (A100) and sm_90 (H100/H200);
hipcc to code objects for gfx90a (CDNA2, 64-lane wavefronts) and an RDNA architecture
(gfx1100 where ROCm's device library has it, else gfx1030; 32-lane wavefronts).

Programs compile in batches, each one translation unit (the preamble once, then the programs'
kernels, uniquely named), two batches at a time.  A toolchain that is absent skips these
tests naming it, except where `NEURENIX_REQUIRE_TOOLCHAINS` lists it (CI: "cuda,hip"), where
an absent one fails.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor

import gpu_corpus
import pytest
from neurenix.compiler.codegen import ptxas
from neurenix.compiler.codegen.cuda import CUDA, TF32_PRELUDE
from neurenix.compiler.codegen.hip import HIP
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.targets import get_target
from neurenix.runtime import hip_compile, nvrtc
from test_codegen_cstyle import gpu_program, structural_graphs

CUDA_ARCHS = (80, 90)
BATCH_CHARS = 300_000
"""Source characters per translation unit (the corpus is about 2 MB of CUDA)."""


def _require(toolchain: str, reason: str) -> None:
    """Skip (or, where CI requires `toolchain`, fail) for an absent toolchain."""
    required = {t.strip() for t in os.environ.get("NEURENIX_REQUIRE_TOOLCHAINS", "").split(",")}
    if toolchain in required:
        pytest.fail(f"{toolchain} toolchain required here (NEURENIX_REQUIRE_TOOLCHAINS): {reason}")
    pytest.skip(f"{toolchain} toolchain absent: {reason}")


def _need_cuda() -> None:
    try:
        nvrtc.version()
        ptxas.find()
    except (nvrtc.NVRTCError, ptxas.PTXASError) as e:
        _require("cuda", str(e))


def _need_hip() -> None:
    try:
        hip_compile.hipcc()
    except hip_compile.HIPCompileError as e:
        _require("hip", str(e))


def _rdna() -> str:
    archs = hip_compile.buildable_archs()
    return "gfx1100" if "gfx1100" in archs else "gfx1030"


def _batches(sources: list[tuple[str, str]], preamble: str) -> list[str]:
    """The corpus as translation units: the preamble, then programs up to BATCH_CHARS."""
    units, current, size = [], [], 0
    for name, source in sources:
        assert source.startswith(preamble), f"{name}: the unit does not start with the preamble"
        body = source[len(preamble):]
        if current and size + len(body) > BATCH_CHARS:
            units.append(preamble + "\n".join(current))
            current, size = [], 0
        current.append(body)
        size += len(body)
    return units + ([preamble + "\n".join(current)] if current else [])


def _cuda_unit(unit: str) -> list[tuple[int, int]]:
    """(arch, cubin bytes) of one unit for every CUDA_ARCHS (in a worker process)."""
    return [(arch, len(ptxas.assemble(nvrtc.compile_ptx(unit, arch), arch)))
            for arch in CUDA_ARCHS]


def _hip_unit(unit: str, archs: tuple[str, ...]) -> int:
    return len(hip_compile.compile_code_object(unit, archs))


def _compile_all(fn, units: list[str], *args) -> list:
    with ProcessPoolExecutor(max_workers=2) as pool:
        return list(pool.map(fn, units, *[[a] * len(units) for a in args]))


def test_the_corpus_covers_every_schedule_and_dtype():
    """The corpus reaches what the dialects render differently: every GPU schedule (warp
    shuffles included), int64, float64, bools, shared-memory tiles."""
    text = "\n".join(s for _, s in gpu_corpus.sources("cuda"))
    for what in ("grid loop", "group reduction", "tiled contraction", "one work-item",
                 "__shfl_down_sync", "__shared__", "long long", "double", "unsigned char",
                 "nx_bits<"):
        assert what in text, f"the corpus never renders {what!r}"
    assert len(gpu_corpus.graphs()) > 400


def test_every_corpus_program_compiles_with_nvrtc_and_assembles_with_ptxas():
    _need_cuda()
    units = _batches(gpu_corpus.sources("cuda"), CUDA().preamble())
    results = _compile_all(_cuda_unit, units)
    assert all(size > 0 for per_unit in results for _, size in per_unit)
    assert {arch for per_unit in results for arch, _ in per_unit} == set(CUDA_ARCHS)


def _tensor_core_unit(unit: str) -> list[tuple[int, int]]:
    """(arch, `mma` instructions in the PTX) of one unit for sm_75 (the float32 loop),
    sm_80 and sm_90, each assembled by ptxas."""
    counts = []
    for arch in (75, *CUDA_ARCHS):
        ptx = nvrtc.compile_ptx(unit, arch)
        assert ptxas.assemble(ptx, arch)
        counts.append((arch, ptx.count(b"mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32")))
    return counts


def test_tensor_core_programs_compile_with_and_without_tensor_cores():
    """Every corpus program whose contractions take TF32 tensor cores (the cuda_tf32 target):
    `mma` on sm_80 and sm_90, the float32 loop of the same source on sm_75."""
    _need_cuda()
    sources = [(n, s) for n, s in gpu_corpus.sources("cuda_tf32") if "nx_mma_tf32(" in s]
    assert len(sources) >= 5, "the corpus has too few large float32 contractions"
    units = _batches(sources, CUDA().preamble() + TF32_PRELUDE + "\n")
    for counts in _compile_all(_tensor_core_unit, units):
        found = dict(counts)
        assert found[75] == 0 and found[80] > 0 and found[90] > 0, found


def test_every_corpus_program_compiles_with_hipcc():
    _need_hip()
    archs = ("gfx90a", _rdna())
    units = _batches(gpu_corpus.sources("hip"), HIP().preamble())
    assert all(size > 0 for size in _compile_all(_hip_unit, units, archs))


def _structural(target: str) -> str:
    """The renderer's structural graphs (every lowering of the core primitives, argmax ties,
    work-group reductions of ints and floats, tiled GEMMs, LSTM) as one program."""
    from kernel_helpers import merge
    caps = get_target(target).capabilities
    return gpu_program(merge([lower(g, caps=caps) for g, _ in structural_graphs().values()]),
                       target).source


def test_the_structural_graphs_compile_for_every_architecture():
    """The kernels the OpenCL tests run, on CUDA and HIP: warp shuffles of floats, ints and
    argmax indices among them."""
    _need_cuda()
    _need_hip()
    cuda, hip = _structural("cuda"), _structural("hip")
    assert cuda.count("__shfl_down_sync") >= 10 and hip.count("__shfl_down(") >= 10
    for arch in CUDA_ARCHS:
        assert ptxas.assemble(nvrtc.compile_ptx(cuda, arch), arch)
    assert hip_compile.compile_code_object(hip, ("gfx90a", _rdna()))


def test_a_refused_program_names_the_compiler_and_the_line():
    _need_cuda()
    with pytest.raises(nvrtc.NVRTCError, match=r"(?s)NVRTC refused.*undefined"):
        nvrtc.compile_ptx('extern "C" __global__ void k(float* a) { a[0] = b; }', 80)
    with pytest.raises(nvrtc.NVRTCError, match=r"cannot generate code for compute capability "
                                               r"5\.2 \(it supports .*8\.0"):
        nvrtc.compile_ptx('extern "C" __global__ void k() {}', 52)


def test_ptxas_refuses_ptx_of_an_unknown_isa_naming_it():
    _need_cuda()
    ptx = nvrtc.compile_ptx('extern "C" __global__ void k(float* a) { a[0] = 1.0f; }', 80)
    newer = re.sub(rb"\.version \d+\.\d+", b".version 99.0", ptx)
    with pytest.raises(ptxas.PTXASError, match=r"ptxas refused the PTX for sm_80"):
        ptxas.assemble(newer, 80)


def test_hipcc_refuses_an_architecture_without_a_device_library():
    _need_hip()
    missing = "gfx1100" if "gfx1100" not in hip_compile.buildable_archs() else "gfx9999"
    with pytest.raises(hip_compile.HIPCompileError, match=rf"no bitcode for {missing}"):
        hip_compile.compile_code_object('extern "C" __global__ void k() {}', (missing,))


def test_hipcc_leaves_no_temporary_folders():
    """clang's offload bundler leaves an empty kernels-XXXXXX folder in $TMPDIR per compile:
    hipcc runs with TMPDIR in the folder compile_code_object removes."""
    _need_hip()
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "kernels-*")
    before = set(glob.glob(pattern))
    hip_compile.compile_code_object(HIP().preamble() + 'extern "C" __global__ void k(float* x) '
                                    "{ x[threadIdx.x] = 1.0f; }\n", ("gfx90a",))
    assert set(glob.glob(pattern)) <= before
