"""Shape-polymorphic programs on the OpenCL target (docs/compiler/dynamic-shapes.md): the
program's launches sized per call, a dialect without dynamic sizes refusing them, and
backwards whose inputs carry no symbol.  The models at every batch size, on every GPU target
here: tests/test_dynamic_gpu.py."""
from __future__ import annotations

import numpy as np
import pytest
from devices import needs_device
from dynamic_cases import programs, rand
from neurenix.compiler.codegen import opencl as opencl_codegen
from neurenix.compiler.codegen.cstyle import generate_program
from neurenix.compiler.symbolic import DynamicSizeError, current_env, shape_env
from neurenix.compiler.targets import get_target
from neurenix.runtime.program import program_from_json, program_to_json
from neurenix.runtime.sizes import Groups, extent_from_json

import neurenix


@pytest.fixture(autouse=True)
def _opencl():
    needs_device("opencl")


def test_a_symbolic_program_round_trips_and_sizes_its_launches():
    f = neurenix.compile(lambda x: (x * 2).sum(1), backend="opencl", dynamic=True)
    f(rand(300, 4))
    program = next(iter(f._cache.values()))[0].forward.program
    assert program.symbols == ("s0",)
    assert program.metadata["sized_kernels"]
    grids = [g for k in program.kernels for g in k.grid if isinstance(g, Groups)]
    assert grids and grids[0].evaluate({"s0": 1000}) == -(-1000 // program.kernels[0].block[0])
    back = program_from_json(*program_to_json(program))
    assert back.kernels == program.kernels and back.symbols == program.symbols
    assert extent_from_json(grids[0].to_json()) == grids[0]


def test_a_dialect_without_dynamic_sizes_refuses_them():
    """A dialect that takes no dynamic sizes raises DynamicSizeError on a symbolic kernel
    graph (the frontend then compiles static programs); every shipped GPU dialect takes them."""
    captured = []
    original = generate_program

    def spy(kernels, plan, target, dialect):
        captured.append((kernels, plan, target, current_env()))
        return original(kernels, plan, target, dialect)
    opencl_codegen.generate_program = spy
    try:
        f = neurenix.compile(lambda x: (x + 1).sum(1), backend="opencl", dynamic=True)
        f(rand(5, 4))
    finally:
        opencl_codegen.generate_program = original
    kernels, plan, target, env = captured[-1]
    assert kernels.kernels[0].schedule is not None

    class Static(opencl_codegen.OpenCL):
        dynamic = False
    with shape_env(env):
        with pytest.raises(DynamicSizeError, match="dynamic sizes are not supported"):
            generate_program(kernels, plan, target, Static())
        for name in ("cuda", "hip", "webgpu"):
            generated = get_target(name).generate()(kernels, plan, get_target(name))
            assert generated is not None


@pytest.mark.parametrize("fn", [lambda x: x.mean(), lambda x: x.view(-1) * 2,
                                lambda x: neurenix.cat([x, x * 2], 0)])
def test_a_backward_whose_inputs_carry_no_symbol_gets_the_forwards_sizes(fn):
    """The backward of a compiled mean reads one scalar: its sizes come from the forward."""
    compiled = neurenix.compile(fn, backend="opencl", dynamic=True)
    for n in (3, 5, 9):
        a = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        x = neurenix.tensor(a, device="opencl", requires_grad=True)
        compiled(x).sum().backward()
        y = neurenix.tensor(a, requires_grad=True)
        fn(y).sum().backward()
        np.testing.assert_allclose(x.grad.to("cpu").numpy(), y.grad.numpy(), rtol=1e-6)
    assert programs(compiled) == 1 and compiled._dynamic.failed is None
