"""neurenix.compile: tracing, caching, recompiles, training through compiled graphs."""
import logging

import numpy as np
import pytest
from neurenix.compiler.targets import default_target
from neurenix.compiler.trace import TraceError

import neurenix
from neurenix import nn

BACKENDS = ["reference"] + (["llvm"] if default_target() == "llvm" else [])


def _mlp():
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_inference_matches_eager_and_caches_per_signature(backend):
    model = _mlp().eval()
    cmodel = neurenix.compile(model, backend=backend)
    x = neurenix.randn(4, 6)
    with neurenix.no_grad():
        want = model(x)
        got = cmodel(x)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        cmodel(neurenix.randn(4, 6))
        assert cmodel.cache_size == 1
        cmodel(neurenix.randn(2, 6))
        assert cmodel.cache_size == 2
    assert "matmul" in str(cmodel.graph)
    stats = cmodel.stats()
    assert stats["ops_traced"] > 0 and stats["passes"]


def test_recompile_says_why(caplog):
    cmodel = neurenix.compile(_mlp().eval(), backend="reference")
    with neurenix.no_grad(), caplog.at_level(logging.INFO, logger="neurenix.compile"):
        cmodel(neurenix.randn(4, 6))
        assert not caplog.records
        cmodel(neurenix.randn(5, 6))
    assert "input 0 shape changed (4, 6) -> (5, 6)" in caplog.text


def test_item_inside_a_trace_names_the_user_line():
    def f(x):
        if (x.sum() > 0).item():  # data-dependent Python branching
            return x
        return -x

    with pytest.raises(TraceError, match=r"item\(\) on a traced tensor .*test_compile.py:\d+"):
        neurenix.compile(f, backend="reference")(neurenix.randn(3))


def test_training_gradients_match_eager(backend):
    model = _mlp()
    x, y = neurenix.randn(5, 6), neurenix.randn(5, 3)
    crit = nn.MSELoss()
    loss = crit(model(x), y)
    loss.backward()
    want = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    cmodel = neurenix.compile(model, backend=backend)
    closs = crit(cmodel(x), y)
    closs.backward()
    np.testing.assert_allclose(closs.item(), loss.item(), rtol=1e-5)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), want[n], rtol=1e-4, atol=1e-6, err_msg=n)


def test_input_gradients_flow_through_a_compiled_function(backend):
    def f(a, b):
        return (a * b).tanh().sum(), a.exp()

    a = neurenix.randn(3, 4, requires_grad=True)
    b = neurenix.randn(3, 4)
    s, e = neurenix.compile(f, backend=backend)(a, b)
    (s + e.sum()).backward()
    ea = a.detach()
    want = (1 - (ea * b).tanh() ** 2) * b + ea.exp()
    np.testing.assert_allclose(a.grad.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_batchnorm_running_stats_update_in_compiled_training(backend):
    neurenix.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    ref = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    ref.load_state_dict(model.state_dict())
    cmodel = neurenix.compile(model, backend=backend)
    x = neurenix.randn(8, 4)
    with neurenix.no_grad():
        cmodel(x)
        ref(x)
    for (n, a), (_, b) in zip(model.named_buffers(), ref.named_buffers()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=n)


def test_dropout_draws_a_fresh_mask_every_call(backend):
    cdrop = neurenix.compile(nn.Dropout(0.5), backend=backend)
    x = neurenix.ones(1000)
    with neurenix.no_grad():
        a, b = cdrop(x).numpy(), cdrop(x).numpy()
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 2.0}
    assert 0.4 < (a == 0).mean() < 0.6


def test_nested_outputs_and_bad_returns():
    def f(x):
        return {"a": x + 1, "b": (x * 2, None)}

    out = neurenix.compile(f, backend="reference")(neurenix.ones(2))
    assert set(out) == {"a", "b"} and out["b"][1] is None
    np.testing.assert_array_equal(out["b"][0].numpy(), [2.0, 2.0])
    with pytest.raises(TypeError, match="returned a str"):
        neurenix.compile(lambda x: "nope", backend="reference")(neurenix.ones(2))


def test_forward_errors_surface_unchanged():
    model = _mlp().eval()
    with neurenix.no_grad(), pytest.raises(ValueError, match="Linear"):
        neurenix.compile(model, backend="reference")(neurenix.randn(4, 7))


def test_verify_reports_max_error(backend):
    cmodel = neurenix.compile(_mlp().eval(), verify=True, backend=backend)
    with neurenix.no_grad():
        cmodel(neurenix.randn(3, 6))
    assert cmodel.last_verification is not None
    assert max(cmodel.last_verification) < 1e-5


def test_bad_arguments():
    with pytest.raises(TypeError, match="Module or a callable"):
        neurenix.compile(42)
    with pytest.raises(TypeError, match="dynamic must be"):
        neurenix.compile(_mlp(), dynamic="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        neurenix.compile(_mlp(), backend="tpu")


@pytest.mark.parametrize("bad", [lambda: neurenix.randn(2, 7),
                                 lambda: neurenix.randn(2, 6).to(neurenix.float64),
                                 lambda: neurenix.randint(0, 3, (2, 6))],
                         ids=["shape", "float64", "int64"])
def test_wrong_inputs_raise_the_eager_error(bad):
    """A wrong shape or dtype fails while tracing, with eager mode's exception and message."""
    model = _mlp()
    x = bad()
    with pytest.raises(Exception) as eager:
        model(x)
    with pytest.raises(type(eager.value)) as compiled:
        neurenix.compile(model)(x)
    assert str(compiled.value) == str(eager.value)
