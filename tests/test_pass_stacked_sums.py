"""Stacked sums (`compiler.passes.stacked_sums`): the sums autodiff writes for unrolled loops.

A sum of disjoint zero pads becomes a concat and a sum of wide matrix products one product
over the stacked contraction axis; sums that are not of that form are left alone.  Every
rewrite is checked against the reference evaluator, and a compiled LSTM training step (whose
backward is where both sums come from) is compared with eager.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from neurenix.compiler import evaluate, parse_graph
from neurenix.compiler.passes.stacked_sums import MIN_PRODUCT_SIDE, stacked_sums


def ops(graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op != "input"]


def same_values(before, after, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    inputs = {n.name: rng.standard_normal(n.type.shape).astype(np.float32)
              for n in before.inputs}
    want = evaluate(before, inputs)
    got = evaluate(after, inputs)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def pads(widths: list[tuple[int, int]], total: int, axis: int = 0) -> object:
    """sum_i pad(x_i) along `axis` of a (total, 3) or (3, total) result."""
    sig, lines, last = [], [], None
    for i, (lo, size) in enumerate(widths):
        shape = (size, 3) if axis == 0 else (3, size)
        sig.append(f"%x{i}: f32[{shape[0]},{shape[1]}]")
        lo_t = (lo, 0) if axis == 0 else (0, lo)
        hi_t = (total - lo - size, 0) if axis == 0 else (0, total - lo - size)
        out = f"[{total},3]" if axis == 0 else f"[3,{total}]"
        lines.append(f"  %p{i} = pad(%x{i}) {{hi={hi_t}, interior=(0, 0), lo={lo_t}, "
                     f"value=0.0}} : f32{out}")
        if last is None:
            last = f"%p{i}"
        else:
            lines.append(f"  %s{i} = add({last}, %p{i}) : f32{out}")
            last = f"%s{i}"
    text = f"graph main({', '.join(sig)}) {{\n" + "\n".join(lines) + f"\n  return {last}\n}}"
    return parse_graph(text)


@pytest.mark.parametrize("axis", [0, 1])
def test_disjoint_pads_that_tile_become_one_concat(axis):
    g = pads([(2, 2), (0, 2), (4, 3)], 7, axis)
    out = stacked_sums(g)
    assert [op for op in ops(out) if op in ("add", "concat")] == ["concat"]
    same_values(g, out)


def test_gaps_between_pads_are_filled_with_zeros():
    g = pads([(1, 2), (5, 1)], 8)
    out = stacked_sums(g)
    assert "add" not in ops(out) and ops(out).count("full") == 3
    same_values(g, out)


def test_overlapping_pads_stay_a_sum():
    g = pads([(0, 3), (2, 2)], 5)
    assert ops(stacked_sums(g)) == ops(g)


def test_pads_along_different_axes_stay_a_sum():
    g = parse_graph("""graph main(%a: f32[1,3], %b: f32[2,2]) {
  %p = pad(%a) {hi=(1, 0), interior=(0, 0), lo=(0, 0), value=0.0} : f32[2,3]
  %q = pad(%b) {hi=(0, 0), interior=(0, 0), lo=(0, 1), value=0.0} : f32[2,3]
  %s = add(%p, %q) : f32[2,3]
  return %s
}""")
    assert ops(stacked_sums(g)) == ops(g)


def test_a_pad_with_another_value_stays_a_sum():
    g = parse_graph("""graph main(%a: f32[1,3], %b: f32[1,3]) {
  %p = pad(%a) {hi=(1, 0), interior=(0, 0), lo=(0, 0), value=1.0} : f32[2,3]
  %q = pad(%b) {hi=(0, 0), interior=(0, 0), lo=(1, 0), value=0.0} : f32[2,3]
  %s = add(%p, %q) : f32[2,3]
  return %s
}""")
    assert ops(stacked_sums(g)) == ops(g)


def test_a_partial_sum_read_elsewhere_is_kept():
    g = parse_graph("""graph main(%a: f32[1,3], %b: f32[1,3], %c: f32[1,3]) {
  %p = pad(%a) {hi=(2, 0), interior=(0, 0), lo=(0, 0), value=0.0} : f32[3,3]
  %q = pad(%b) {hi=(1, 0), interior=(0, 0), lo=(1, 0), value=0.0} : f32[3,3]
  %r = pad(%c) {hi=(0, 0), interior=(0, 0), lo=(2, 0), value=0.0} : f32[3,3]
  %s = add(%p, %q) : f32[3,3]
  %t = add(%s, %r) : f32[3,3]
  return %t, %s
}""")
    out = stacked_sums(g)
    # the partial sum is a result of its own: it becomes a concat, and the whole sum adds
    # the last pad to it
    assert ops(out).count("concat") == 1 and ops(out).count("add") == 1
    same_values(g, out)


def products(n: int, m: int, k: int, extra: bool = False) -> object:
    sig = [f"%a{i}: f32[{m},{k}], %b{i}: f32[{k},{m}]" for i in range(n)]
    lines, last = [], None
    for i in range(n):
        lines.append(f"  %m{i} = matmul(%a{i}, %b{i}) : f32[{m},{m}]")
        if last is None:
            last = f"%m{i}"
        else:
            lines.append(f"  %s{i} = add({last}, %m{i}) : f32[{m},{m}]")
            last = f"%s{i}"
    if extra:
        sig.append(f"%c: f32[{m},{m}]")
        lines.append(f"  %e = add({last}, %c) : f32[{m},{m}]")
        last = "%e"
    return parse_graph(f"graph main({', '.join(sig)}) {{\n" + "\n".join(lines)
                       + f"\n  return {last}\n}}")


@pytest.mark.parametrize("extra", [False, True])
def test_a_sum_of_wide_products_is_one_product(extra):
    g = products(5, MIN_PRODUCT_SIDE, 3, extra)
    out = stacked_sums(g)
    assert ops(out).count("matmul") == 1 and ops(out).count("concat") == 2
    assert ops(out).count("add") == int(extra)
    same_values(g, out)


def test_thin_products_stay_separate():
    g = products(4, MIN_PRODUCT_SIDE - 1, 3)
    assert ops(stacked_sums(g)) == ops(g)


def test_a_product_read_elsewhere_stays_separate():
    g = parse_graph("""graph main(%a: f32[16,2], %b: f32[2,16], %c: f32[16,2], %d: f32[2,16]) {
  %m = matmul(%a, %b) : f32[16,16]
  %n = matmul(%c, %d) : f32[16,16]
  %s = add(%m, %n) : f32[16,16]
  return %s, %m
}""")
    assert ops(stacked_sums(g)) == ops(g)


def test_compiled_lstm_training_step_matches_eager():
    """Both sums come from this backward: the gradient of the per-step input slices and of
    the recurrent weight.  Compiled and eager agree on the loss and every parameter."""
    import neurenix
    from neurenix.nn import LSTM, MSELoss
    from neurenix.optim import SGD

    def run(compiled: bool):
        neurenix.manual_seed(3)
        lstm = LSTM(5, 16, num_layers=2, batch_first=True)
        opt = SGD(lstm.parameters(), lr=0.1)
        rng = np.random.default_rng(0)
        x = neurenix.Tensor(rng.standard_normal((4, 12, 5)).astype(np.float32))
        y = neurenix.Tensor(rng.standard_normal((4, 12, 16)).astype(np.float32))

        def step(x, y):
            opt.zero_grad()
            loss = MSELoss()(lstm(x)[0], y)
            loss.backward()
            opt.step()
            return loss

        fn = neurenix.compile(step) if compiled else step
        losses = [float(fn(x, y).item()) for _ in range(3)]
        return losses, [p.detach().numpy().copy() for p in lstm.parameters()]

    (want, wparams), (got, gparams) = run(False), run(True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for w, g in zip(wparams, gparams):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def traced_lstm_step(inputs: int, hidden: int, layers: int, steps: int):
    """The graph of an LSTM's loss-and-backward on its last step's output, traced by one
    compiled call at batch 4 (what the kernel-structure tests inspect)."""
    import neurenix
    from neurenix.nn import LSTM, MSELoss

    lstm = LSTM(inputs, hidden, num_layers=layers, batch_first=True)

    def step(x, y):
        loss = MSELoss()(lstm(x)[0][:, -1, :], y)
        loss.backward()
        return loss

    fn = neurenix.compile(step)
    rng = np.random.default_rng(0)
    fn(neurenix.Tensor(rng.standard_normal((4, steps, inputs)).astype(np.float32)),
       neurenix.Tensor(rng.standard_normal((4, hidden)).astype(np.float32)))
    return fn.graph


def test_lstm_step_kernels_read_a_few_buffers_each():
    """Before the rewrite, one kernel chose among all 12 steps' gate gradients per element
    and another summed 12 tiny products; now no kernel reads more than a handful of
    buffers, and the recurrent weights' gradients are one product each."""
    from neurenix.compiler.lowering.lower import lower

    kernels = lower(traced_lstm_step(5, 16, 2, 12)).kernels
    assert max(len(k.inputs) for k in kernels) <= 8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=2, max_size=6),
       st.integers(0, 1), st.randoms(use_true_random=False))
