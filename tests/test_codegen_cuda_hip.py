"""The CUDA and HIP dialects of the C-family renderer: what they render differently from
OpenCL C and WGSL (warp-shuffle reductions, literals, bit casts) and the limits the generator
checks.  That the code compiles is proved by tests/test_toolchain_cuda_hip.py; that it
computes the right values needs a GPU (tests/test_runtime_cuda.py, docs/targets/cuda.md)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from neurenix.compiler import GraphBuilder
from neurenix.compiler.codegen.cstyle import GridCodegenError, generate_program
from neurenix.compiler.codegen.cuda import CUDA
from neurenix.compiler.codegen.hip import HIP
from neurenix.compiler.kernel.decompose import decompose
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule.rules import schedule_kernels, target_rules
from neurenix.compiler.targets import Target, get_target, register_target, unregister_target
from neurenix.compiler.types import float32, float64, int32, int64, uint32
from test_codegen_cstyle import gpu_program
from test_lower import T


def _sum_rows(rows: int, length: int, op: str = "reduce_sum", dtype=None):
    b = GraphBuilder()
    x = b.input("x", T(rows, length) if dtype is None else T(rows, length, dtype=dtype))
    if op in ("argmax", "argmin"):
        return b.build([b.apply(op, x, axis=1)])
    return b.build([b.apply(op, x, axes=(1,))])


def _source(graph, target: str) -> str:
    return gpu_program(lower(graph, caps=get_target(target).capabilities), target).source


@pytest.mark.parametrize("target, shuffle", [("cuda", "__shfl_down_sync(0xffffffffu, "),
                                             ("hip", "__shfl_down(")])
def test_a_work_group_reduction_ends_in_warp_shuffles(target, shuffle):
    """256 partials: three local-memory levels (128, 64, 32 pairs), then shuffles over the
    first 32 lanes at offsets 16, 8, 4, 2, 1: the tree's pairs in its order."""
    source = _source(_sum_rows(4, 1000), target)
    assert "group reduction" in source and "grid 4 of 256" in source
    assert re.search(r"for \(int s0 = 0; s0 < 3; s0 \+= 1\)", source)
    offsets = [int(m) for m in re.findall(re.escape(shuffle) + r"wv0, (\d+)\)", source)]
    assert offsets == [16, 8, 4, 2, 1]
    assert "if (lid0 < 32)" in source


def test_argmax_shuffles_the_value_and_its_index():
    source = _source(_sum_rows(3, 2000, "argmax"), "cuda")
    assert len(re.findall(r"__shfl_down_sync\(0xffffffffu, wi0, \d+\)", source)) == 5
    assert len(re.findall(r"__shfl_down_sync\(0xffffffffu, wv0, \d+\)", source)) == 5


@pytest.mark.parametrize("target", ["opencl", "webgpu"])
def test_dialects_without_a_warp_reduce_in_local_memory_to_the_end(target):
    source = _source(_sum_rows(4, 1000), target)
    assert "shfl" not in source and "wv0" not in source


def test_a_work_group_smaller_than_a_warp_keeps_the_local_memory_tree():
    """A 16-wide work-group (a device limit) never shuffles: lanes 16..31 would be another
    group's."""
    cuda = get_target("cuda")
    small = register_target(replace(cuda, name="cuda-16", probe=lambda: replace(
        cuda.capabilities, max_workgroup_size=16)))
    try:
        source = _source(_sum_rows(2, 600), "cuda-16")
    finally:
        unregister_target(small.name)
    assert "__launch_bounds__(16)" in source and "shfl" not in source


def test_literals_and_bit_casts_are_cuda_cs():
    d = CUDA()
    assert d.int_literal(-(1 << 63), int64) == "(-9223372036854775807LL - 1LL)"
    assert d.int_literal(7, uint32) == "7u"
    assert d.float_bits(0x7FF8000000000000, float64) == "nx_bits<double>(0x7ff8000000000000ull)"
    assert d.convert("x", uint32, int32) == "nx_bits<int>(x)"
    assert d.call("max", ["a", "b"], int64) == "nx_max<long long>(a, b)"
    assert d.call("erf", ["a"], float64) == "erf(a)" and d.call("erf", ["a"], float32) == "erff(a)"
    assert HIP().preamble().startswith("#include <hip/hip_runtime.h>")
    assert not CUDA().preamble().startswith("#include")


def test_local_memory_over_the_limit_is_refused_naming_it():
    """A schedule made for one device's limits, generated for a smaller one."""
    cuda = get_target("cuda")
    caps = cuda.capabilities
    kernels = lower(_sum_rows(4, 1000), caps=caps)
    kernels = schedule_kernels(decompose(kernels, caps.native_ops), caps, target_rules(cuda))
    tight = Target("cuda-tight", "cuda", lambda: replace(caps, local_memory_bytes=512),
                   cuda.generator, cuda.runtime, rules=cuda.rules)
    register_target(tight)
    try:
        with pytest.raises(GridCodegenError, match=r"cuda: kernel \w+ needs 1024 bytes of "
                                                   r"local \(shared\) memory, more than the "
                                                   r"limit of 512 bytes"):
            generate_program(kernels, plan_memory(kernels, 256, 1), tight, CUDA())
    finally:
        unregister_target(tight.name)
