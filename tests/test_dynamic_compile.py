"""Shape-polymorphic compiled programs (issue 13): one program for every batch size."""
import logging

import numpy as np
import pytest

import neurenix
from neurenix import nn
from neurenix.compilation.dynamic import changed_dims, parse_dynamic

SIZES = (2, 3, 7, 64, 100)


def _x(n, k=4, seed=0):
    return neurenix.tensor(np.random.default_rng(seed + n).standard_normal((n, k))
                           .astype(np.float32))


def _same(got, want, tol=1e-5):
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=tol, atol=tol)


def _programs(f):
    return sum(len(v) for v in f._cache.values())


def _elementwise(x):
    return (x * 2 - 1).relu().sum(1)


def test_dynamic_true_runs_every_batch_size_through_one_program(caplog):
    f = neurenix.compile(_elementwise, dynamic=True)
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        for n in SIZES:
            _same(f(_x(n)), _elementwise(_x(n)))
    assert _programs(f) == 1, caplog.text
    assert not caplog.records  # every size after the first: no compile, nothing logged
    dyn = f.stats()["dynamic"]
    assert dyn["symbols"] == {"s0": {"lo": 2, "hi": None, "traced": 2}}
    assert dyn["shapes"] == [("s0", "4")]


def test_automatic_dynamic_after_a_second_size(caplog):
    f = neurenix.compile(_elementwise)
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        _same(f(_x(8)), _elementwise(_x(8)))
        assert "dynamic" not in f.stats()
        _same(f(_x(5)), _elementwise(_x(5)))
        assert "changed size" in caplog.text
        assert "dynamic" in f.stats()
        caplog.clear()
        for n in (7, 100, 5, 33):
            _same(f(_x(n)), _elementwise(_x(n)))
    assert not caplog.records
    assert _programs(f) == 2  # the static first one and the symbolic one


def test_sizes_zero_and_one_get_static_programs():
    f = neurenix.compile(_elementwise, dynamic=True)
    for n in (4, 1, 0, 9):
        _same(f(_x(n)), _elementwise(_x(n)))
    assert _programs(f) == 3


def test_declared_bounds_are_honoured():
    f = neurenix.compile(_elementwise, dynamic={"x": {0: (2, 16)}})
    for n in (3, 16, 5):
        _same(f(_x(n)), _elementwise(_x(n)))
    assert _programs(f) == 1
    assert f.stats()["dynamic"]["symbols"]["s0"]["hi"] == 16
    _same(f(_x(17)), _elementwise(_x(17)))  # past the bound: a static program
    assert _programs(f) == 2
    assert "dynamic" not in f.stats()


def test_a_size_read_as_a_python_int_falls_back_to_static_programs(caplog):
    def f(x):
        return x.sum() * int(x.shape[0])

    cf = neurenix.compile(f, dynamic=True)
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        for n in (3, 5):
            _same(cf(_x(n)), f(_x(n)))
    assert "compiling static shapes only" in caplog.text
    assert _programs(cf) == 2


def test_a_branch_on_a_size_is_guarded():
    def f(x):
        if x.shape[0] > 10:
            return x.sum(0)
        return x.sum(0) * 2

    cf = neurenix.compile(f, dynamic=True)
    for n in (4, 6, 20, 5, 30):
        _same(cf(_x(n)), f(_x(n)))
    assert _programs(cf) == 2  # one program per side of the branch


def test_duck_sizing_shares_a_symbol_and_checks_it():
    def f(x, y):
        return x.sum(1) + y.sum(1)

    cf = neurenix.compile(f, dynamic=True)
    for n in (4, 9, 2):
        _same(cf(_x(n), _x(n, 3)), f(_x(n), _x(n, 3)))
    assert _programs(cf) == 1
    with pytest.raises(ValueError):  # eager's error for mismatched batch sizes
        f(_x(4), _x(5, 3))
    with pytest.raises(ValueError):
        cf(_x(4), _x(5, 3))


