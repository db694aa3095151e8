"""Shape-polymorphic programs on the WebGPU target (docs/compiler/dynamic-shapes.md,
docs/targets/webgpu.md): the symbols' values reach the kernels in a uniform buffer, launches
are capped at 65,535 work-groups with grid-stride loops doing the rest, loops that could pass
lavapipe's loop limit are guarded, and sizes past 32 bits are refused.  The models at every
batch size, on every GPU target here: tests/test_dynamic_gpu.py."""
from __future__ import annotations

import numpy as np
import pytest
from devices import needs_device
from dynamic_cases import programs, rand
from neurenix.compiler import GraphBuilder, pipeline
from neurenix.compiler.symbolic import ShapeEnv, shape_env
from neurenix.compiler.types import TensorType, float32
from neurenix.runtime import webgpu
from neurenix.runtime.program import program_from_json, program_to_json
from neurenix.runtime.sizes import Groups, extent_from_json

import neurenix


@pytest.fixture(autouse=True)
def _webgpu():
    needs_device("webgpu")


def _symbolic_program(build, hint: int = 4):
    """The webgpu program of the graph `build(builder, n)` for a symbol s0 (hint `hint`),
    and the environment's guards."""
    env = ShapeEnv()
    n = env.symbol("s0", hint)
    with shape_env(env):
        b = GraphBuilder("g")
        graph = b.build(build(b, n))
        program, _ = pipeline.build(graph, "webgpu")
    return program, env.guards


def test_a_symbolic_program_round_trips_and_sizes_its_launches():
    f = neurenix.compile(lambda x: (x * 2).sum(1), backend="webgpu", dynamic=True)
    f(rand(300, 4))
    program = next(iter(f._cache.values()))[0].forward.program
    assert program.symbols == ("s0",)
    assert program.metadata["sized_kernels"] and program.metadata["size_checks"]
    grids = [g for k in program.kernels for g in k.grid if isinstance(g, Groups)]
    assert grids and all(g.most == 65535 for g in grids)
    assert grids[0].evaluate({"s0": 1000}) == -(-1000 // program.kernels[0].block[0])
    back = program_from_json(*program_to_json(program))
    assert back.kernels == program.kernels and back.symbols == program.symbols
    assert back.metadata["size_checks"] == program.metadata["size_checks"]
    assert extent_from_json(grids[0].to_json()) == grids[0]
    exe = webgpu.Executable(back)
    for n in (3, 1000):
        a = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
        (y,) = exe.run([a])
        np.testing.assert_allclose(y, (a * 2).sum(1), rtol=1e-6)
        assert exe.last_sizes == {"s0": n}


def test_the_sizes_reach_kernels_in_a_uniform_written_per_call():
    """One uniform binding after the storage buffers, its i32 values written per call: runs
    in either order of sizes share the program and keep their own values."""
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "reduce_sum", b.input("x", TensorType((n, 3), float32)), axes=(0,))])
    (kernel,) = program.kernels
    assert "var<uniform> nx_sizes: NxSizes;" in kernel.source
    assert f"@binding({len(kernel.args)}) var<uniform>" in kernel.source
    assert webgpu.uniform_binding(kernel.source) == len(kernel.args)
    exe = webgpu.Executable(program)
    xs = [np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
          for n in (2, 50, 9)]
    outs = [exe.run_device([webgpu.Buffer.from_host(x)])[0] for x in xs]  # in flight
    for x, out in zip(xs, outs):
        np.testing.assert_allclose(out.to_host(), x.sum(0), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects float32\[s0, 3\]"):
        exe.run([np.zeros((4, 2), np.float32)])


def test_a_grid_past_65535_work_groups_strides():
    """70,000 x 300 elements need 82,032 work-groups of 256: the launch is capped at 65,535
    and the kernel's grid-stride loop steps by the groups launched."""
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "mul", b.input("x", TensorType((n, 300), float32)),
        b.input("y", TensorType((n, 300), float32)))], hint=70_000)
    (kernel,) = program.kernels
    (grid,) = kernel.grid
    assert grid.most == 65535 and grid.evaluate({"s0": 70_000}) == 65535
    assert "nx_groups.x" in kernel.source
    n = 70_000
    x = np.random.default_rng(0).standard_normal((n, 300)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((n, 300)).astype(np.float32)
    (z,) = webgpu.Executable(program).run([x, y])
    np.testing.assert_array_equal(z, x * y)


def test_loops_that_could_pass_the_loop_limit_are_guarded_and_checked():
    """A sum over the dynamic axis loops s0 times per work-item: a guard keeps s0 under
    half of lavapipe's 65,535 iterations (a call past it compiles another program), the
    program's size checks refuse it at run time, and a trace at such a size schedules a
    work-group per column instead."""
    def column_sum(b, n):
        return [b.apply("reduce_sum", b.input("x", TensorType((n, 3), float32)), axes=(0,))]
    program, guards = _symbolic_program(column_sum)
    assert [str(g) for g in guards] == ["-32764 + s0 <= 0"]
    checks = [c for c in program.metadata["size_checks"] if "loop limit" in c["what"]]
    assert len(checks) == 1
    with pytest.raises(ValueError, match="loop limit"):
        webgpu.Executable(program).run([np.zeros((40_000, 3), np.float32)])
    program, guards = _symbolic_program(column_sum, hint=40_000)  # a work-group per column
    assert "group reduction" in program.kernels[0].comment + str(program.metadata)
    (y,) = webgpu.Executable(program).run([np.ones((40_000, 3), np.float32)])
    np.testing.assert_array_equal(y, [40_000] * 3)
    f = neurenix.compile(lambda x: x.sum(0), backend="webgpu", dynamic=True)
    for n in (5, 40_000):  # the second call fails the guard: a program of its own
        a = np.ones((n, 3), np.float32)
        np.testing.assert_array_equal(f(neurenix.tensor(a)).numpy(), a.sum(0))
    assert programs(f) == 2


def test_sizes_past_32_bits_are_refused_when_bound():
    program, _ = _symbolic_program(lambda b, n: [b.apply(
        "exp", b.input("x", TensorType((n, 3), float32)))])
    exe = webgpu.Executable(program)
    layout = exe._layout  # the bind step, without allocating 2**31 elements
    with pytest.raises(ValueError, match="32-bit size limit"):
        layout([(1 << 29, 3)])
