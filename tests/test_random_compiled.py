"""Random draws inside `neurenix.compile`: fresh per call, and equal to eager's from one seed.

Every random creator draws from a per-call seed (`seed_tensor`) through the counter-based
`rng_uniform` primitive, eagerly and traced.  After `manual_seed(k)` a compiled function and the
same function run eagerly consume the same seeds in the same order, so they draw the same values:
bit for bit for uniforms and integers, and to a few float32 ulp for normals on the LLVM backend
(its float32 log is a polynomial within 2 ulp of NumPy's; the reference backend is bit-exact).
"""
import math

import numpy as np
import pytest
from neurenix.compiler.trace import TraceError

import neurenix
from neurenix import nn, optim
from neurenix.nn import functional as F

BACKENDS = ["llvm", "reference"]

# name -> (function of a template tensor, exact on every backend)
DRAWS = {
    "randn": (lambda s: neurenix.randn(s.shape), False),
    "randn_like": (lambda s: neurenix.randn_like(s), False),
    "randn_float64": (lambda s: neurenix.randn(*s.shape, dtype=neurenix.float64), False),
    "rand": (lambda s: neurenix.rand(s.shape), True),
    "rand_like": (lambda s: neurenix.rand_like(s), True),
    "rand_float64": (lambda s: neurenix.rand(s.shape, dtype=neurenix.float64), True),
    "randint": (lambda s: neurenix.randint(-5, 1000, s.shape), True),
    "randint_high_only": (lambda s: neurenix.randint(7, s.shape), True),
    "randint_int32": (lambda s: neurenix.randint(0, 3, s.shape, dtype=neurenix.int32), True),
    "randint_wide": (lambda s: neurenix.randint(-2**40, 2**41 + 3, s.shape), True),
    "tensor_randn": (lambda s: neurenix.Tensor.randn(s.shape), False),
}


def _assert_same_draws(got, want, exact):
    assert got.dtype == want.dtype and got.shape == want.shape
    if exact or not np.issubdtype(got.dtype, np.floating):
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_array_max_ulp(got, want, maxulp=4)


def _twice(fn, *args):
    return [fn(*args).numpy() for _ in range(2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(DRAWS))
def test_compiled_draws_equal_eager_and_are_fresh_per_call(name, backend):
    draw, exact = DRAWS[name]
    template = neurenix.zeros(3, 257)
    compiled = neurenix.compile(draw, backend=backend)
    neurenix.manual_seed(11)
    got = _twice(compiled, template)
    neurenix.manual_seed(11)
    want = _twice(draw, template)
    for g, w in zip(got, want):
        _assert_same_draws(g, w, exact or backend == "reference")
    # a new draw per call: a frozen constant would repeat the first call's values
    assert np.mean(got[0] != got[1]) > 0.5
    assert compiled.cache_size == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_and_draws_mixed_follow_eager_seed_order(backend):
    """Dropout, randn, an unused draw and rand consume seeds in program order, eager or not."""
    def fn(x):
        h = F.dropout(x, 0.3) + 0.1 * neurenix.randn_like(x)
        neurenix.rand(2)  # dead, but eager draws it too: it still takes its seed
        return h * neurenix.rand(x.shape) + neurenix.randint(0, 4, x.shape)

    x = neurenix.ones(4, 33)
    compiled = neurenix.compile(fn, backend=backend)
    neurenix.manual_seed(5)
    got = [compiled(x).numpy(), fn(x).numpy(), compiled(x).numpy()]
    neurenix.manual_seed(5)
    want = [fn(x).numpy(), fn(x).numpy(), fn(x).numpy()]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], got[2])


class _VAE(nn.Module):
    def __init__(self, features=6, latent=3):
        super().__init__()
        self.encode = nn.Linear(features, 2 * latent)
        self.decode = nn.Linear(latent, features)

    def forward(self, x):
        mu, logvar = self.encode(x).chunk(2, dim=1)
        sigma = (0.5 * logvar).exp()
        z = mu + sigma * neurenix.randn_like(sigma)  # the reparameterisation trick
        kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(dim=1).mean()
        return F.mse_loss(self.decode(z), x) + 0.1 * kl


def _vae_step(model, opt):
    def step(x):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_vae_training_step_matches_eager(backend):
    models = []
    for _ in range(2):
        neurenix.manual_seed(0)
        models.append(_VAE())
    eager, compiled = models
    eager_step = _vae_step(eager, optim.SGD(eager.parameters(), lr=0.5))
    step = neurenix.compile(_vae_step(compiled, optim.SGD(compiled.parameters(), lr=0.5)),
                            backend=backend)
    x = neurenix.Tensor(np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32))
    neurenix.manual_seed(123)
    want = [eager_step(x).item() for _ in range(3)]
    neurenix.manual_seed(123)
    got = [step(x).item() for _ in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert len(set(want)) == 3
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    assert step.cache_size == 1


def test_compiled_vae_step_would_differ_with_frozen_noise():
    """The VAE comparison can fail: replaying one noise sample changes the losses."""
    neurenix.manual_seed(0)
    model = _VAE()
    step = _vae_step(model, optim.SGD(model.parameters(), lr=0.5))
    x = neurenix.ones(8, 6)
    neurenix.manual_seed(123)
    fresh = [step(x).item() for _ in range(2)]
    neurenix.manual_seed(0)
    model = _VAE()
    step = _vae_step(model, optim.SGD(model.parameters(), lr=0.5))
    losses = []
    for _ in range(2):
        neurenix.manual_seed(123)  # the same noise every step
        losses.append(step(x).item())
    assert losses[0] == fresh[0] and not np.isclose(losses[1], fresh[1], rtol=1e-5)


# ---- the distributions ----------------------------------------------------------------------

def _ks(sample, cdf):
    """Kolmogorov-Smirnov distance between a sample and a continuous cdf."""
    x = np.sort(sample.astype(np.float64))
    n = len(x)
    c = cdf(x)
    return max(np.max(np.arange(1, n + 1) / n - c), np.max(c - np.arange(n) / n))


_NORMAL_CDF = np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))
N = 200_000
KS_LIMIT = 1.95 / math.sqrt(N)  # the 0.1% critical value


