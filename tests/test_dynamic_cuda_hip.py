"""Shape-polymorphic programs on the CUDA and HIP targets (docs/compiler/dynamic-shapes.md).

Without a GPU: the symbolic graphs of an MLP forward, a reduction, a conv net and an MLP
training step (traced on the CPU target at a large batch, where contractions are tiled and
reductions take work-groups, and at a small one) are generated for CUDA and HIP: their sized
kernels take `long long` parameters after their buffers and step by `gridDim.x`; the sources
compile with NVRTC + ptxas (sm_80, sm_90) and hipcc (gfx90a and an RDNA architecture); and
the runtime's per-call launch path (runtime/gpu_driver.py) runs through a recording `Driver`:
grids, size parameters, temporaries inside the grown arena, outputs' shapes per call.  With a
GPU (`needs_device`): one program per function equals eager at every batch size.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import os
import re
from typing import Any

import numpy as np
import pytest
from devices import needs_device
from dynamic_cases import SIZES, sgd_step
from neurenix.compiler import pipeline
from neurenix.compiler.codegen import ptxas
from neurenix.compiler.codegen.cuda import CUDA, TF32_PRELUDE
from neurenix.compiler.codegen.hip import HIP
from neurenix.compiler.passes.manager import run_pipeline
from neurenix.compiler.schedule.grid import MAX_GROUPS
from neurenix.compiler.symbolic import current_env, shape_env
from neurenix.compiler.targets import get_target
from neurenix.runtime import cuda, gpu_driver, hip, hip_compile, nvrtc
from neurenix.runtime.sizes import Groups, extent_value
from test_runtime_cuda import H200
from test_runtime_hip import MI210
from test_toolchain_cuda_hip import CUDA_ARCHS, _need_cuda, _need_hip, _rdna

import neurenix
from neurenix import nn

SIGNATURE = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\)')
PTX_ENTRY = re.compile(r"\.entry (\w+)\(([^)]*)\)")


# ---- symbolic graphs, traced on the CPU target ------------------------------------------------


@contextlib.contextmanager
def _no_disk_cache():
    """Every program built (a cached one would skip `pipeline.build`, which records them)."""
    before = os.environ.get("NEURENIX_CACHE_DIR")
    os.environ["NEURENIX_CACHE_DIR"] = "off"
    try:
        yield
    finally:
        if before is None:
            del os.environ["NEURENIX_CACHE_DIR"]
        else:
            os.environ["NEURENIX_CACHE_DIR"] = before


def _x(*shape: int) -> Any:
    return neurenix.tensor(np.random.default_rng(shape[0]).standard_normal(shape)
                           .astype(np.float32))


def _mlp(width: int = 64) -> nn.Module:
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, 5))


def _conv() -> nn.Module:
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


def _reduction(x):
    return x.sum(0) * 2 + x.amax(1).sum() + x.mean()


WORKLOADS = {
    "mlp": (lambda: _mlp(), lambda n: (_x(n, 20),)),
    "reduction": (lambda: _reduction, lambda n: (_x(n, 300),)),
    "conv": (lambda: _conv(), lambda n: (_x(n, 3, 8, 8),)),
    "train": (lambda: sgd_step(_mlp(32)),
              lambda n: (_x(n, 20), neurenix.tensor(np.arange(n) % 5))),
}
"""name -> (the function, its arguments at batch n)."""


@functools.cache
def symbolic_graphs(name: str, n: int) -> tuple[tuple[Any, Any], ...]:
    """(graph, shape environment) of every symbolic program compiling workload `name` traced
    at batch `n` builds (forward and backward, or the whole training step)."""
    make, args = WORKLOADS[name]
    fn = make()
    with _grad_mode(name):
        captured = []
        build = pipeline.build

        def spy(graph, backend, donate=None):
            env = current_env()
            if env is not None:
                captured.append((graph, dataclasses.replace(env, symbols=dict(env.symbols),
                                                            guards=list(env.guards))))
            return build(graph, backend, donate)
        pipeline.build = spy
        try:
            with _no_disk_cache():
                neurenix.compile(fn, backend="llvm", dynamic=True)(*args(n))
        finally:
            pipeline.build = build
    assert captured, f"{name}: no symbolic program was built"
    return tuple(captured)


@contextlib.contextmanager
def _grad_mode(name: str):
    """Inference workloads trace without gradients (the forward program alone)."""
    with (contextlib.nullcontext() if name == "train" else neurenix.no_grad()):
        yield


def programs(name: str, n: int, target: str) -> list:
    """The `target` programs of workload `name` traced at batch `n`."""
    out = []
    for graph, env in symbolic_graphs(name, n):
        with shape_env(copy.deepcopy(env)):
            out.append(pipeline.build(graph, target)[0])
    return out


def unit(target: str, prefix: str = "") -> str:
    """Every workload's programs at both batches as one translation unit, the kernels of
    program i named `p<i>_<name>`."""
    t = get_target(target)
    stages = pipeline.codegen_stages(t)
    generate = t.generate()
    preamble = (HIP() if target == "hip" else CUDA()).preamble()
    bodies, tf32 = [], False
    i = 0
    for name in WORKLOADS:
        for n in (100, 3):
            for graph, env in symbolic_graphs(name, n):
                with shape_env(copy.deepcopy(env)):
                    planned, _ = run_pipeline(graph, stages[:-1])
                    kernels = dataclasses.replace(planned.kernels, kernels=[
                        dataclasses.replace(k, name=f"p{i}_{k.name}")
                        for k in planned.kernels.kernels])
                    source = generate(kernels, planned.plan, t).source
                i += 1
                assert source.startswith(preamble)
                body = source[len(preamble):]
                if body.startswith(TF32_PRELUDE):
                    body, tf32 = body[len(TF32_PRELUDE):], True
                bodies.append(body)
    return preamble + (TF32_PRELUDE + "\n" if tf32 else "") + "\n".join(bodies)


# ---- code generation --------------------------------------------------------------------------


def _signatures(source: str) -> dict[str, list[str]]:
    return {m.group(1): [p.strip() for p in m.group(2).split(",")]
            for m in SIGNATURE.finditer(source)}


@pytest.mark.parametrize("target", ["cuda", "hip"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_sized_kernels_take_long_long_sizes_after_their_buffers(target, name):
    for n in (100, 3):
        for program in programs(name, n, target):
            assert program.symbols == ("s0",)
            assert "size_checks" not in program.metadata  # 64-bit sizes: no size is too large
            sized = set(program.metadata["sized_kernels"])
            signatures = _signatures(program.source)
            assert set(signatures) == {k.name for k in program.kernels}
            for info in program.kernels:
                params = signatures[info.name]
                dynamic = not all(isinstance(g, int) for g in info.grid)
                assert not dynamic or info.name in sized, info.name
                if info.name in sized:
                    assert params[len(info.args):] == ["const long long s0"], params
                else:
                    assert len(params) == len(info.args) and "long long s0" not in params
                for g in info.grid:
                    assert not isinstance(g, Groups) or g.most == MAX_GROUPS


@pytest.mark.parametrize("target", ["cuda", "hip"])
def test_grid_stride_loops_step_by_the_blocks_launched(target):
    """Traced at 100 rows, the MLP's matmul is a tiled contraction whose tiles are counted
    per call; every loop over launched blocks steps by gridDim.x."""
    source = "\n".join(p.source for p in programs("mlp", 100, target))
    assert "tiled contraction" in source and "ceil(" in source
    assert "((long long)gridDim.x)" in source or "((int)gridDim.x)" in source
    assert "get_num_groups" not in source
    reduction = "\n".join(p.source for p in programs("reduction", 100, target))
    assert "group reduction" in reduction and "gridDim.x" in reduction


@pytest.mark.parametrize("device", [H200, MI210])
def test_a_dynamic_grid_fits_the_devices_limits_at_any_size(device):
    """Groups are capped at MAX_GROUPS blocks along x (the grid-stride loops do the rest):
    within CUDA's and HIP's 2^31 - 1, and blocks x threads within HIP's 2^32 work-items."""
    assert MAX_GROUPS <= device.max_grid[0]
    assert MAX_GROUPS * device.max_threads_per_block < 2 ** 32
    for program in programs("train", 100, "cuda"):
        for info in program.kernels:
            for n in (2, 10 ** 6, 2 ** 40):
                grid = [extent_value(g, {"s0": n}) for g in info.grid]
                assert all(1 <= g <= MAX_GROUPS for g in grid), (info.name, info.grid, n)


