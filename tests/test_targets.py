"""The target table (`compiler/targets.py`) and the pipeline's stage list per target."""
from __future__ import annotations

import numpy as np
import pytest
import toy_target
from neurenix.compiler import evaluate, parse_graph
from neurenix.compiler.debug import spec
from neurenix.compiler.passes.manager import StageError
from neurenix.compiler.pipeline import build, codegen_stages
from neurenix.compiler.targets import (
    Capabilities,
    Target,
    get_target,
    register_target,
    target_names,
    unregister_target,
)

GRAPH = """
graph main(%x: f32[4,3], %w: f32[2,3] param) {
  %0 = permute(%w) {perm=(1, 0)} : f32[3,2]
  %1 = matmul(%x, %0) : f32[4,2]
  %2 = exp(%1) : f32[4,2]
  %3 = reduce_sum(%2) {axes=(1,)} : f32[4]
  return %3
}
"""


@pytest.fixture
def toy():
    registered = toy_target.NAME in target_names()  # the parity suite keeps it registered
    target = toy_target.register()
    yield target
    if not registered:
        toy_target.unregister()


def test_builtin_targets_and_their_rows():
    assert {"llvm", "reference"} <= set(target_names())
    llvm = get_target("llvm")
    assert llvm.device == "cpu" and llvm.runtime == "neurenix.runtime.cpu"
    assert llvm.capabilities.threads == "pool" and llvm.capabilities.vector_bits >= 128
    assert get_target("reference").generator is None


