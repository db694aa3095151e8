"""Which devices the tests run on: `needs_device(kind)` skips a test where the device is
absent here, except that CI lists the devices it installed in `NEURENIX_REQUIRE_DEVICES`
(comma-separated, e.g. "opencl,webgpu"), and there an absent device fails instead: no device
test may skip in CI."""
from __future__ import annotations

import functools
import importlib
import os

import pytest
from neurenix.runtime import BACKENDS


def required() -> set[str]:
    """The devices CI requires (NEURENIX_REQUIRE_DEVICES)."""
    return {d.strip() for d in os.environ.get("NEURENIX_REQUIRE_DEVICES", "").split(",")
            if d.strip()}


@functools.cache
def _reason(kind: str) -> str:
    """Why `kind` cannot run here ("" when it can)."""
    name = BACKENDS.get(kind, f"neurenix.runtime.{kind}")  # "rocm" runs in runtime.hip
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        return f"{name} does not import: {e}"
    if module.available():
        return ""
    return module.unavailable_reason() or f"{kind} is not available"


def have(kind: str) -> bool:
    """Whether tests on `kind` run here (in CI a required device that is absent fails the
    test that asks, rather than hiding it)."""
    return not _reason(kind) or kind in required()


def needs_device(kind: str) -> None:
    """Skip the calling test when `kind` is absent, fail when CI requires it."""
    reason = _reason(kind)
    if not reason:
        return
    if kind in required():
        pytest.fail(f"{kind} is required here (NEURENIX_REQUIRE_DEVICES) but: {reason}")
    pytest.skip(f"{kind}: {reason}")



GPU_DEVICES = ("opencl", "webgpu") + tuple(k for k in ("cuda", "rocm") if have(k))
"""The devices the parity and adversarial device tests run on: the software devices always
(CI installs them), CUDA and ROCm where a GPU is here or CI requires one."""