def test_both_targets_take_dynamic_sizes_and_static_programs_stay_static():
    assert get_target("cuda").capabilities.dynamic_shapes
    assert get_target("hip").capabilities.dynamic_shapes
    assert get_target("cuda_tf32").capabilities.dynamic_shapes
    from test_runtime_cuda import build, small_graph
    program = build(small_graph()[0], "cuda")
    assert not program.symbols and "sized_kernels" not in program.metadata
    assert "gridDim" not in program.source and "long long s" not in program.source


# ---- toolchains -------------------------------------------------------------------------------


def test_symbolic_programs_compile_with_nvrtc_and_assemble_with_ptxas():
    _need_cuda()
    for target in ("cuda", "cuda_tf32"):
        source = unit(target)
        assert "const long long s0" in source
        assert ("nx_mma_tf32(" in source) == (target == "cuda_tf32")  # tiles of dynamic count
        signatures = _signatures(source)
        for arch in CUDA_ARCHS:
            ptx = nvrtc.compile_ptx(source, arch)
            assert ptxas.assemble(ptx, arch)
            entries = {m.group(1): m.group(2) for m in PTX_ENTRY.finditer(ptx.decode())}
            assert set(entries) == set(signatures)
            for name, params in entries.items():  # every parameter 8 bytes, sizes included
                assert params.count(".param .u64") == params.count(".param") == \
                    len(signatures[name]), name