def test_unknown_target_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown target 'tpu'; known targets: \[.*'llvm'"):
        get_target("tpu")
    with pytest.raises(TypeError, match="target name must be a str, got int"):
        get_target(3)


def test_registering_twice_needs_replace_and_builtins_stay(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_target(toy)
    with pytest.raises(ValueError, match="built-in"):
        unregister_target("llvm")
    with pytest.raises(TypeError, match="expected a Target, got dict"):
        register_target({"name": "x"})


def test_a_probe_must_return_capabilities():
    bad = Target("bad-probe", "cpu", lambda: {"vector_bits": 4}, None, None)
    register_target(bad)
    try:
        with pytest.raises(TypeError, match="its probe must return Capabilities, got dict"):
            _ = bad.capabilities
    finally:
        unregister_target("bad-probe")


def test_stage_list_runs_every_level_in_order(toy):
    names = [s.name for s in codegen_stages(get_target("llvm"))]
    assert names[0] == "strip_stop_gradient" and names[-1] == "codegen"
    assert names.index("lower") < names.index("memory_plan") < names.index("codegen")
    assert all(s.why for s in codegen_stages(toy))


@pytest.mark.parametrize("name", ["llvm", "kernel-eval"])
def test_build_through_the_table_matches_the_graph(toy, name):
    graph = parse_graph(GRAPH)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    with spec(True):
        program, info = build(graph, name)
    assert info["kernels"] >= 1 and info["planned_bytes"] <= info["naive_bytes"]
    exe = get_target(name).runtime_module().Executable(program)
    np.testing.assert_allclose(exe.run([x, w])[0], evaluate(graph, [x, w])[0], rtol=1e-5)


def test_the_toy_target_plans_with_its_own_alignment(toy):
    program, _ = build(parse_graph(GRAPH), "kernel-eval")
    assert all(offset % 256 == 0 for offset in program.plan.offsets.values())


def test_spec_names_a_broken_codegen_stage(toy, monkeypatch):
    def broken(kernels, plan, target=None):
        return None

    monkeypatch.setattr(toy_target, "generate", broken)
    with spec(True), pytest.raises(StageError, match="stage 'codegen' produced an invalid"):
        build(parse_graph(GRAPH), "kernel-eval")


def test_capabilities_defaults_are_the_cpus():
    caps = Capabilities()
    assert caps.alignment == 64 and caps.native_ops is None and caps.preferred_index_bits == 64


def test_the_memory_plan_check_finds_overlapping_live_buffers():
    from neurenix.compiler.kernel.memory import plan_memory
    from neurenix.compiler.lowering.lower import lower
    kernels = lower(parse_graph(SOFTMAX), fuse=False)
    plan = plan_memory(kernels)
    plan.check(kernels)
    temps = kernels.temporaries()
    assert len(temps) >= 2
    plan.offsets = {n: 0 for n in temps}
    with pytest.raises(ValueError, match="are live together .* overlap in the arena"):
        plan.check(kernels)
    plan.offsets = {n: 8 for n in temps}
    with pytest.raises(ValueError, match="is not aligned to 64"):
        plan.check(kernels)


SOFTMAX = """
graph main(%x: f32[4,8]) {
  %0 = reduce_max(%x) {axes=(1,)} : f32[4]
  %1 = reshape(%0) {shape=(4, 1)} : f32[4,1]
  %2 = expand(%1) {shape=(4, 8)} : f32[4,8]
  %3 = sub(%x, %2) : f32[4,8]
  %4 = exp(%3) : f32[4,8]
  %5 = reduce_sum(%4) {axes=(1,)} : f32[4]
  %6 = reshape(%5) {shape=(4, 1)} : f32[4,1]
  %7 = expand(%6) {shape=(4, 8)} : f32[4,8]
  %8 = div(%4, %7) : f32[4,8]
  return %8
}
"""


def test_the_toy_target_places_buffers_at_256_bytes(toy):
    program, _ = build(parse_graph(SOFTMAX), "kernel-eval")
    offsets = set(program.plan.offsets.values())
    assert len(offsets) >= 2 and all(o % 256 == 0 for o in offsets)


def test_the_default_target_and_source_suffixes():
    from neurenix.compiler.targets import default_target
    assert default_target() == "llvm"  # llvmlite is a core dependency
    assert get_target("llvm").source_suffix == ".ll"
    assert get_target("reference").source_suffix == ".txt"


def test_debug_levels_print_each_level_once(capsys):
    from neurenix.compiler.debug import debug
    with debug(4):
        build(parse_graph(GRAPH), "llvm")
    err = capsys.readouterr().err
    assert "=== after simplify: 4 -> 4 ops" in err and "=== after lower: 4 ops -> 2 kernels" in err
    assert "=== after schedule: 2 -> 2 kernels" in err and "kernel k0_" in err
    assert "=== after codegen:" in err and 'define void @"neurenix_entry"' in err
    with debug(2):
        build(parse_graph(GRAPH), "llvm")
    err = capsys.readouterr().err
    assert "=== after simplify" in err and "=== after lower" not in err


@pytest.mark.parametrize("field,value,expected", [
    ("vector_bits", 384, "0 or a power of two >= 64"),
    ("vector_bits", 32, "0 or a power of two >= 64"),
    ("threads", "gpu", "'pool', 'grid' or 'none'"),
    ("index_bits", (16,), "a non-empty tuple of 32 and/or 64"),
    ("index_bits", (), "a non-empty tuple of 32 and/or 64"),
    ("alignment", 48, "a positive power of two"),
    ("inline_unfold_limit", -1, "a non-negative int"),
])
def test_capabilities_refuse_what_no_generator_can_honour(field, value, expected):
    with pytest.raises(ValueError, match=f"Capabilities: {field} must be {expected}"):
        Capabilities(**{field: value})
    with pytest.raises(ValueError, match="preferred_index_bits must be one of index_bits"):
        Capabilities(index_bits=(64,), preferred_index_bits=32)


@pytest.mark.parametrize("field,kw", [
    ("name", dict(name=5)), ("name", dict(name="")), ("probe", dict(probe=5)),
    ("generator", dict(generator="neurenix.compiler.codegen.llvm")),
    ("rules", dict(rules=["x"])), ("runtime", dict(runtime=3)),
])
def test_target_rows_name_the_bad_field(field, kw):
    row = dict(name="bad-row", device="cpu", probe=Capabilities,
               generator="neurenix.compiler.codegen.llvm:generate",
               runtime="neurenix.runtime.cpu")
    with pytest.raises(TypeError, match=f"Target: {field} must be"):
        Target(**{**row, **kw})


def test_identity_changes_with_the_capability_record():
    a = Target("id-a", "cpu", lambda: Capabilities(alignment=64), None, None)
    b = Target("id-a", "cpu", lambda: Capabilities(alignment=256), None, None)
    assert a.identity() != b.identity() and "alignment=256" in b.identity()


def test_a_generator_returning_no_program_is_a_clear_error(toy, monkeypatch):
    monkeypatch.setattr(toy_target, "generate", lambda kernels, plan, target=None: None)
    with spec(False), pytest.raises(TypeError, match="its generator .* returned NoneType, "
                                                     "expected a runtime Program"):
        build(parse_graph(GRAPH), "kernel-eval")


def test_opencl_code_generates_without_a_device(monkeypatch):
    """Without pyopencl (or a device) the OpenCL probe gives OpenCL's minimums and allows
    float64 (regression: it refused float64, so generating code without a device failed)."""
    import builtins

    from neurenix.compiler.codegen import opencl
    real_import = builtins.__import__

    def no_pyopencl(name, *args, **kwargs):
        if name == "pyopencl":
            raise ImportError("no pyopencl")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyopencl)
    caps = opencl.capabilities()
    assert caps.float64 and caps.threads == "grid" and caps.max_workgroup_size == 256
