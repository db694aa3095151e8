"""A process that exits with device work still in flight exits cleanly (regression: PoCL
crashed at interpreter exit, a segfault or std::bad_alloc, when kernels were still queued)."""
import os
import subprocess
import sys
import textwrap

import pytest
from devices import GPU_DEVICES, needs_device


@pytest.mark.parametrize("kind", GPU_DEVICES)
def test_exit_with_kernels_in_flight(kind, tmp_path):
    needs_device(kind)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_compile_parity as tp
        import neurenix as nx
        family = tp.DEVICE_FAMILIES["elementwise"][1]
        fn, data, _ = tp._together(tp._family("{kind}", family, tp.TENSOR_CASES))
        c = nx.compile(lambda *xs: fn(nx, *xs))
        xs = [nx.tensor(a, requires_grad=True, device="{kind}") for a in data]
        outs = [o.to("cpu").sum() for o in c(*xs) if o.dtype.is_floating]
        sum(outs).backward()        # the gradients' kernels queued, never waited for
    """)
    env = dict(os.environ, POCL_CACHE_DIR=str(tmp_path / "pocl"),
               NEURENIX_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
