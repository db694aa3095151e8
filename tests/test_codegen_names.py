"""Buffer names that are keywords of a GPU language still compile (regression: a graph input
named `target` was a WGSL parse error)."""
import numpy as np
import pytest
from devices import GPU_DEVICES, needs_device

import neurenix as nx


@pytest.mark.parametrize("kind", GPU_DEVICES)
def test_keyword_and_dotted_buffer_names(kind):
    needs_device(kind)

    def f(target, loop, var, kernel, global_, constant, let):
        return (target * loop + var - kernel) * global_ + constant / let

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(5).astype(np.float32) + 2 for _ in range(7)]
    expected = f(*[nx.Tensor(x) for x in xs]).numpy()
    out = nx.compile(f)(*[nx.Tensor(x).to(kind) for x in xs])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
