"""Where in the user's code an operation was written, for the errors a trace raises.

`user_source()` is the `file:line` of the innermost frame outside Neurenix itself (the
frontend, the compiler and the runtime), so that an error names the user's line, not ours.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import neurenix.compiler
import neurenix.runtime
from neurenix.compiler.trace import TraceError

_PACKAGE_DIRS = tuple(os.path.dirname(os.path.abspath(path)) + os.sep
                      for path in (__file__, neurenix.compiler.__file__,
                                   neurenix.runtime.__file__))
_FILES: dict[str, str | None] = {}  # co_filename -> its display path, None inside Neurenix


def _display_path(filename: str) -> str | None:
    shown = _FILES.get(filename, "")
    if shown == "":
        name = os.path.abspath(filename)
        if name.startswith(_PACKAGE_DIRS):
            shown = None
        else:
            shown = filename if filename.startswith("<") else os.path.relpath(name)
        _FILES[filename] = shown
    return shown


def in_neurenix(filename: str) -> bool:
    """Whether code from `filename` is Neurenix's own (frontend, compiler, runtime)."""
    return _display_path(filename) is None


def user_source() -> str | None:
    """file:line of the innermost frame outside Neurenix itself (the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        shown = _display_path(frame.f_code.co_filename)
        if shown is not None:
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def refuse(tensor: Any, what: str) -> TraceError:
    """The error for reading a Python value out of a traced (symbolic) tensor."""
    where = user_source() or "<unknown>"
    return TraceError(f"{what} on a traced tensor ({tensor._value.type}) at {where}: "
                      f"neurenix.compile cannot capture a Python value computed from a traced "
                      f"input. Keep the computation in tensor operations, or run that part "
                      f"outside the compiled function")