def test_mlp_forward_and_backward_through_one_program():
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    cmodel = neurenix.compile(model, dynamic=True)
    for n in (5, 8, 64):
        x = _x(n)
        got = cmodel(x)
        got.sum().backward()
        g_got = [p.grad.numpy().copy() for p in model.parameters()]
        model.zero_grad()
        want = model(x)
        want.sum().backward()
        g_want = [p.grad.numpy().copy() for p in model.parameters()]
        model.zero_grad()
        _same(got, want)
        for a, b in zip(g_got, g_want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert _programs(cmodel) == 1


def test_training_step_through_one_program():
    def run(compiled):
        neurenix.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = neurenix.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = neurenix.compile(step, dynamic=True) if compiled else step
        losses = []
        for n in (8, 8, 5, 13, 8):
            rng = np.random.default_rng(n)
            x = neurenix.tensor(rng.standard_normal((n, 4)).astype(np.float32))
            y = neurenix.tensor(rng.integers(0, 3, n))
            losses.append(float(fn(x, y)))
        return losses, fn

    want, _ = run(False)
    got, fn = run(True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert _programs(fn) == 1


def test_parse_dynamic_errors():
    with pytest.raises(TypeError, match="dynamic must be"):
        parse_dynamic("yes")
    with pytest.raises(TypeError, match="argument name"):
        parse_dynamic({0: {0: None}})
    with pytest.raises(ValueError, match="non-negative"):
        parse_dynamic({"x": {-1: None}})
    with pytest.raises(TypeError, match=r"\(lo, hi\)"):
        parse_dynamic({"x": {0: [1, 2]}})
    with pytest.raises(ValueError, match="hi >= max"):
        parse_dynamic({"x": {0: (4, 3)}})
    assert parse_dynamic({"x": {0: (0, None)}}).named == {"x": {0: (2, None)}}
    with pytest.raises(TypeError):
        neurenix.compile(_elementwise, dynamic=3.5)


def test_changed_dims():
    a = ((("tensor", (4, 3), "float32", False),), True, "cpu")
    b = ((("tensor", (5, 3), "float32", False),), True, "cpu")
    c = ((("tensor", (5, 3), "float64", False),), True, "cpu")
    assert changed_dims(a, b) == [(0, 0)]
    assert changed_dims(a, c) is None
    assert changed_dims(a, a) is None


def _rows(n, *rest, seed=0):
    return neurenix.tensor(np.random.default_rng(seed + n).standard_normal((n, *rest))
                           .astype(np.float32))


LAYERS = {
    "conv_bn": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(8 * 4 * 4, 10)).eval(),
                lambda n: (_rows(n, 3, 8, 8),)),
    "lstm": (lambda: nn.LSTM(8, 16, batch_first=True), lambda n: (_rows(n, 5, 8),)),
    "encoder": (lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
                lambda n: (_rows(n, 6, 16),)),
    "embedding": (lambda: nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(24, 4)),
                  lambda n: (neurenix.tensor(np.random.default_rng(n).integers(0, 20, (n, 3))),)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_run_every_batch_size_through_one_program_without_guards(name):
    neurenix.manual_seed(0)
    make, inputs = LAYERS[name]
    model = make()
    cmodel = neurenix.compile(model, dynamic=True)
    for n in (5, 16, 32, 64):  # 16, 32 and 64 are the layers' own sizes: no guard on them
        args = inputs(n)
        got, want = cmodel(*args), model(*args)
        got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
        _same(got, want, tol=1e-4)
    assert _programs(cmodel) == 1
    assert cmodel.stats()["dynamic"]["guards"] == []


def test_a_reshape_splitting_the_dynamic_rows_of_a_matmul_stays_symbolic():
    def f(x, w):  # an RNN's input projection: (steps * batch) rows split back per step
        steps, batch, features = x.shape
        parts = (x.reshape(steps * batch, features) @ w).reshape(steps, batch, 16).unbind(0)
        return parts[0] * 2 + parts[2]

    cf = neurenix.compile(f, dynamic={"x": {1: None}})
    w = _x(8, 16)
    for n in (3, 4, 9):
        x = _rows(5, n, 8)
        _same(cf(x, w), f(x, w))
    assert _programs(cf) == 1
    assert cf._dynamic.failed is None


@pytest.mark.parametrize("fn", [lambda x: x.mean(), lambda x: x.var(0), lambda x: x.std(),
                                lambda x: x.sum() / x.shape[0],
                                lambda x: nn.functional.mse_loss(x, x * 0.5),
                                lambda x: nn.functional.kl_div(x.log_softmax(1),
                                                               x.softmax(1) * 0 + 0.25,
                                                               reduction="batchmean")])
def test_dividing_by_a_dynamic_size_stays_symbolic(fn):
    cf = neurenix.compile(fn, dynamic=True)
    for n in (3, 5, 64):
        _same(cf(_x(n)), fn(_x(n)))
    assert _programs(cf) == 1


def test_batch_norm_training_updates_running_statistics_as_eagerly():
    neurenix.manual_seed(0)
    eager, compiled = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    cbn = neurenix.compile(compiled, dynamic=True)
    for n in (3, 8, 5):
        _same(cbn(_x(n)), eager(_x(n)))
    _same(compiled.running_mean, eager.running_mean)
    _same(compiled.running_var, eager.running_var)  # the unbiased n / (n - 1) per call
    assert _programs(cbn) == 1


def test_stats_show_the_variant_each_call_picked():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    cmodel = neurenix.compile(model, dynamic=True)
    with neurenix.no_grad():
        cmodel(_x(3000, 64))
        dyn = cmodel.stats()["dynamic"]
        assert dyn["sizes"] == {"s0": 3000}
        picked = list(dyn["variants"].values())
        assert picked and all(">" in v for v in picked), dyn
        cmodel(_x(3, 64))
        dyn = cmodel.stats()["dynamic"]
        assert dyn["sizes"] == {"s0": 3}
        assert all("<=" in v for v in dyn["variants"].values()), dyn


@pytest.mark.parametrize("fn", [lambda x: x[:, :3] * 2, lambda x: x[1:], lambda x: x[-2:],
                                lambda x: x[0] + x[-1], lambda x: x[None, :, 2:],
                                lambda x: x + neurenix.ones_like(x),
                                lambda x: neurenix.full((x.shape[0], 4), 2.5) * x,
                                lambda x: x * neurenix.zeros_like(x, dtype=neurenix.int64)])
def test_slices_and_fills_of_a_dynamic_size_stay_symbolic(fn):
    cf = neurenix.compile(fn, dynamic=True)
    for n in (4, 5, 9):
        got, want = cf(_x(n)), fn(_x(n))
        assert got.dtype == want.dtype
        _same(got, want)
    assert _programs(cf) == 1
    assert cf.stats()["dynamic"]["guards"] == []


def test_a_slice_clipped_by_a_dynamic_size_is_guarded():
    cf = neurenix.compile(lambda x: x[:3] * 2, dynamic=True)
    for n in (4, 9, 2):  # x[:3] of 2 rows has 2: the guard s0 >= 3 fails, another program
        _same(cf(_x(n)), _x(n)[:3] * 2)
    assert _programs(cf) == 2


def test_the_runtime_rechecks_what_changed_between_calls():
    """A dynamic program remembers each input's checked address while the same array comes
    again: a new array, a non-contiguous one, new contents or another size are all seen."""
    f = neurenix.compile(lambda x: x * 2 + 1, dynamic=True)
    f(_x(3))
    exe = f._last.forward
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(exe.run([a])[0], a * 2 + 1)
    a[:] = 5  # the same array, new contents
    np.testing.assert_array_equal(exe.run([a])[0], a * 2 + 1)
    b = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(5, 4))
    np.testing.assert_array_equal(exe.run([b])[0], b * 2 + 1)
    c = np.ones((7, 4), np.float32)
    np.testing.assert_array_equal(exe.run([c])[0], c * 2 + 1)
    with pytest.raises(ValueError, match="expects float32"):
        exe.run([c.astype(np.float64)])


def test_known_sizes_that_disagree_with_the_inputs_raise():
    """`run(inputs, sizes)`: the given sizes are checked against the inputs' shapes, never
    silently overridden by them."""
    f = neurenix.compile(lambda x: x * 2, dynamic=True)
    f(_x(3))
    exe = f._last.forward
    a = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(exe.run([a], {"s0": 3})[0], a * 2)
    with pytest.raises(ValueError, match="expected"):
        exe.run([a], {"s0": 5})
