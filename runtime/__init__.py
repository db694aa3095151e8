"""Device backends that load and run generated code.

One explicit table of backends, each imported lazily, so `import neurenix` never needs a driver.
A backend module exposes `is_available() -> bool`; probing never raises.
"""
from __future__ import annotations

import importlib

BACKENDS: dict[str, str] = {
    "cpu": "neurenix.runtime.cpu",
}


def is_available(name: str) -> bool:
    """Whether backend `name` can run here; a failed probe (no driver, import error) is False."""
    module_name = BACKENDS.get(name)
    if module_name is None:
        return False
    try:
        return bool(importlib.import_module(module_name).is_available())
    except Exception:
        return False


def available_backends() -> list[str]:
    """The names of the backends that can run here, in table order."""
    return [name for name in BACKENDS if is_available(name)]
