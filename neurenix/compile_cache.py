"""The on-disk compile cache: a compiled Program and its machine code, keyed by what made them.

The key hashes the graph's text and constants, the backend, the host (triple, CPU, features,
LLVM version), Neurenix's version and a digest of its source, so an entry is only reused for
the exact same program, built by the same compiler, on the same machine.  Entries live in
`$NEURENIX_CACHE_DIR` (default `$XDG_CACHE_HOME/neurenix`, else `~/.cache/neurenix`);
`NEURENIX_CACHE_DIR=off` disables the cache.  Each file carries a checksum: a corrupt or
unreadable entry is ignored and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import tempfile
from typing import Any

MAGIC = b"NRXC1"


def cache_dir() -> pathlib.Path | None:
    """Where entries live, or None when caching is off."""
    value = os.environ.get("NEURENIX_CACHE_DIR", "")
    if value.lower() in ("off", "0", "none"):
        return None
    if value:
        return pathlib.Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "neurenix"


_CODE: list[str] = []


def code_fingerprint() -> str:
    """A digest of Neurenix's own source (the frontend, the compiler and the runtime), so that
    a changed compiler never reuses programs an older one built, even at the same version."""
    if not _CODE:
        import neurenix
        import neurenix.compiler
        import neurenix.runtime
        h = hashlib.sha256()
        for package in (neurenix, neurenix.compiler, neurenix.runtime):
            root = pathlib.Path(package.__file__).parent
            for path in sorted(root.rglob("*.py")):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
        _CODE.append(h.hexdigest())
    return _CODE[0]


def key_for(graph: Any, backend: str, host: str) -> str:
    """A hex digest naming one compiled program."""
    from . import __version__
    h = hashlib.sha256()
    for part in (str(graph), backend, host, __version__, code_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    for name in sorted(graph.constants):
        array = graph.constants[name]
        h.update(f"{name}:{array.dtype}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def load(key: str) -> Any | None:
    """The cached value for key, or None when absent, corrupt or caching is off."""
    directory = cache_dir()
    if directory is None:
        return None
    path = directory / f"{key}.bin"
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    body = blob[len(MAGIC) + 32:]
    if not blob.startswith(MAGIC) or hashlib.sha256(body).digest() != blob[len(MAGIC):][:32]:
        _discard(path)
        return None
    try:
        return pickle.loads(body)
    except Exception:  # noqa: BLE001 - any unreadable entry is rebuilt, never trusted
        _discard(path)
        return None


def store(key: str, value: Any) -> None:
    """Write an entry atomically (a failure to write only costs the next compile)."""
    directory = cache_dir()
    if directory is None:
        return
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, directory / f"{key}.bin")
    except OSError:
        return


def _discard(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