def test_random_pad_sums_keep_their_values(pieces, axis, rnd):
    """Random slices, gaps before each (overlapping ones wherever a gap is 0 and the order is
    shuffled: those must stay a sum), in random order: the values never change."""
    widths, at = [], 0
    for gap, size in pieces:
        widths.append((at + gap, size))
        at += gap + size
    if rnd.random() < 0.3:  # make two slices overlap
        lo, size = widths[-1]
        widths[-1] = (max(0, lo - 2), size)
    rnd.shuffle(widths)
    g = pads(widths, at + rnd.randint(0, 2), axis)
    same_values(g, stacked_sums(g), seed=rnd.randint(0, 1000))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=5), st.integers(14, 20),
       st.booleans())
def test_random_product_sums_keep_their_values(ks, m, extra):
    sig = [f"%a{i}: f32[{m},{k}], %b{i}: f32[{k},17]" for i, k in enumerate(ks)]
    lines, last = [], None
    for i in range(len(ks)):
        lines.append(f"  %m{i} = matmul(%a{i}, %b{i}) : f32[{m},17]")
        lines.append(f"  %s{i} = add({last}, %m{i}) : f32[{m},17]" if last else "")
        last = f"%s{i}" if last else f"%m{i}"
    if extra:
        sig.append(f"%c: f32[{m},17]")
        lines.append(f"  %e = add(%c, {last}) : f32[{m},17]")
        last = "%e"
    g = parse_graph(f"graph main({', '.join(sig)}) {{\n"
                    + "\n".join(x for x in lines if x) + f"\n  return {last}\n}}")
    out = stacked_sums(g)
    assert ops(out).count("matmul") == (1 if m >= MIN_PRODUCT_SIDE else len(ks))
    same_values(g, out)
