"""Programs with symbolic sizes (runtime/program.py): JSON round trips, strict validation,
and the per-call numbers a runtime evaluates (`Program.sizes_for`)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from kernel_helpers import schedule
from neurenix.compiler.codegen.program_specs import buffer_specs, tensor_specs
from neurenix.compiler.kernel.ir import Binary, BufferArg, Const, Kernel, Load, Store, Unary, Var
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.symbolic import ShapeEnv, shape_env
from neurenix.compiler.types import float32, int64
from neurenix.runtime.program import (
    BufferSpec,
    KernelInfo,
    Program,
    ProgramFormatError,
    TensorSpec,
    program_from_json,
    program_to_json,
)
from neurenix.runtime.sizes import Poly, size_value

N = Poly(((("n",), 1),))


def poly(*terms) -> Poly:
    """A canonical Poly from (symbols, coefficient) pairs."""
    return Poly(tuple(sorted((tuple(sorted(m)), c) for m, c in terms)))


def symbolic_program() -> Program:
    """x: (n, 4) float32 -> y: (n, 4), through temporaries t0 (4*n floats at 0) and t1
    (n floats at 16*n + 48, an offset polynomial), and a constant."""
    four_n = poly((("n",), 4))
    return Program(
        target="cpu", entry="neurenix_entry", source="; ir",
        inputs=[TensorSpec("x", (N, 4), "float32")],
        outputs=[TensorSpec("y", (N, 4), "float32")],
        buffers=[BufferSpec("x", "float32", four_n, "input"),
                 BufferSpec("y", "float32", four_n, "output"),
                 BufferSpec("c", "float32", 4, "constant"),
                 BufferSpec("t0", "float32", four_n, "temp", 0),
                 BufferSpec("t1", "float32", N, "temp", poly((("n",), 16), ((), 48)))],
        kernels=[KernelInfo("k0", ("x", "c", "t0"), "scale", (N, 4)),
                 KernelInfo("k1", ("t0", "t1"), "sum", (N,)),
                 KernelInfo("k2", ("t0", "t1", "y"), "norm", (N, 4))],
        arena_bytes=poly((("n",), 20), ((), 48)),
        constants={"c": np.arange(4, dtype=np.float32)},
        memory={"naive": 600, "planned": poly((("n",), 20), ((), 48)), "lower_bound": 400},
        metadata={"ranges": {"k0": 4, "k1": {"poly": [[["n"], 1]]}}},
        symbols=("n",))


def round_trip(program: Program) -> Program:
    data, arrays = program_to_json(program)
    return program_from_json(json.loads(json.dumps(data)), arrays)


def assert_same_program(a: Program, b: Program) -> None:
    assert a.constants.keys() == b.constants.keys()
    for k in a.constants:
        np.testing.assert_array_equal(a.constants[k], b.constants[k])
    a, b = copy.copy(a), copy.copy(b)
    a.constants = b.constants = {}
    assert a == b


def test_a_symbolic_program_round_trips_through_json():
    program = symbolic_program()
    data, _ = program_to_json(program)
    assert data["symbols"] == ["n"]
    assert data["arena_bytes"] == {"poly": [[[], 48], [["n"], 20]]}
    assert data["inputs"][0]["shape"] == [{"poly": [[["n"], 1]]}, 4]
    back = round_trip(program)
    assert_same_program(back, program)
    assert back.symbols == ("n",) and isinstance(back.arena_bytes, Poly)
    assert_same_program(round_trip(back), program)


def test_a_static_program_serializes_as_before():
    program = Program("cpu", "e", "", [TensorSpec("x", (3, 4), "float32")],
                      [TensorSpec("y", (3, 4), "float32")],
                      [BufferSpec("x", "float32", 12, "input"),
                       BufferSpec("y", "float32", 12, "output"),
                       BufferSpec("t", "float32", 12, "temp", 0)],
                      [KernelInfo("k", ("x", "t", "y"), "", (3, 4))], arena_bytes=64,
                      memory={"naive": 64, "planned": 64, "lower_bound": 64})
    data, _ = program_to_json(program)
    assert "symbols" not in data  # the format of static programs is unchanged
    assert data["buffers"][2] == {"name": "t", "dtype": "float32", "size": 12, "kind": "temp",
                                  "offset": 0}
    assert data["arena_bytes"] == 64 and data["inputs"][0]["shape"] == [3, 4]
    back = round_trip(program)
    assert back == program and back.symbols == ()
    assert back.buffers[2].nbytes == 48 and back.inputs[0].nbytes == 48
    sizes = back.sizes_for([(3, 4)])
    assert (sizes.values, sizes.arena_bytes, sizes.offsets) == ((), 64, {"t": 0})


def _damage(mutate):
    data, arrays = program_to_json(symbolic_program())
    data = json.loads(json.dumps(data))
    mutate(data)
    return data, arrays


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["buffers"][3].update(size={"poly": [[["m"], 4]]}), "not among the program"),
    (lambda d: d.update(arena_bytes={"poly": [[["n"], 1.5]]}), "arena_bytes"),
    (lambda d: d.update(arena_bytes={"poly": [[["n"], 1]], "x": 1}), "arena_bytes"),
    (lambda d: d.update(arena_bytes=True), "arena_bytes"),
    (lambda d: d.update(arena_bytes="20*n"), "arena_bytes"),
    (lambda d: d["inputs"][0].update(shape=[{"poly": [[["1n"], 1]]}, 4]), "dimension"),
    (lambda d: d["inputs"][0].update(shape=[{"poly": [[[], -3]]}, 4]), "dimension"),
    (lambda d: d["outputs"][0].update(shape=[{"poly": [[["k"], 1]]}, 4]), "not among"),
    (lambda d: d.update(symbols=["n", "n"]), "distinct identifiers"),
    (lambda d: d.update(symbols="n"), "symbols is not a list"),
    (lambda d: d.update(symbols=["n m"]), "distinct identifiers"),
    (lambda d: d.update(symbols=[]), "not among"),
    (lambda d: d["buffers"][0].update(offset={"poly": [[["n"], 64]]}), "no temporary"),
    (lambda d: d["buffers"][2].update(size={"poly": [[["n"], 4]]}), "constant 'c'"),
    (lambda d: d["kernels"][0].update(domain=[{"poly": [[["q"], 1]]}]), "not among"),
    (lambda d: d["memory"].update(planned={"poly": 3}), "memory"),
    (lambda d: d["metadata"]["ranges"].update(k1={"poly": [[["z"], 1]]}), "not among"),
    (lambda d: d["metadata"]["ranges"].update(k1=[1]), "ranges"),
    (lambda d: d.update(extra=1), "fields"),
])
def test_malformed_symbolic_data_is_a_format_error(mutate, message):
    data, arrays = _damage(mutate)
    with pytest.raises(ProgramFormatError, match=message):
        program_from_json(data, arrays)


def test_old_data_without_symbols_still_reads():
    static = Program("cpu", "e", "", [], [], [BufferSpec("t", "float32", 2, "temp", 0)], [],
                     arena_bytes=64)
    data, arrays = program_to_json(static)
    assert "symbols" not in data
    assert program_from_json(json.loads(json.dumps(data)), arrays) == static


def test_sizes_for_a_call_bind_the_symbols_and_evaluate_everything():
    program = round_trip(symbolic_program())
    for n in (2, 3, 7, 64, 100):
        sizes = program.sizes_for([(n, 4)])
        assert sizes.env == {"n": n} and sizes.values == (n,)
        assert sizes.arena_bytes == 20 * n + 48
        assert sizes.offsets == {"t0": 0, "t1": 16 * n + 48}
        assert sizes.elements == {"x": 4 * n, "y": 4 * n, "c": 4, "t0": 4 * n, "t1": n}
        assert sizes.input_shapes == [(n, 4)] and sizes.output_shapes == [(n, 4)]
        assert program.outputs[0].nbytes_at(sizes.env) == 16 * n
        assert program.buffers[4].nbytes_at(sizes.env) == 4 * n
    assert program.sizes({"n": 5}) == program.sizes_for([(5, 4)])


def test_calls_that_do_not_fit_are_refused():
    program = symbolic_program()
    with pytest.raises(ValueError, match="dimension 1 is 5, expected 4"):
        program.sizes_for([(3, 5)])
    with pytest.raises(ValueError, match="expected 1 tensors"):
        program.sizes_for([])
    with pytest.raises(ValueError, match="no value for the symbol n"):
        program.sizes({})
    lonely = copy.copy(program)
    lonely.symbols = ("n", "k")
    with pytest.raises(ValueError, match="symbol k is not the size of any input"):
        lonely.bind_symbols([(3, 4)])
    small = copy.copy(program)
    small.arena_bytes = poly((("n",), 20))  # t1 ends at 20*n + 48
    with pytest.raises(ValueError, match="'t1' at .* leaves the"):
        small.sizes({"n": 3})


def test_byte_counts_of_symbolic_specs_say_how_to_get_them():
    program = symbolic_program()
    with pytest.raises(TypeError, match=r"symbolic shape \(n, 4\).*nbytes_at"):
        _ = program.inputs[0].nbytes
    with pytest.raises(TypeError, match="symbolic size 4\\*n.*nbytes_at"):
        _ = program.buffers[3].nbytes
    assert program.buffers[2].nbytes == 16 and program.inputs[0].nbytes_at({"n": 3}) == 48


def test_a_planned_symbolic_kernel_graph_makes_a_program_that_evaluates_its_plan():
    """The code generator's specs (program_specs) from a symbolic plan: what the runtime
    evaluates per call is the plan evaluated at the call's sizes."""
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    f = float32
    shifted = Binary("mod", Binary("add", Var(0), Const(1, int64)), Const(3, int64))

    def k(name, src, src_size, out, out_size, index=None):
        index = Var(0) if index is None else index
        return Kernel(name, (BufferArg(src, f, src_size),), (BufferArg(out, f, out_size),),
                      (out_size,), (Store(out, Var(0), Unary("neg", Load(src, index, f))),))

    kernels = [k("k0", "x", 3 * n, "a", 3 * n), k("k1", "a", 3 * n, "b", n + 5, shifted),
               k("k2", "b", n + 5, "c", 3 * n, shifted), k("k3", "c", 3 * n, "y", 3 * n)]
    kg = schedule(kernels, {"x": np.zeros(1, np.float32)}, {"y": ((n, 3), f)})
    kg.buffers["x"] = BufferArg("x", f, 3 * n)
    kg.shapes["x"] = (n, 3)
    with shape_env(env):
        plan = plan_memory(kg)
    program = Program("cpu", "e", "", tensor_specs(kg, kg.inputs), tensor_specs(kg, kg.outputs),
                      buffer_specs(kg, plan), [], arena_bytes=plan.arena_bytes,
                      symbols=("n",))
    back = round_trip(program)
    for v in (2, 3, 7, 64, 100):
        sizes = back.sizes_for([(v, 3)])
        assert sizes.arena_bytes == size_value(plan.arena_bytes, {"n": v})
        assert sizes.offsets == {t: size_value(o, {"n": v}) for t, o in plan.offsets.items()}
        assert sizes.output_shapes == [(v, 3)]