def test_symbolic_programs_compile_with_hipcc():
    _need_hip()
    source = unit("hip")
    assert "const long long s0" in source and "gridDim.x" in source
    assert hip_compile.compile_code_object(source, ("gfx90a", _rdna()))


# ---- the runtime's per-call launch path, on a recording driver --------------------------------


class Recorder:
    """A driver table that allocates addresses and records every launch (nothing runs)."""

    def __init__(self) -> None:
        self.next = 1 << 20
        self.allocations: dict[int, int] = {}
        self.launches: list[tuple[str, tuple, tuple, list[int], tuple | None]] = []
        self.syncs = 0

    def alloc(self, nbytes: int) -> tuple:
        ptr = self.next
        self.allocations[ptr] = nbytes
        self.next += (nbytes + 4095) // 4096 * 4096 + 4096
        return 0, ptr

    def launch(self, fn: str, grid: tuple, block: tuple, stream: Any, pointers: list[int],
               *sizes: tuple) -> tuple:
        assert len(sizes) <= 1
        self.launches.append((fn, tuple(grid), tuple(block), list(pointers),
                              sizes[0] if sizes else None))
        return (0,)

    def sync(self, stream: Any) -> tuple:
        self.syncs += 1
        return (0,)

    def driver(self) -> gpu_driver.Driver:
        limits = {"max_threads": 1024, "shared_bytes": 0, "registers": 32}
        done = lambda *args: (0,)  # noqa: E731
        return gpu_driver.Driver(
            ok=lambda status: status == 0, error_name=str, error_string=str,
            activate=done, alloc=self.alloc, free=done, mem_info=lambda: (0, 1 << 30, 1 << 30),
            upload=done, download=done, copy=done, stream_create=lambda: (0, "stream"),
            stream_sync=self.sync, module_load=lambda image: (0, "module"),
            module_unload=done, function=lambda module, name: (0, name),
            function_attribute=lambda fn, key: (0, limits[key]), launch=self.launch)


@pytest.fixture
def recorded():
    """(recorder, Executable class, Buffer class) of a fake CUDA device."""
    rec = Recorder()
    runtime = gpu_driver.Runtime("cuda", lambda: (rec.driver(), H200), lambda src, info: b"ptx")

    class Buffer(gpu_driver.GPUBuffer):
        device = "cuda"

    Buffer.runtime = runtime

    class Executable(gpu_driver.GPUExecutable):
        buffer_type = Buffer

    Executable.runtime = runtime
    return rec, Executable, Buffer


