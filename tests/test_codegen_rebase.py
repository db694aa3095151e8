"""Rebased parameters (`compiler/codegen/rebase.py`): kernels that differ only in a constant
offset into one buffer (the steps of an unrolled RNN) share one LLVM function, the entry
passing the buffer at each kernel's offset.  Checked against the kernel-level oracle with the
inputs against guard pages, with `profile` (which calls each kernel function itself), and on
the compiled LSTM step whose per-step products are the case it is for."""
from __future__ import annotations

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