@pytest.mark.parametrize("dtype", [neurenix.float32, neurenix.float64], ids=str)
def test_normal_statistics(dtype):
    neurenix.manual_seed(2024)
    z = neurenix.randn(N, dtype=dtype).numpy()
    assert z.dtype == np.dtype(dtype.np_type)
    assert abs(z.mean()) < 4 / math.sqrt(N)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / N)
    assert abs(np.mean(z ** 3)) < 0.02 and abs(np.mean(z ** 4) - 3) < 0.06
    assert _ks(z, _NORMAL_CDF) < KS_LIMIT
    bound = math.sqrt(2 * (24 if dtype == neurenix.float32 else 48) * math.log(2))
    assert np.abs(z).max() <= bound * (1 + 1e-6) and np.isfinite(z).all()
    # neighbours come from independent words: no correlation
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 4 / math.sqrt(N)


@pytest.mark.parametrize("dtype, bits", [(neurenix.float32, 24), (neurenix.float64, 48)],
                         ids=["float32", "float64"])
def test_uniform_statistics_and_resolution(dtype, bits):
    neurenix.manual_seed(2025)
    u = neurenix.rand(N, dtype=dtype).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 0.002
    assert _ks(u, lambda v: v) < KS_LIMIT
    scaled = u.astype(np.float64) * 2.0 ** bits
    assert np.array_equal(scaled, np.floor(scaled))  # on the 2**-bits grid
    if bits == 48:
        coarse = u * 2.0 ** 24
        assert np.mean(coarse != np.floor(coarse)) > 0.99  # finer than one word


@pytest.mark.parametrize("low, high", [(-3, 4), (0, 1000), (10, 11), (-2**40, 2**40 + 5)],
                         ids=str)
def test_randint_statistics(low, high):
    neurenix.manual_seed(7)
    r = neurenix.randint(low, high, (N,)).numpy()
    assert r.dtype == np.int64 and r.min() >= low and r.max() < high
    span = high - low
    if span <= 1000:
        counts = np.bincount(r - low, minlength=span)
        expected = N / span
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        # chi-square with span - 1 degrees of freedom: mean span - 1, sd sqrt(2 (span - 1))
        assert chi2 < span - 1 + 5 * math.sqrt(2 * max(span - 1, 1)) + 1
        assert counts.min() > 0
    else:
        u = (r - low) / span
        assert _ks(u, lambda v: v) < KS_LIMIT


def test_randint_reaches_both_ends_of_a_power_of_two_range():
    neurenix.manual_seed(0)
    r = neurenix.randint(0, 2, (1000,)).numpy()
    assert set(np.unique(r)) == {0, 1}


# ---- validation and what cannot be traced ---------------------------------------------------

def test_random_creators_keep_their_errors_and_flags():
    with pytest.raises(TypeError, match="randn: expected a floating dtype"):
        neurenix.randn(2, dtype=neurenix.int64)
    with pytest.raises(TypeError, match="rand: expected a floating dtype"):
        neurenix.rand_like(neurenix.zeros(2, dtype=neurenix.int64))
    with pytest.raises(ValueError, match="sizes must be non-negative"):
        neurenix.randn(2, -1)
    with pytest.raises(ValueError, match="low=3, high=3"):
        neurenix.randint(3, 3, (2,))
    with pytest.raises(TypeError, match="randint: expected"):
        neurenix.randint(3)
    with pytest.raises(TypeError, match="high must be an integer"):
        neurenix.randint(0, 2.5, (2,))
    x = neurenix.randn(3, requires_grad=True)
    assert x.requires_grad and x.is_leaf and x.dtype == neurenix.float32
    assert neurenix.randn(()).shape == () and neurenix.randn(0, 4).shape == (0, 4)
    assert neurenix.rand(2, 3, device="cpu").device == neurenix.zeros(1).device


def test_randperm_works_eagerly_and_refuses_to_be_traced():
    neurenix.manual_seed(0)
    p = neurenix.randperm(10).numpy()
    assert sorted(p.tolist()) == list(range(10))
    compiled = neurenix.compile(lambda x: x[neurenix.randperm(4)])
    with pytest.raises(TraceError, match="randperm.*needs a sort"):
        compiled(neurenix.ones(4))


def test_random_init_refuses_to_be_traced():
    compiled = neurenix.compile(lambda x: nn.Linear(3, 2)(x))
    with pytest.raises(TraceError, match="nn.init.uniform_.*cannot be traced"):
        compiled(neurenix.ones(1, 3))
    with pytest.raises(TraceError, match="cannot fill a traced tensor"):
        neurenix.compile(lambda x: nn.init.zeros_(x))(neurenix.ones(2))
