"""Adversarial tests of shape-polymorphic compiled programs (issue 13), second round.

Compiled must equal eager for every size: around the per-call variant thresholds (threaded vs
single-threaded kernels, GEMM row variants, short-k weight gradients), two symbols in one
product, dynamic inner (vectorised) axes, sizes used as numbers in integer and float64 code,
guards of clipped slices, declared bounds with offset slices, the disk cache of symbolic
programs (bounds, a new process), dynamic-batch export (inference and training steps) and
training loops with a ragged last batch.
"""
import copy
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import neurenix
import neurenix.nn.functional as F
from neurenix import nn, optim

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path / "cache"))


def _rand(*shape, seed=0, dtype=np.float32):
    return neurenix.tensor(np.random.default_rng([seed, *shape]).standard_normal(shape)
                           .astype(dtype))


def _programs(f):
    return sum(len(v) for v in f._cache.values())


def _np(t):
    return t.detach().numpy()


def _close(got, want, tol=1e-5):
    got, want = _np(got), _np(want)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    scale = 1 + (np.abs(want.astype(np.float64)).max() if want.size else 0)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               rtol=tol, atol=tol * scale)


# ---- variant thresholds: threads (work vs 131072), GEMM rows (2/4/8), dot vs tiles --------

THRESHOLD_SIZES = (2, 3, 4, 5, 8, 9, 16, 17, 127, 128, 129, 167, 168, 204, 205, 256, 257,
                   1000, 2048, 2049)


@pytest.mark.parametrize("width", [(64, 64), (1, 512), (33, 17), (512, 1), (300, 5)])
def test_linear_forward_at_every_variant_threshold(width):
    i, o = width
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(i, o), nn.ReLU(), nn.Linear(o, 7)).eval()
    ref = copy.deepcopy(model)
    cm = neurenix.compile(model, dynamic=True)
    with neurenix.no_grad():
        for n in THRESHOLD_SIZES:
            x = _rand(n, i, seed=n)
            _close(cm(x), ref(x), 1e-4)
    assert _programs(cm) == 1


@pytest.mark.parametrize("width", [(64, 64), (16, 48), (1, 512)])
def test_linear_backward_around_short_k_and_row_variants(width):
    """The weight gradient's k is the batch (one K block up to 128 steps, partial sums past)."""
    i, o = width
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(i, o), nn.Tanh(), nn.Linear(o, 7))
    ref = copy.deepcopy(model)
    cm = neurenix.compile(model, dynamic=True)
    for n in (2, 3, 4, 5, 8, 9, 127, 128, 129, 257, 2049):
        xa = _np(_rand(n, i, seed=n))
        x1, x2 = neurenix.tensor(xa), neurenix.tensor(xa)
        x1.requires_grad = x2.requires_grad = True
        g = _rand(n, 7, seed=1)
        (cm(x1) * g).sum().backward()
        (ref(x2) * g).sum().backward()
        _close(x1.grad, x2.grad, 1e-4)
        for p, q in zip(model.parameters(), ref.parameters()):
            _close(p.grad, q.grad, 1e-4)
        model.zero_grad()
        ref.zero_grad()
    assert _programs(cm) == 1


def test_linear_on_two_dynamic_dims_rows_are_a_product_of_symbols():
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 5))
    ref = copy.deepcopy(model)
    cm = neurenix.compile(model, dynamic={"x": {0: None, 1: None}})
    for n, t in ((3, 5), (2, 2), (2, 3), (4, 2), (8, 9), (17, 33), (2, 1000), (1000, 2)):
        xa = _np(_rand(n, t, 16))
        x1, x2 = neurenix.tensor(xa), neurenix.tensor(xa)
        x1.requires_grad = x2.requires_grad = True
        a, b = cm(x1), ref(x2)
        _close(a, b, 1e-4)
        (a ** 2).sum().backward()
        (b ** 2).sum().backward()
        _close(x1.grad, x2.grad, 1e-4)
        for p, q in zip(model.parameters(), ref.parameters()):
            _close(p.grad, q.grad, 1e-4)
        model.zero_grad()
        ref.zero_grad()
    assert _programs(cm) == 1


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_matmul_of_other_dtypes_across_thresholds(dtype):
    w = neurenix.tensor((np.random.default_rng(1).standard_normal((48, 40)) * 3).astype(dtype))

    def f(x):
        return (x @ w).sum(1), x.t() @ x

    cf = neurenix.compile(f, dynamic=True)
    for n in (2, 3, 5, 9, 128, 129, 2049):
        x = neurenix.tensor((np.random.default_rng(n).standard_normal((n, 48)) * 3).astype(dtype))
        for got, want in zip(cf(x), f(x)):
            _close(got, want, 1e-9)
    assert _programs(cf) == 1


