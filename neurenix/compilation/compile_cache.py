"""The on-disk compile cache: compiled programs and their machine code, keyed by what made them.

The key hashes the graph's text and constants, the backend, the host (triple, CPU, features,
LLVM version), Neurenix's version and a digest of its source, so an entry is only reused for
the exact same program, built by the same compiler, on the same machine.  A symbolic graph's
key also holds its symbols' ranges (`executables._symbols_key`); its sizes are polynomials in
the graph text (`f32[s0,4]`) and `{"poly": ...}` in the program's JSON.  Node sources enter
the key as absolute paths, so the same program run from another working directory hits.

Entries live in `$NEURENIX_CACHE_DIR` (default `$XDG_CACHE_HOME/neurenix`, else
`~/.cache/neurenix`); `NEURENIX_CACHE_DIR=off` disables the cache.  Since an entry holds
machine code that is loaded and run, nothing is trusted that this cache did not write:

- the directory is created with mode 0700; one owned by another user, or writable by group
  or others, is not used (one warning per path per process; compiling goes on without it);
- every entry carries an HMAC-SHA256 over its name and contents, keyed by a per-user secret
  (`secret.key` in the directory: 32 random bytes, mode 0600, created atomically); an entry
  whose MAC does not match (tampered, corrupt, copied from another cache directory) is
  deleted and rebuilt, and the MAC is checked before anything in the entry is parsed;
- entries hold no pickles: a JSON header (the record) followed by raw byte blobs and raw
  arrays of plain numeric dtypes, all checked for type and structure when read back.

A process running as the same user can read the secret and forge entries: the cache guards
against other users and copied or damaged files, not against the user's own code.

File layout: MAGIC, 32-byte MAC, then the body: an 8-byte little-endian header length, the
header (UTF-8 JSON: `{"key", "record", "blobs": [{"name", "size"[, "dtype", "shape"]}]}`),
then the blobs back to back.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pathlib
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

import neurenix.compiler
import neurenix.runtime
from neurenix.compiler.graph.ir import CONSTANT
from neurenix.compiler.graph.text import parse_graph, print_graph
from neurenix.compiler.symbolic import dim_from_poly
from neurenix.runtime.program import (
    DTYPE_NAMES,
    Program,
    from_json_value,
    program_from_json,
    program_to_json,
    to_json_value,
)
from neurenix.runtime.sizes import Poly, size_from_json, size_to_json

from ..version import __version__

MAGIC = b"NRXC2\n"
SECRET_NAME = "secret.key"
SECRET_BYTES = 32
_MAC_BYTES = 32
_MAC_CONTEXT = b"neurenix compile cache v2\0"
_KEY = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("neurenix.compile")


class CacheWarning(UserWarning):
    """The disk cache is not used (an untrusted directory or secret key file)."""


class EntryError(ValueError):
    """An authenticated entry whose contents do not have the expected structure."""


@dataclass
class Entry:
    """What one authenticated entry holds: its JSON record, byte blobs and arrays."""

    record: Any
    blobs: dict[str, bytes]
    arrays: dict[str, np.ndarray]


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
        frontend = pathlib.Path(__file__).parent.parent
        h = hashlib.sha256()
        for root in (frontend, pathlib.Path(neurenix.compiler.__file__).parent,
                     pathlib.Path(neurenix.runtime.__file__).parent):
            for path in sorted(root.rglob("*.py")):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
        _CODE.append(h.hexdigest())
    return _CODE[0]


def absolute_source(source: str) -> str:
    """A node's source (`file:line`, the file shown relative to the working directory) with
    an absolute path: what the cache keys and stores, independent of the working directory."""
    path, sep, line = source.rpartition(":")
    if not sep or not line.isdigit() or not path or path.startswith("<"):
        return source
    try:
        return f"{os.path.abspath(path)}:{line}"
    except OSError:  # the working directory is gone
        return source


def display_source(source: str) -> str:
    """An absolute `file:line` as the tracer shows it: relative to the working directory."""
    path, sep, line = source.rpartition(":")
    if not sep or not line.isdigit() or not os.path.isabs(path):
        return source
    try:
        return f"{os.path.relpath(path)}:{line}"
    except (OSError, ValueError):  # no working directory, or another drive (Windows)
        return source


def _hasher(*parts: str):
    """A SHA-256 over `parts` and what every entry's key holds: Neurenix's version and the
    digest of its source."""
    h = hashlib.sha256()
    for part in (*parts, __version__, code_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h


def key_for(graph: Any, backend: str, host: str) -> str:
    """A hex digest naming one compiled program."""
    h = _hasher(print_graph(graph, where=absolute_source), backend, host)
    for name in sorted(graph.constants):
        array = graph.constants[name]
        h.update(f"{name}:{array.dtype}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def library_key(parts: tuple[str, ...]) -> str:
    """A hex digest naming a support library a runtime built (its thread pool): `parts` are
    the runtime's name for it (what it is, the device it was built on), by this Neurenix."""
    return _hasher("library", *parts).hexdigest()