def _check_call(rec: Recorder, program, exe, n: int, start: int) -> None:
    """The launches recorded since `start` are the program's at s0 = n."""
    env = {"s0": n}
    sizes = program.sizes(env)
    sized = set(program.metadata["sized_kernels"])
    arena = exe._arena.ptr
    assert rec.allocations[arena] >= gpu_driver.arena_size(program, sizes)
    temps = {b.name: arena + sizes.offsets[b.name] for b in program.buffers if b.kind == "temp"}
    want = [info for info in program.kernels
            if 0 not in [extent_value(g, env) for g in info.grid]]
    got = rec.launches[start:]
    assert [g[0] for g in got] == [info.name for info in want]
    for (name, grid, block, pointers, values), info in zip(got, want):
        assert grid == tuple(extent_value(g, env) for g in info.grid) + (1,) * (
            3 - len(info.grid))
        assert block == tuple(info.block) + (1,) * (3 - len(info.block))
        assert len(pointers) == len(info.args)
        assert values == ((n,) if name in sized else None)
        for arg, ptr in zip(info.args, pointers):
            if arg in temps:
                assert ptr == temps[arg]
                spec = next(b for b in program.buffers if b.name == arg)
                end = ptr + sizes.elements[arg] * np.dtype(spec.dtype).itemsize
                assert arena <= ptr and end <= arena + rec.allocations[arena]


def test_two_batch_sizes_through_one_executable(recorded):
    """Per call: each launch's grid at the call's size, the size after the pointers of a sized
    kernel (none for the others), the temporaries inside the arena (grown for the larger
    call, after waiting for the kernels in flight), the outputs at the call's shapes."""
    rec, Executable, Buffer = recorded
    (program,) = programs("train", 100, "cuda")
    exe = Executable(program)
    assert exe.last_sizes == {}
    for n, grows in ((5, True), (300, True), (5, False), (300, False)):
        arena_before, syncs = exe._arena, rec.syncs
        inputs = [Buffer.empty(tuple(t.shape_at({"s0": n})), np.dtype(t.dtype))
                  for t in program.inputs]
        start = len(rec.launches)
        outputs = exe.run_device(inputs)
        assert [o.shape for o in outputs] == program.sizes({"s0": n}).output_shapes
        assert (exe._arena is not arena_before) == grows
        assert rec.syncs == syncs + (grows and arena_before is not None)
        _check_call(rec, program, exe, n, start)
        assert exe.last_sizes == {"s0": n}
    assert len(exe._layouts) == 2
    hosts = [np.zeros(tuple(t.shape_at({"s0": 7})), np.dtype(t.dtype)) for t in program.inputs]
    start = len(rec.launches)
    outs = exe.run(hosts)
    assert [o.shape for o in outs] == program.sizes({"s0": 7}).output_shapes
    _check_call(rec, program, exe, 7, start)
    with pytest.raises(ValueError, match=r"^cuda: input 'x' expects float32\[s0, 20\]"):
        exe.run_device([Buffer.empty((4, 21), np.float32)] + inputs[1:])
    with pytest.raises(ValueError, match=r"^cuda: tensor 1: expected shape \(s0\)"):
        exe.run_device([inputs[0], Buffer.empty((n + 1,), inputs[1].dtype)] + inputs[2:])


def test_a_grid_over_the_devices_limit_is_refused_per_call(recorded, monkeypatch):
    rec, Executable, Buffer = recorded
    (program,) = programs("mlp", 100, "cuda")
    small = dataclasses.replace(H200, max_grid=(3, 65535, 65535))
    exe = Executable(program)
    monkeypatch.setattr(exe._dev, "info", small)
    x = Buffer.empty((2, 20), np.float32)
    exe.run_device([x] + [Buffer.empty(tuple(t.shape), np.dtype(t.dtype))
                          for t in program.inputs[1:]])
    with pytest.raises(ValueError, match=r"blocks along x, more than the device's 3"):
        exe.run_device([Buffer.empty((1000, 20), np.float32)] + [
            Buffer.empty(tuple(t.shape), np.dtype(t.dtype)) for t in program.inputs[1:]])


def test_sizes_no_input_binds_are_given_with_the_call(recorded):
    """A mean's backward reads one scalar: its size comes with the call (`sizes=`)."""
    rec, Executable, Buffer = recorded
    captured = []
    build = pipeline.build

    def spy(graph, backend, donate=None):
        env = current_env()
        if env is not None:
            captured.append((graph, copy.deepcopy(env)))
        return build(graph, backend, donate)
    pipeline.build = spy
    try:
        with _no_disk_cache():
            x = neurenix.tensor(np.ones((6, 4), np.float32), requires_grad=True)
            neurenix.compile(lambda x: x.mean(), backend="llvm", dynamic=True)(x).backward()
    finally:
        pipeline.build = build
    backward = None
    for graph, env in captured:
        with shape_env(env):
            program = pipeline.build(graph, "cuda")[0]
        if all(not t.symbolic for t in program.inputs):
            backward = program
    assert backward is not None and backward.symbols == ("s0",)
    exe = Executable(backward)
    inputs = [Buffer.empty(tuple(t.shape), np.dtype(t.dtype)) for t in backward.inputs]
    with pytest.raises(ValueError, match="^cuda: no value for the symbol s0"):
        exe.run_device(inputs)
    for n in (3, 9):
        (grad,) = exe.run_device(inputs, {"s0": n})
        assert grad.shape == (n, 4) and exe.last_sizes == {"s0": n}


