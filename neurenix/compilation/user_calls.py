"""The user's functions a trace ran: the compiled function's helpers, whose reads of their
module's globals (`MAX_NORM`, `config.scale`) the program bakes in like its own.

While the traced function runs, a profile hook notes the code and globals of every Python
function called from a file that is neither Neurenix's nor the standard library's nor an
installed package's (`trace_guards.helper_guard` then guards what each reads).  When another
profiler is installed (cProfile) the hook is not: helpers then go unguarded, as before.
"""
from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import types
from collections.abc import Iterator
from typing import Any

from ..call_site import in_neurenix

_LIBRARY_DIRS = tuple(
    os.path.abspath(p) + os.sep
    for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib",
                                                      "platlib")} if p)
_USER: dict[str, bool] = {}  # co_filename -> whether it is the user's


def _users(filename: str) -> bool:
    known = _USER.get(filename)
    if known is None:
        known = not in_neurenix(filename) and not filename.startswith("<frozen") \
            and not os.path.abspath(filename).startswith(_LIBRARY_DIRS)
        _USER[filename] = known
    return known


@contextlib.contextmanager
def user_calls() -> Iterator[dict[types.CodeType, dict[str, Any]]]:
    """Meanwhile, every user function called: {code: its globals}."""
    called: dict[types.CodeType, dict[str, Any]] = {}
    if sys.getprofile() is not None:
        yield called
        return

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code not in called and _users(code.co_filename):
                called[code] = frame.f_globals

    sys.setprofile(hook)
    try:
        yield called
    finally:
        sys.setprofile(None)
