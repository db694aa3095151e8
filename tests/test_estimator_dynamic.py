"""The estimator and the scikit-learn wrappers compile one training-step program and one
prediction program per model, whatever the batch sizes (issue 13): a ragged last batch, any
number of rows to predict, every fold of a cross-validation.  Batches of one row get static
programs of their own; an empty prediction compiles nothing."""
import numpy as np
import pytest

import neurenix
from neurenix import nn
from neurenix.compilation.compiled import Compiled
from neurenix.estimator import Estimator, predict_chunks
from neurenix.optim import Adam
from neurenix.sklearn import NeuralNetClassifier, NeuralNetRegressor

TOL = 1e-5


def _programs(f) -> int:
    return sum(len(v) for v in f._cache.values())


def _symbolic(f) -> int:
    return sum("dynamic" in e.stats for v in f._cache.values() for e in v)


def _data(n, seed=0, features=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)


def _estimator(backend, batchnorm=False, seed=0):
    neurenix.manual_seed(seed)
    # no bias before a BatchNorm: its gradient is zero but for rounding, which Adam's
    # normalised step would turn into updates of the size of the learning rate
    layers = [nn.Linear(4, 16, bias=not batchnorm)] + \
        ([nn.BatchNorm1d(16)] if batchnorm else []) + [nn.ReLU(), nn.Linear(16, 3)]
    model = nn.Sequential(*layers)
    return Estimator(model, nn.CrossEntropyLoss(), Adam(model.parameters(), lr=0.01),
                     backend=backend, progress=False)


def _static(est):
    """`est` compiling static programs, one per batch shape (the estimator before issue 13)."""
    est._train_step = neurenix.compile(est._step, dynamic=False)
    est._forward = neurenix.compile(est.model, dynamic=False)
    return est


def _fit_and_predict(est, rows):
    x, y = _data(103)
    hist = est.train(x, y, epochs=3, batch_size=25, verbose=False, validation_split=0.2)
    weights = [p.detach().numpy().copy() for p in est.model.parameters()]
    xs, _ = _data(max(rows), seed=1)
    return hist, weights, [est.predict(xs[:n], batch_size=64).numpy() for n in rows]


@pytest.mark.parametrize("batchnorm", [False, True])
def test_ragged_batches_and_any_row_count_run_through_one_program_each(batchnorm):
    rows = (5, 64, 65, 129, 200, 2)  # 65 and 129: a lone last row joins the chunk before it
    runs = {}
    for how in ("eager", "dynamic", "static"):
        est = _estimator("eager" if how == "eager" else "compiled", batchnorm)
        if how == "static":
            _static(est)
        runs[how] = _fit_and_predict(est, rows), est
    (_, dyn) = runs["dynamic"]
    assert _programs(dyn._train_step) == 1 and _symbolic(dyn._train_step) == 1
    assert _programs(dyn._forward) == 1 and _symbolic(dyn._forward) == 1
    (h_d, w_d, p_d), _ = runs["dynamic"]
    for how in ("eager", "static"):
        (h, w, p), _ = runs[how]
        np.testing.assert_allclose(h_d.loss, h.loss, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(h_d.val_loss, h.val_loss, rtol=TOL, atol=TOL)
        for a, b in zip(w_d, w):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
        for a, b in zip(p_d, p):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
    assert [len(a) for a in p_d] == list(rows)


def test_one_row_gets_a_static_program_and_no_rows_compile_nothing():
    x, y = _data(51)  # batches of 25, 25 and 1: the lone row is a step of its own
    dyn, eager = [_estimator(backend) for backend in ("compiled", "eager")]
    for est in (dyn, eager):
        neurenix.manual_seed(1)  # the same shuffles
        est.train(x, y, epochs=2, batch_size=25, verbose=False)
    assert _programs(dyn._train_step) == 2 and _symbolic(dyn._train_step) == 1
    for n in (1, 0, 7):
        got, want = dyn.predict(x[:n]).numpy(), eager.predict(x[:n]).numpy()
        assert got.shape == want.shape == (n, 3)
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    assert _programs(dyn._forward) == 2 and _symbolic(dyn._forward) == 1


def test_predict_chunks_never_leave_a_lone_row():
    assert predict_chunks(5, 2) == [slice(0, 2), slice(2, 5)]
    assert predict_chunks(4, 2) == [slice(0, 2), slice(2, 4)]
    assert predict_chunks(1, 256) == [slice(0, 1)]
    assert predict_chunks(257, 256) == [slice(0, 257)]
    assert predict_chunks(3, 1) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    for n in range(1, 40):
        for size in (1, 2, 3, 8):
            chunks = predict_chunks(n, size)
            assert chunks[0].start == 0 and chunks[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
            assert size == 1 or n == 1 or all(c.stop - c.start >= 2 for c in chunks)


def test_a_new_batch_size_compiles_nothing(monkeypatch):
    compiles = []
    real = Compiled._compile
    monkeypatch.setattr(Compiled, "_compile",
                        lambda self, *a, **k: compiles.append(self) or real(self, *a, **k))
    est = _estimator("compiled")
    x, y = _data(100)
    est.train(x, y, epochs=1, batch_size=32, verbose=False)  # 32, 32, 32 and 4 rows
    assert compiles == [est._train_step]
    est.predict(x[:10])
    assert compiles == [est._train_step, est._forward]
    est.train(x[:98], y[:98], epochs=1, batch_size=9, verbose=False)  # 9 and 8 rows
    est.train(x[:98], y[:98], epochs=1, batch_size=12, verbose=False)  # 12 and 2 rows
    for n in (2, 3, 99, 100):
        est.predict(x[:n], batch_size=50)
    est.evaluate(x[:77], y[:77])
    assert compiles == [est._train_step, est._forward]


def _recording(cls):
    class Recording(cls):
        fitted: list = []

        def fit(self, x, y):
            super().fit(x, y)
            Recording.fitted.append(self)
            return self

    Recording.__name__ = cls.__name__
    return Recording


@pytest.mark.parametrize("cls", [NeuralNetClassifier, NeuralNetRegressor])
def test_cross_validation_compiles_two_programs_per_fold(cls):
    model_selection = pytest.importorskip("sklearn.model_selection")
    x, labels = _data(150, seed=3)
    y = labels if cls is NeuralNetClassifier else x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 3]
    scores = {}
    for backend in ("compiled", "eager"):
        rec = _recording(cls)
        est = rec(hidden_layer_sizes=(16,), epochs=4, batch_size=32, learning_rate=0.01,
                  random_state=0, backend=backend, progress=False)
        scores[backend] = model_selection.cross_val_score(est, x, y, cv=5)
        assert len(rec.fitted) == 5
        if backend == "compiled":
            for fold in rec.fitted:  # 120 training rows: batches of 32 and a last one of 24
                step, forward = fold.estimator_._train_step, fold.estimator_._forward
                assert _programs(step) == _symbolic(step) == 1
                assert _programs(forward) == _symbolic(forward) == 1
    np.testing.assert_allclose(scores["compiled"], scores["eager"], rtol=TOL, atol=TOL)