def test_dropout_draws_as_eager_on_both_sides_of_the_threading_threshold():
    fn = lambda x: F.dropout(x, 0.3, training=True)  # noqa: E731
    cf = neurenix.compile(fn, dynamic=True)
    for n in (2, 127, 128, 129, 2049, 3):  # 1024 * n crosses 131072 at n = 128
        x = neurenix.tensor(np.ones((n, 1024), np.float32))
        neurenix.manual_seed(5)
        got = _np(cf(x))
        neurenix.manual_seed(5)
        np.testing.assert_array_equal(got, _np(fn(x)))
        assert 0.25 < (got == 0).mean() < 0.35
    assert _programs(cf) == 1
    variants = cf.stats()["dynamic"]["variants"]
    assert variants and all("<=" in v for v in variants.values())  # the latest call: 3 rows


# ---- a dynamic inner axis: vector remainders --------------------------------------------

INNER = {
    "softmax": lambda x: x.softmax(-1),
    "var": lambda x: x.var(-1),
    "layer_norm": lambda x: F.layer_norm(x, (x.shape[-1],)),
    "gram": lambda x: x @ x.t(),
    "cumsum_int": lambda x: (x * 10).int().cumsum(-1),
    "f64_logsumexp": lambda x: x.double().logsumexp(-1),
    "causal_softmax": lambda x: (x.t() @ x).masked_fill(
        neurenix.ones(x.shape[1], x.shape[1]).triu(1) > 0, float("-inf")).softmax(-1),
    "pad_flip": lambda x: F.pad(x, (2, 3)).flip(-1) * 2,
}


@pytest.mark.parametrize("name", sorted(INNER))
def test_dynamic_inner_axis_at_vector_width_boundaries(name):
    f = INNER[name]
    cf = neurenix.compile(f, dynamic={"x": {1: None}})
    for n in (5, 2, 3, 7, 8, 9, 15, 16, 17, 33, 65, 129):
        x = _rand(7, n)
        _close(cf(x), f(x), 1e-5)
    assert _programs(cf) == 1


# ---- sizes used as numbers, dtypes, empty reductions ------------------------------------

