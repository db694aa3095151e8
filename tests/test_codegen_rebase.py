"""Rebased parameters (`compiler/codegen/rebase.py`): kernels that differ only in a constant
offset into one buffer (the steps of an unrolled RNN) share one LLVM function, the entry
passing the buffer at each kernel's offset.  Checked against the kernel-level oracle with the
inputs against guard pages, with `profile` (which calls each kernel function itself), and on
the compiled LSTM step whose per-step products are the case it is for."""
from __future__ import annotations

import json

import numpy as np
from kernel_helpers import assert_same_guarded, c64, compile_schedule, run_both, schedule
from neurenix.compiler.kernel.ir import Binary, BufferArg, Const, Kernel, Load, Store, Var
from neurenix.compiler.types import float32

X = BufferArg("x", float32, 24)


def scaled(name: str, out: str, *offsets: int) -> Kernel:
    """out[j] = 2 * sum of x[j + offset] over `offsets`, j < 8."""
    value = None
    for offset in offsets:
        index = Var(0) if offset == 0 else Binary("add", Var(0), c64(offset))
        load = Load("x", index, float32)
        value = load if value is None else Binary("add", value, load)
    value = Binary("mul", value, Const(2.0, float32))
    return Kernel(name, (X,), (BufferArg(out, float32, 8),), (8,),
                  (Store(out, Var(0), value),))


def program():
    kernels = [scaled("k0_step", "o0", 0), scaled("k1_step", "o1", 8),
               scaled("k2_step", "o2", 16), scaled("k3_two", "o3", 4, 12)]
    x = np.arange(24, dtype=np.float32) - 7.5
    s = schedule(kernels, {"x": x}, {f"o{i}": ((8,), float32) for i in range(4)})
    return s, compile_schedule(s), [x]


def test_steps_share_one_function_and_match_the_oracle():
    s, exe, inputs = program()
    names = [k.name for k in exe.program.kernels]
    assert names[0] == names[1] == names[2] != names[3]
    offsets = exe.program.metadata["arg_offsets"]
    assert offsets[:3] == [{}, {"x": 32}, {"x": 64}]  # bytes: 8 and 16 float32
    assert offsets[3] == {}  # two different offsets into x: nothing taken out
    got, want = run_both(s, inputs, exe)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert_same_guarded(exe, inputs, got)


def test_profile_calls_each_rebased_kernel_at_its_offset():
    _, exe, inputs = program()
    times = exe.profile(inputs, repeat=1)
    assert [n for n, _ in times] == [k.name for k in exe.program.kernels]


def test_unrolled_lstm_step_products_share_one_function():
    from neurenix.compiler.pipeline import build
    from test_pass_stacked_sums import traced_lstm_step

    program, _ = build(traced_lstm_step(6, 20, 1, 9), "llvm")
    products = [k.name for k in program.kernels
                if k.comment.startswith("slice + reshape + permute + matmul + add")]
    assert len(products) >= 8 and len(set(products)) == 1, products


def _symbolic_program():
    """Kernels reading step t's slice of x (3, n, 4) at offset t * 4n (and two at 4n + 2
    and 8n - 1), compiled once for every n."""
    from neurenix.compiler.codegen import generate
    from neurenix.compiler.kernel.ir import KernelGraph, Sym
    from neurenix.compiler.symbolic import ShapeEnv, shape_env
    from neurenix.runtime.cpu import CpuExecutable

    env = ShapeEnv()
    n = env.symbol("n", 8)
    x = BufferArg("x", float32, 12 * n)

    def mul(a, b):
        return Binary("mul", a, b)

    def add(a, b):
        return Binary("add", a, b)

    def kernel(name, out, offset):
        index = add(mul(Var(0), c64(4)), Var(1))
        if offset is not None:
            index = add(index, offset)
        value = mul(Load("x", index, float32), Const(2.0, float32))
        return Kernel(name, (x,), (BufferArg(out, float32, 4 * n),), (n, 4),
                      (Store(out, add(mul(Var(0), c64(4)), Var(1)), value),))

    four_n = mul(Sym("n"), c64(4))
    kernels = [kernel("k0_step", "o0", None), kernel("k1_step", "o1", four_n),
               kernel("k2_step", "o2", mul(c64(2), four_n)),
               kernel("k3_plus", "o3", add(four_n, c64(2))),
               kernel("k4_minus", "o4", add(mul(c64(2), four_n), c64(-1)))]
    buffers = {b.name: b for k in kernels for b in k.buffers()}
    shapes = {"x": (3, n, 4), **{f"o{i}": (n, 4) for i in range(5)}}
    kg = KernelGraph(kernels, buffers, ["x"], [f"o{i}" for i in range(5)], shapes)
    with shape_env(env):
        program = generate(kg)
    assert not env.guards
    return kg, program, CpuExecutable(program)


def test_symbolic_step_offsets_share_one_function_and_match_the_oracle():
    """In a program with dynamic sizes a step's offset is a polynomial of them: taken out
    the same way, computed by the entry from the call's sizes; one with a negative term is
    left in the indices."""
    from neurenix.compiler.kernel.eval import run_schedule
    from neurenix.runtime.cpu import CpuExecutable
    from neurenix.runtime.program import program_from_json, program_to_json

    kg, program, exe = _symbolic_program()
    names = [k.name for k in program.kernels]
    assert names[0] == names[1] == names[2] == names[3] != names[4]
    offsets = program.metadata["arg_offsets"]
    assert offsets[:4] == [{}, {"x": {"poly": [[["n"], 16]]}}, {"x": {"poly": [[["n"], 32]]}},
                           {"x": {"poly": [[[], 8], [["n"], 16]]}}]
    assert offsets[4] == {}  # 8n - 1 could be negative: not taken out
    data, arrays = program_to_json(program)  # as the disk cache stores it
    reloaded = CpuExecutable(program_from_json(json.loads(json.dumps(data)), arrays))
    rng = np.random.default_rng(0)
    for n in (2, 3, 8, 33):
        x = rng.standard_normal((3, n, 4)).astype(np.float32)
        want = run_schedule(kg, [x])
        for run in (exe, reloaded):
            for got, expected in zip(run.run([x]), want):
                np.testing.assert_array_equal(got, expected)


def test_dynamic_lstm_step_products_share_one_function():
    """The unrolled LSTM's per-step products in a program for every batch size: one
    function, as in the static program (the dynamic step compiled 2.3x faster for it)."""
    import neurenix
    from neurenix.nn import LSTM, MSELoss

    lstm = LSTM(5, 16, num_layers=1, batch_first=True)

    def step(x, y):
        loss = MSELoss()(lstm(x)[0][:, -1, :], y)
        loss.backward()
        return loss

    fn = neurenix.compile(step, dynamic=True)
    rng = np.random.default_rng(0)
    fn(neurenix.Tensor(rng.standard_normal((4, 6, 5)).astype(np.float32)),
       neurenix.Tensor(rng.standard_normal((4, 16)).astype(np.float32)))
    (entry,) = [e for entries in fn._cache.values() for e in entries]
    program = entry.forward.program
    assert program.symbols
    products = [k.name for k in program.kernels
                if k.comment.startswith("slice + reshape + permute + matmul + add")]
    assert len(products) >= 6 and len(set(products)) == 1, products
    assert any(isinstance(o, dict) for offsets in program.metadata["arg_offsets"]
               for o in offsets.values())
