"""Device backends that load and run generated code.

One explicit table of backends, each imported lazily, so `import neurenix` never needs a driver.
The compiler's target table (`neurenix.compiler.targets`) names, per target, the runtime module
that runs its programs; the frontend finds runtime modules only there and uses only this
protocol, which every runtime module provides as plain module-level names (`runtime/backend.py`
states it as `typing.Protocol`s):

- `available() -> bool`: whether the device can run here; probing never raises.
- `fingerprint() -> str`: a cheap identity of the device for cache keys (no compiler needed).
- `code_identity() -> str`: what compiled code depends on besides its source (device model,
  features, compiler version); part of every cached program's key.
- `Executable(program, object_code=None, library=None)`: the class that loads a `Program`
  (from the bytes of an earlier build when given: the caller vouches for them, as a cache
  does); `.run(inputs) -> outputs` on host arrays, `.object_code` and `.library` (bytes a cache
  may store, or None), `.source`.
- `prepare(program, cache)`: load, once per process, the support libraries the program needs
  (the CPU's thread pool).  `cache` has `load_library(key_parts) -> bytes | None` and
  `store_library(key_parts, data)`, so a runtime keeps what it builds without importing the
  frontend's cache.

A runtime may compile out of process: the CPU runtime hands LLVM IR to a persistent worker
process (`compile_worker`; `NEURENIX_COMPILE_WORKER=0` keeps it in-process), because LLVM's
optimiser leaks on every run; loading and running stay in the caller's process.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loader import LoadedModel

BACKENDS: dict[str, str] = {
    "cpu": "neurenix.runtime.cpu",
    "opencl": "neurenix.runtime.opencl",
    "webgpu": "neurenix.runtime.webgpu",
    "cuda": "neurenix.runtime.cuda",
    "rocm": "neurenix.runtime.hip",
}


def backend_module(name: str):
    """The runtime module that runs programs whose `Program.target` is `name` (imported on
    first use); an unknown name raises ValueError listing the known ones."""
    module_name = BACKENDS.get(name)
    if module_name is None:
        raise ValueError(f"no runtime backend runs {name!r} programs; known: {sorted(BACKENDS)}")
    return importlib.import_module(module_name)


def is_available(name: str) -> bool:
    """Whether backend `name` can run here; a failed probe (no driver, import error) is False."""
    module_name = BACKENDS.get(name)
    if module_name is None:
        return False
    try:
        return bool(importlib.import_module(module_name).available())
    except Exception:
        return False


def available_backends() -> list[str]:
    """The names of the backends that can run here, in table order."""
    return [name for name in BACKENDS if is_available(name)]


def load(path: str | os.PathLike[str]) -> LoadedModel:
    """Load an artifact `neurenix.export` wrote (a directory), checked against its manifest,
    for its device here: a `runtime.loader.LoadedModel`, `model(inputs) -> outputs` on NumPy
    arrays.  A tampered, truncated, newer or foreign artifact raises
    `runtime.artifact.ArtifactError` naming the file (see docs/deploy/README.md)."""
    from .loader import load as load_artifact

    return load_artifact(path, backend_module)