NUMBERS = {
    "int32_times_n": (lambda x: x * x.shape[0], np.int32),
    "int32_floordiv_n": (lambda x: x // x.shape[0], np.int32),
    "int32_mod_n": (lambda x: x % x.shape[0], np.int32),
    "int32_true_div_n": (lambda x: x / x.shape[0], np.int32),
    "int_pow_n": (lambda x: (x % 3) ** x.shape[0], np.int32),
    "int_numel": (lambda x: x.sum() + x.numel(), np.int32),
    "bool_plus_n": (lambda x: (x > 0) + x.shape[0], np.float32),
    "f64_times_n": (lambda x: x * x.shape[0], np.float64),
    "f64_var0": (lambda x: x.var(0), np.float64),
    "pow_n": (lambda x: x ** x.shape[0], np.float32),
    "clamp_n": (lambda x: (x * 10).clamp(max=x.shape[0]), np.float32),
    "where_n": (lambda x: neurenix.where(x > 0, x, x.shape[0]), np.float32),
    "int_arange_n": (lambda x: x + neurenix.arange(x.shape[0])[:, None], np.int32),
    "empty_sum": (lambda x: x[:, :0].sum(1), np.float32),
    "empty_mean": (lambda x: x[:, :0].mean(1), np.float32),
    "empty_prod": (lambda x: x[:, :0].prod(1), np.float32),
    "empty_logsumexp": (lambda x: x[:, :0].logsumexp(1), np.float32),
    "empty_matmul": (lambda x: x[:, :0] @ x[:, :0].t(), np.float32),
    "one_column_std": (lambda x: x[:, :1].std(1), np.float32),
}


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_sizes_as_numbers_and_empty_reductions(name):
    f, dtype = NUMBERS[name]
    cf = neurenix.compile(f, dynamic=True)
    for n in (4, 7, 3, 250, 2):
        if np.issubdtype(dtype, np.integer):
            x = neurenix.tensor(np.random.default_rng(n).integers(-20, 20, (n, 3)).astype(dtype))
        else:
            x = _rand(n, 3, dtype=dtype) * 3
        got, want = cf(x), f(x)
        got, want = _np(got), _np(want)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert _programs(cf) == 1


# ---- guards -------------------------------------------------------------------------------

GUARDED = {
    "first_five": lambda x: x[:5] * 2,
    "last_five": lambda x: x[-5:] * 2,
    "narrow": lambda x: x.narrow(0, 1, 3) * 2,
    "branch_gt": lambda x: x * 2 if x.shape[0] > 10 else x * 3,
    "branch_eq": lambda x: x * 2 if x.shape[0] == 10 else x * 3,
    "max_of_size": lambda x: x * max(x.shape[0], 6),
    "topk": lambda x: x.topk(3, 0)[0],
}


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_decisions_on_sizes_never_reuse_a_wrong_program(name):
    f = GUARDED[name]
    cf = neurenix.compile(f, dynamic=True)
    for n in (12, 8, 3, 5, 6, 10, 11, 4, 2, 20, 10, 3):
        x = _rand(n, 3)
        try:
            want = f(x)
        except Exception as e:  # noqa: BLE001
            with pytest.raises(type(e)):
                cf(x)
            continue
        _close(cf(x), want)


def test_min_of_two_sizes_with_duck_sizing():
    def f(x, y):
        k = min(x.shape[0], y.shape[0])
        return x[:k] + y[:k]

    cf = neurenix.compile(f, dynamic=True)
    for n, m in ((4, 4), (5, 5), (3, 6), (6, 3), (2, 2), (7, 2), (9, 9)):
        x, y = _rand(n, 3), _rand(m, 3, seed=1)
        _close(cf(x, y), f(x, y))


def test_pinned_size_then_other_sizes_dynamic_true():
    b = neurenix.tensor(np.arange(4, dtype=np.float32))
    f = lambda x: x + b  # noqa: E731
    cf = neurenix.compile(f, dynamic=True)
    for n in (4, 5, 4, 6):
        x = _rand(n)
        try:
            want = f(x)
        except ValueError:
            with pytest.raises(ValueError):
                cf(x)
            continue
        _close(cf(x), want)


def test_declared_lower_bound_with_offset_slices_and_paddings():
    """Temporaries of n - 45, 2n - 40, n + 55 rows: a memory plan with negative constants."""
    def f(x):
        a = (x[45:] * 2).exp()
        b = (x[:-45] + 1).tanh()
        c = neurenix.cat([x, x[40:]], 0).sin()
        e = F.pad(a, (0, 0, 100, 0)).cos()
        h = neurenix.cat([e, b, c], 0) * 3
        return (c.t() @ c).sum(0) + e.sum(0) + b.sum() + a.sum(), h[-7:], h[:3]

    for bounds, programs in (((50, 60), 5), ((46, None), 1)):
        cf = neurenix.compile(f, dynamic={"x": {0: bounds}})
        for n in (55, 50, 60, 46, 47, 300, 51, 1000):
            x = _rand(n, 3)
            for got, want in zip(cf(x), f(x)):
                _close(got, want, 1e-5)
        assert _programs(cf) == programs


def test_declared_dimension_that_must_be_pinned_does_not_hang():
    """A declared dimension a trace needs at one size is pinned static (regression: the
    declaration re-added it, and the trace was retried forever)."""
    code = textwrap.dedent("""
        import numpy as np, neurenix
        b = neurenix.tensor(np.arange(4, dtype=np.float32))
        cf = neurenix.compile(lambda x: x + b, dynamic={"x": {0: None}})
        g = lambda x: x * 2 if x.shape[0] == 64 else x * 3
        cg = neurenix.compile(g, dynamic={"x": {0: (2, 100)}})
        for n in (5, 64, 7, 64):
            x = neurenix.tensor(np.ones((n, 2), np.float32))
            assert np.array_equal(cg(x).numpy(), g(x).numpy()), n
        print(cf(neurenix.tensor(np.ones(4, np.float32))).numpy().tolist())
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=15, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        pytest.fail("compiling hangs: retraced forever after SpecializeSize")
    assert out.stdout.strip() == "[1.0, 2.0, 3.0, 4.0]", out.stderr[-2000:]


# ---- disk cache ---------------------------------------------------------------------------


def _mlp():
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))


def test_disk_cache_keeps_programs_of_other_bounds_apart():
    m = _mlp()

    def f(x):
        return m(x).softmax(1)

    caches = []
    with neurenix.no_grad():
        for bounds, sizes in (((2, 4), (3, 2, 4)), ((2, None), (100, 2, 2049, 5)),
                              ((2, 2), (2,)), ((2, None), (700, 9, 3)), ((5, 9), (7, 5, 9))):
            cf = neurenix.compile(f, dynamic={"x": {0: bounds}})
            for n in sizes:
                x = _rand(n, 32, seed=n)
                _close(cf(x), f(x))
            caches.append(cf.stats()["cache"])
    assert caches == ["miss", "miss", "miss", "hit", "miss"]


CHILD = """
import copy, sys
import numpy as np
import neurenix
from neurenix import nn
neurenix.manual_seed(0)
m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
ref = copy.deepcopy(m)
cm = neurenix.compile(m, dynamic=True)
worst = 0.0
for n in map(int, sys.argv[1:]):
    x = neurenix.tensor(np.random.default_rng(n).standard_normal((n, 32)).astype(np.float32))
    (cm(x) ** 2).sum().backward()
    (ref(x) ** 2).sum().backward()
    for p, q in zip(m.parameters(), ref.parameters()):
        d = np.abs(p.grad.numpy() - q.grad.numpy()).max() / (1 + np.abs(q.grad.numpy()).max())
        worst = max(worst, float(d))
    m.zero_grad()
    ref.zero_grad()
print(cm.stats()["cache"], worst)
"""


def test_disk_cache_symbolic_forward_and_backward_in_a_new_process(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ)
    runs = []
    for sizes in (("3", "500"), ("700", "2", "129", "3000")):  # other traced hint
        out = subprocess.run([sys.executable, str(script), *sizes], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        cache, worst = out.stdout.split()
        runs.append(cache)
        assert float(worst) < 1e-4
    assert runs == ["miss", "hit"]


# ---- training: ragged last batch, automatic dynamic, Adam -------------------------------


def _epochs(compiled, what, batchnorm, bs):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((100, 6)).astype(np.float32)
    ys = rng.integers(0, 3, 100)
    neurenix.manual_seed(0)
    layers = [nn.Linear(6, 16, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(16, 3))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    forward = neurenix.compile(model) if compiled and what == "model" else model

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = neurenix.compile(step) if compiled and what == "step" else step
    losses = [float(fn(neurenix.tensor(xs[i:i + bs]), neurenix.tensor(ys[i:i + bs])))
              for _ in range(3) for i in range(0, 100, bs)]
    state = [_np(p) for p in model.parameters()] + [_np(b) for b in model.buffers()]
    return losses, state, forward if what == "model" else fn


@pytest.mark.parametrize("what", ["model", "step"])
@pytest.mark.parametrize("batchnorm,bs", [(False, 32), (True, 49), (True, 30)])
def test_ragged_last_batch_epochs_with_automatic_dynamic(what, batchnorm, bs):
    want, want_state, _ = _epochs(False, what, batchnorm, bs)
    got, got_state, fn = _epochs(True, what, batchnorm, bs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert _programs(fn) == 2  # the first batch size static, then one for every size


# ---- dynamic-batch export ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "batchnorm_eval", "conv"])
def test_exported_dynamic_batch_matches_eager(name, tmp_path):
    from neurenix.export import export

    neurenix.manual_seed(0)
    model, feat = {
        "mlp": (lambda: nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)), (16,)),
        "batchnorm_eval": (lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16),
                                                 nn.ReLU(), nn.Linear(16, 3)), (8,)),
        "conv": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                       nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5)),
                 (3, 8, 8)),
    }[name]
    model = model().eval()
    top = 300
    loaded = neurenix.runtime.load(export(model, (_rand(5, *feat),), "cpu",
                                          str(tmp_path / name), dynamic_batch=top))
    for b in (top, 1, 2, 3, 8, 9, 167, 168, 257, 2, top):  # shrink and grow the arena
        x = _np(_rand(b, *feat, seed=b))
        (y,) = loaded([x])
        with neurenix.no_grad():
            want = _np(model(neurenix.tensor(x)))
        assert y.shape == want.shape
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        loaded([np.ones((top + 1, *feat), np.float32)])


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_exported_dynamic_batch_training_steps_match_eager(opt_name, tmp_path):
    from neurenix.export import export

    make_opt = {"adam": lambda p: optim.Adam(p, lr=1e-2),
                "sgd_momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9)}[opt_name]
    neurenix.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = make_opt(model.parameters())
    ref = copy.deepcopy(model)
    ref_opt = make_opt(ref.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x0, y0 = _rand(4, 6), neurenix.tensor(np.arange(4) % 3)
    trainer = neurenix.runtime.load(export(step, (x0, y0), "cpu", str(tmp_path / "t"),
                                           freeze=False, dynamic_batch=64))
    for k, b in enumerate((4, 1, 2, 64, 7, 3, 1, 33)):
        x = _np(_rand(b, 6, seed=k))
        y = np.random.default_rng(k).integers(0, 3, b)
        (loss,) = trainer([x, y])
        ref_opt.zero_grad()
        want = F.cross_entropy(ref(neurenix.tensor(x)), neurenix.tensor(y))
        want.backward()
        ref_opt.step()
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-5, atol=1e-6)
    state = trainer.state_dict()
    for key, value in ref.state_dict().items():
        np.testing.assert_allclose(np.asarray(state[key]), _np(value), rtol=1e-4, atol=1e-5)
    assert trainer.steps == 8