# ---- trust: the directory and the secret key -------------------------------------------------

_WARNED: set[str] = set()


def _refuse(path: pathlib.Path, why: str) -> None:
    """Warn, once per path per process, that the cache is not used and why."""
    if str(path) in _WARNED:
        return
    _WARNED.add(str(path))
    warnings.warn(f"neurenix: not using the compile cache at {path}: {why}; compiling without "
                  f"the disk cache", CacheWarning, stacklevel=4)


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _trusted_dir(directory: pathlib.Path) -> bool:
    """Whether `directory` exists, is a directory of ours and only we can write to it (a
    warning names the problem otherwise; a missing directory is just not there yet)."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    uid = _uid()
    if not stat.S_ISDIR(st.st_mode):
        _refuse(directory, "it is not a directory")
    elif uid is not None and st.st_uid != uid:
        _refuse(directory, f"it is owned by another user (uid {st.st_uid}, we are {uid})")
    elif uid is not None and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        _refuse(directory, f"it is writable by group or others (mode "
                           f"{stat.S_IMODE(st.st_mode):o}; `chmod 700` it to use it)")
    else:
        return True
    return False


def _read_secret(directory: pathlib.Path, create: bool) -> bytes | None:
    """The secret key entries are authenticated with; created (32 random bytes, mode 0600)
    when `create` and absent.  None when absent, or refused with a warning when it is not a
    regular 32-byte file of ours that only we can read."""
    path = directory / SECRET_NAME
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            return None
        try:
            _create_secret(directory, path)
            fd = os.open(path, flags)
        except OSError:
            return None
    except OSError as e:
        _refuse(path, f"the key file cannot be opened ({e.strerror})")
        return None
    try:
        st = os.fstat(fd)
        uid = _uid()
        if not stat.S_ISREG(st.st_mode):
            _refuse(path, "the key file is not a regular file")
        elif uid is not None and st.st_uid != uid:
            _refuse(path, f"the key file is owned by another user (uid {st.st_uid})")
        elif uid is not None and st.st_mode & 0o077:
            _refuse(path, f"the key file has mode {stat.S_IMODE(st.st_mode):o}, not 600")
        elif st.st_size != SECRET_BYTES:
            _refuse(path, f"the key file holds {st.st_size} bytes, not {SECRET_BYTES}")
        else:
            secret = os.read(fd, SECRET_BYTES + 1)
            return secret if len(secret) == SECRET_BYTES else None
        return None
    finally:
        os.close(fd)


def _create_secret(directory: pathlib.Path, path: pathlib.Path) -> None:
    """Write a new secret to a private temporary file (O_EXCL, mode 0600), then link it into
    place: readers never see a partial key, and of two processes racing, one key wins."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-", suffix=".tmp")
    try:
        try:  # mkstemp opened it with O_EXCL and mode 0600
            _write_all(fd, os.urandom(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:  # no hard links here: create it in place, exclusively
            _create_secret_in_place(path)
    finally:
        _unlink(pathlib.Path(tmp))


def _create_secret_in_place(path: pathlib.Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    try:
        _write_all(fd, os.urandom(SECRET_BYTES))
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _mac(secret: bytes, key: str, body: bytes | memoryview) -> bytes:
    """The entry's MAC: over its name (so an entry cannot stand in for another) and body."""
    h = hmac.new(secret, _MAC_CONTEXT, hashlib.sha256)
    h.update(key.encode() + b"\0")
    h.update(body)
    return h.digest()


# ---- entries ---------------------------------------------------------------------------------

def load(key: str) -> Entry | None:
    """The authenticated entry for `key`, or None when caching is off, the entry is absent,
    or it fails its MAC or its structure check (then it is deleted, to be rebuilt)."""
    directory = cache_dir()
    if directory is None or not _KEY.fullmatch(key) or not _trusted_dir(directory):
        return None
    secret = _read_secret(directory, create=False)
    if secret is None:
        return None
    path = directory / f"{key}.bin"
    blob = _read_entry(path)
    if blob is None:
        return None
    head = len(MAGIC) + _MAC_BYTES
    body = memoryview(blob)[head:]
    if len(blob) < head or not blob.startswith(MAGIC) or \
            not hmac.compare_digest(blob[len(MAGIC):head], _mac(secret, key, body)):
        discard(key, "its MAC does not match (damaged, tampered with, or from another cache)")
        return None
    try:
        return _parse(key, body)
    except (EntryError, ValueError, TypeError, KeyError, RecursionError) as e:
        discard(key, f"it is malformed ({e})")
        return None


def _read_entry(path: pathlib.Path) -> bytes | None:
    """An entry file's bytes (a regular file, not followed through a link), None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse(key: str, body: memoryview) -> Entry:
    """Split an authenticated body into its record, blobs and arrays, checking the layout."""
    if len(body) < 8:
        raise EntryError("no header")
    size = int.from_bytes(body[:8], "little")
    if size > len(body) - 8:
        raise EntryError("the header runs past the end")
    header = json.loads(bytes(body[8:8 + size]).decode("utf-8"))
    if type(header) is not dict or set(header) != {"key", "record", "blobs"} or \
            header["key"] != key or type(header["blobs"]) is not list:
        raise EntryError("a header without key, record and blobs")
    blobs: dict[str, bytes] = {}
    arrays: dict[str, np.ndarray] = {}
    offset = 8 + size
    for item in header["blobs"]:
        if type(item) is not dict or type(item.get("name")) is not str or \
                type(item.get("size")) is not int or item["size"] < 0 or \
                item["name"] in blobs or item["name"] in arrays:
            raise EntryError("a malformed blob description")
        data = bytes(body[offset:offset + item["size"]])
        if len(data) != item["size"]:
            raise EntryError(f"blob {item['name']!r} runs past the end")
        offset += item["size"]
        if set(item) == {"name", "size"}:
            blobs[item["name"]] = data
        elif set(item) == {"name", "size", "dtype", "shape"}:
            arrays[item["name"]] = _array(item, data)
        else:
            raise EntryError(f"blob {item['name']!r} has unknown fields")
    if offset != len(body):
        raise EntryError("bytes after the last blob")
    return Entry(header["record"], blobs, arrays)


def _array(item: dict, data: bytes) -> np.ndarray:
    """A blob's array: a plain numeric dtype and a shape whose size matches the bytes."""
    dtype, shape = item["dtype"], item["shape"]
    if type(dtype) is not str or dtype not in DTYPE_NAMES or type(shape) is not list or \
            not all(type(d) is int and d >= 0 for d in shape):
        raise EntryError(f"array {item['name']!r} has a bad dtype or shape")
    dt = np.dtype(dtype)
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(data):
        raise EntryError(f"array {item['name']!r} does not match its size")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()


def store(key: str, record: Any, blobs: dict[str, bytes] | None = None,
          arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write an entry (a JSON record, byte blobs, numeric arrays) atomically, authenticated
    with this cache's secret.  A failure to write (read-only or full disk, the directory
    gone, an untrusted directory) only costs the next compile."""
    directory = cache_dir()
    if directory is None or not _KEY.fullmatch(key):
        return
    try:
        items, payload = _blobs(blobs or {}, arrays or {})
        header = json.dumps({"key": key, "record": record, "blobs": items},
                            separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        log.debug("neurenix compile cache: not storing %s: %s", key, e)
        return
    body = b"".join([len(header).to_bytes(8, "little"), header, *payload])
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return
    if not _trusted_dir(directory):
        return
    secret = _read_secret(directory, create=True)
    if secret is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _mac(secret, key, body) + body)
        os.replace(tmp, directory / f"{key}.bin")
    except OSError:
        _unlink(pathlib.Path(tmp))


def _blobs(blobs: dict[str, bytes],
           arrays: dict[str, np.ndarray]) -> tuple[list[dict], list[bytes]]:
    """The header's blob list and the blobs' bytes, in order."""
    items: list[dict] = []
    payload: list[bytes] = []
    for name, data in blobs.items():
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"blob {name!r} is not bytes")
        items.append({"name": name, "size": len(data)})
        payload.append(bytes(data))
    for name, array in arrays.items():
        if name in blobs:
            raise ValueError(f"{name!r} names both a blob and an array")
        array = np.asarray(array)
        if array.dtype.name not in DTYPE_NAMES or not array.dtype.isnative:
            raise TypeError(f"array {name!r} has dtype {array.dtype}")
        data = array.tobytes()
        items.append({"name": name, "size": len(data), "dtype": array.dtype.name,
                      "shape": [int(d) for d in array.shape]})
        payload.append(data)
    return items, payload


def discard(key: str, why: str) -> None:
    """Delete the entry for `key` (it is rebuilt by the next compile) and log why."""
    directory = cache_dir()
    if directory is None or not _KEY.fullmatch(key):
        return
    log.debug("neurenix compile cache: discarding entry %s: %s", key, why)
    _unlink(directory / f"{key}.bin")


def _unlink(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# ---- records: what compiled.py stores, and their strict readers ------------------------------

_STATS_COUNTS = ("ops_traced", "kernels", "bytes_naive", "bytes_planned", "bytes_lower_bound",
                 "backward_kernels", "backward_bytes_planned")
_INFO_COUNTS = ("kernels", "ops", "naive_bytes", "planned_bytes", "lower_bound_bytes")
_BACKWARD_SOURCES = ("saved", "input", "cotangent")


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise EntryError(what)


def _record(entry: Entry, kind: str, fields: set[str]) -> dict:
    record = entry.record
    _need(type(record) is dict and set(record) == fields | {"kind"} and record["kind"] == kind,
          f"not a {kind} record with fields {sorted(fields)}")
    return record


def _counts(value: Any, what: str) -> list[int]:
    _need(type(value) is list and all(type(v) is int and v >= 0 for v in value),
          f"{what} is not a list of counts")
    return list(value)


def _numbers(data: Any, keys: tuple[str, ...], what: str) -> dict:
    """`data` with its `keys` read back as counts: a dict with str keys whose `keys`, where
    present, are ints >= 0, or (a symbolic program's byte counts) `{"poly": ...}` sizes,
    given back as `Dim`s (`_sizes_out` wrote them)."""
    _need(type(data) is dict and all(type(k) is str for k in data), f"{what} is not a dict")
    data = dict(data)
    for k in keys:
        if k in data and type(data[k]) is dict:
            size = size_from_json(data[k])
            _need(isinstance(size, Poly), f"{what} {k}")
            data[k] = dim_from_poly(size)
        else:
            _need(k not in data or (type(data[k]) is int and data[k] >= 0), f"{what} {k}")
    return data


def _sizes_out(data: dict, keys: tuple[str, ...]) -> dict:
    """`data` with its `keys` that are dynamic sizes as `{"poly": ...}` (JSON data)."""
    return {k: size_to_json(v) if k in keys and isinstance(v, Poly) else v
            for k, v in data.items()}


def _seconds(value: object, what: str) -> None:
    _need(type(value) is dict and all(type(v) in (int, float) for v in value.values()),
          f"{what} is not a dict of seconds")


def program_record(program: Program, info: dict, object_code: bytes | None,
                   library: bytes | None) -> tuple[dict, dict[str, bytes], dict[str, np.ndarray]]:
    """A compiled program's entry: record, machine code blobs and constant arrays."""
    data, arrays = program_to_json(program)
    blobs = {name: code for name, code in (("object_code", object_code), ("library", library))
             if code is not None}
    return ({"kind": "program", "program": data,
             "info": to_json_value(_sizes_out(info, _INFO_COUNTS))}, blobs, arrays)


def store_program(key: str, program: Program, info: dict, object_code: bytes | None,
                  library: bytes | None) -> None:
    """Store a compiled program with the machine code its executable loaded (a program that
    is not plain data is not stored: the next compile builds it again)."""
    try:
        record, blobs, arrays = program_record(program, info, object_code, library)
    except (TypeError, ValueError) as e:
        log.debug("neurenix compile cache: not storing %s: %s", key, e)
        return
    store(key, record, blobs, arrays)


def read_program(entry: Entry) -> tuple[Program, dict, bytes | None, bytes | None]:
    """The program, build info, object code and shared library of a program entry."""
    record = _record(entry, "program", {"program", "info"})
    _need(set(entry.blobs) <= {"object_code", "library"}, "unknown blobs")
    program = program_from_json(record["program"], entry.arrays)
    info = _numbers(from_json_value(record["info"]), _INFO_COUNTS, "build info")
    _seconds(info.get("stages", {}), "build info stages")
    return program, info, entry.blobs.get("object_code"), entry.blobs.get("library")


def store_library(key: str, library: bytes) -> None:
    """Store a support library's shared-object bytes."""
    store(key, {"kind": "library"}, {"library": library})


def read_library(entry: Entry) -> bytes:
    """The bytes of a support-library entry (`store_library`)."""
    _record(entry, "library", set())
    _need(set(entry.blobs) == {"library"} and not entry.arrays, "a library entry's blobs")
    return entry.blobs["library"]


def built_record(graph: Any, stats: dict, programs: list[str],
                 backward_inputs: list[tuple[str, int]], differentiable: list[int],
                 num_saved: int) -> tuple[dict, dict[str, np.ndarray]]:
    """What a traced graph compiled to: the optimised graph as text (node sources with
    absolute paths) with its constants, the stats, the programs' keys and their wiring."""
    record = {"kind": "built", "graph": print_graph(graph, where=absolute_source),
              "stats": to_json_value(_sizes_out(stats, _STATS_COUNTS)),
              "programs": list(programs),
              "backward_inputs": [[str(kind), int(i)] for kind, i in backward_inputs],
              "differentiable": [int(i) for i in differentiable], "num_saved": int(num_saved)}
    return record, dict(graph.constants)


def read_built(entry: Entry) -> dict[str, Any]:
    """The fields of a built record, checked: `graph` (parsed, node sources shown relative to
    this working directory; a symbolic graph's types are checked in the active shape
    environment, which must hold its symbols), `stats`, `programs`, `backward_inputs`,
    `differentiable`, `num_saved`."""
    record = _record(entry, "built", {"graph", "stats", "programs", "backward_inputs",
                                      "differentiable", "num_saved"})
    text = record["graph"]
    _need(type(text) is str, "graph is not text")
    graph = parse_graph(text, entry.arrays, where=display_source)
    _need(set(graph.constants) == {n.name for n in graph.nodes if n.op == CONSTANT},
          "constants do not match the graph")
    _need(print_graph(graph, where=absolute_source) == text, "graph text does not round-trip")
    stats = _numbers(from_json_value(record["stats"]), _STATS_COUNTS, "stats")
    passes = stats.get("passes", [])
    _need(type(passes) is list and all(
        type(p) is tuple and len(p) == 4 and type(p[0]) is str and type(p[1]) is int
        and type(p[2]) is int and type(p[3]) in (int, float) for p in passes), "stats passes")
    programs = record["programs"]
    _need(type(programs) is list and len(programs) == 2 and type(programs[0]) is str
          and _KEY.fullmatch(programs[0]) is not None and type(programs[1]) is str
          and (programs[1] == "" or _KEY.fullmatch(programs[1]) is not None), "program keys")
    pairs = record["backward_inputs"]
    _need(type(pairs) is list and all(
        type(p) is list and len(p) == 2 and p[0] in _BACKWARD_SOURCES and type(p[1]) is int
        and p[1] >= 0 for p in pairs), "backward inputs")
    num_saved = record["num_saved"]
    _need(type(num_saved) is int and num_saved >= 0, "num_saved")
    return {"graph": graph, "stats": stats, "programs": programs,
            "backward_inputs": [(kind, i) for kind, i in pairs],
            "differentiable": _counts(record["differentiable"], "differentiable"),
            "num_saved": num_saved}