def test_static_programs_launch_as_before(recorded):
    """No symbols: `plan_launches`' grids and pointers, the arena allocated once, and the
    driver's launch called without sizes."""
    rec, Executable, Buffer = recorded
    from test_runtime_cuda import build, small_graph
    graph, args = small_graph()
    program = build(graph, "cuda")
    exe = Executable(program)
    arena = exe._arena
    for _ in range(2):
        start = len(rec.launches)
        exe.run(args)
        got = rec.launches[start:]
        plan = gpu_driver.plan_launches(program)
        assert [(g[0], g[1], g[2], g[4]) for g in got] == [
            (p.name, p.grid, p.block, None) for p in plan]
        for (_, _, _, pointers, _), p in zip(got, plan):
            for a, ptr in zip(p.args, pointers):
                if a.kind == "temp":
                    assert ptr == arena.ptr + a.key
    assert exe._arena is arena and exe.last_sizes == {} and not any(
        p.sized for p in gpu_driver.plan_launches(program))


def test_the_bindings_get_pointers_then_64_bit_sizes():
    """cuda-python's kernelParams (values, ctypes types) and hip-python's `extra` (ctypes
    values it packs at their alignment): the pointers, then the sizes as 64-bit integers, in
    the order of the kernel's parameters."""
    values, types = cuda.kernel_params([16, 32], (7, 9))
    assert values == (16, 32, 7, 9)
    assert types == (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_longlong)
    assert cuda.kernel_params([16], ()) == ((16,), (ctypes.c_void_p,))
    assert cuda.kernel_params([], ()) == 0
    extra = hip.launch_extra([16, 32], (7,))
    assert [type(v) for v in extra] == [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    assert [v.value for v in extra] == [16, 32, 7] and ctypes.sizeof(extra[2]) == 8
    assert [type(v) for v in hip.launch_extra([16])] == [ctypes.c_void_p]
    assert hip.launch_extra([]) is None


# ---- with a GPU: one program for every batch size, equal to eager -----------------------------

DEVICES = [("cuda", "cuda"), ("rocm", "hip")]
"""(device kind, target)."""


def _same(got, want, tol: float) -> None:
    np.testing.assert_allclose(got.detach().to("cpu").numpy(), want.detach().numpy(),
                               rtol=tol, atol=tol)


def _one_program(f) -> None:
    assert sum(len(v) for v in f._cache.values()) == 1
    assert f.stats()["dynamic"]["sizes"] == {"s0": SIZES[-1]}


@pytest.mark.parametrize("kind, target", DEVICES)
@pytest.mark.parametrize("name", ["mlp", "reduction", "conv"])
def test_one_program_equals_eager_at_every_batch_size(kind, target, name):
    needs_device(kind)
    make, args = WORKLOADS[name]
    eager = make()
    if isinstance(eager, nn.Module):
        device = copy.deepcopy(eager).to(kind)
        compiled = neurenix.compile(lambda x: device(x), backend=target, dynamic=True)
    else:
        compiled = neurenix.compile(eager, backend=target, dynamic=True)
    for n in (100,) + SIZES:  # traced at 100: tiles and work-groups counted per call
        xs = args(n)
        _same(compiled(*(x.to(kind) for x in xs)), eager(*xs), 1e-4)
    _one_program(compiled)


@pytest.mark.parametrize("kind, target", DEVICES)
def test_one_training_step_equals_eager_at_every_batch_size(kind, target):
    needs_device(kind)
    mlp = _mlp(32)
    device = copy.deepcopy(mlp).to(kind)
    eager = sgd_step(mlp)
    step = neurenix.compile(sgd_step(device), backend=target, dynamic=True)
    for n in SIZES:
        x, y = WORKLOADS["train"][1](n)
        _same(step(x.to(kind), y.to(kind)), eager(x, y), 1e-5)
        for a, b in zip(device.parameters(), mlp.parameters()):
            _same(a, b, 1e-5)
    _one_program(step)
