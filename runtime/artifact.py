"""The exported artifact's format: a directory with `manifest.json`, `weights.safetensors` and
per-target code files (see docs/deploy/README.md).

This module holds what both sides of the format share and what a loader checks: the format
version, SHA-256 of files, a strict safetensors reader and writer (8-byte little-endian header
length, JSON header, raw data), and the manifest's structural checks.  It imports only the
standard library, NumPy and `runtime.program`: never the compiler or the frontend.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
from typing import Any

import numpy as np

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
CONSTANT_PREFIX = "const:"
"""Program constants are stored in the weights file under this prefix."""
BATCH1_PREFIX = "batch1:const:"
"""A dynamic-batch artifact's batch-1 program stores its constants under this prefix."""
MAX_HEADER = 100 << 20
"""The largest safetensors header this reader accepts (bytes)."""

SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64",
    "int64": "I64", "uint64": "U64"}
NUMPY_DTYPES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


class ArtifactError(ValueError):
    """An exported artifact that cannot be loaded here; `file` names the file at fault."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def host_arch() -> str:
    """This machine's architecture as the manifest names it (x86_64, aarch64, ...)."""
    machine = platform.machine().lower()
    return ARCH_ALIASES.get(machine, machine)


def triple_arch(triple: str) -> str:
    """The architecture part of an LLVM target triple ("x86_64-unknown-linux-gnu" -> x86_64)."""
    arch = triple.split("-", 1)[0].lower()
    return ARCH_ALIASES.get(arch, arch)


# ---- safetensors ---------------------------------------------------------------------------


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (C order, little-endian) as one safetensors file, in sorted name order;
    the header is padded with spaces to a multiple of 8 bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")
        dtype = SAFETENSORS_DTYPES.get(array.dtype.name)
        if dtype is None:
            raise TypeError(f"write_safetensors: {name!r} has dtype {array.dtype}, which "
                            f"safetensors does not store")
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(d) for d in array.shape],
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str | os.PathLike, name: str = WEIGHTS) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, after checking its structure: header length within
    the file, a JSON object of known dtypes, shapes that match their byte ranges, and byte
    ranges that cover the data exactly, without holes or overlaps.  ArtifactError naming
    `name` on anything else."""
    data = pathlib.Path(path).read_bytes()

    def fail(why: str) -> ArtifactError:
        return ArtifactError(name, f"not a valid safetensors file: {why}")

    if len(data) < 8:
        raise fail("shorter than its 8-byte header length")
    size = int.from_bytes(data[:8], "little")
    if size > MAX_HEADER or 8 + size > len(data):
        raise fail(f"header length {size} runs past the file ({len(data)} bytes)")
    try:
        header = json.loads(data[8:8 + size].decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"the header is not JSON ({e})") from None
    if type(header) is not dict:
        raise fail("the header is not a JSON object")
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + size:]
    arrays: dict[str, np.ndarray] = {}
    ranges = []
    for key, entry in header.items():
        if type(entry) is not dict or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(f"tensor {key!r} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in NUMPY_DTYPES:
            raise fail(f"tensor {key!r} has unknown dtype {dtype!r}")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise fail(f"tensor {key!r} has a malformed shape")
        if (type(offsets) is not list or len(offsets) != 2
                or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= len(body)):
            raise fail(f"tensor {key!r} has byte range {offsets!r} outside the data")
        np_dtype = np.dtype(NUMPY_DTYPES[dtype]).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        if count * np_dtype.itemsize != offsets[1] - offsets[0]:
            raise fail(f"tensor {key!r}: shape {shape} does not fill bytes {offsets}")
        ranges.append(tuple(offsets))
        flat = np.frombuffer(body[offsets[0]:offsets[1]], dtype=np_dtype, count=count)
        arrays[key] = flat.astype(np_dtype.newbyteorder("="), copy=True).reshape(tuple(shape))
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise fail("tensor byte ranges overlap or leave a hole")
        end = stop
    if end != len(body):
        raise fail(f"the data holds {len(body)} bytes, the tensors {end}")
    return arrays


# ---- the manifest --------------------------------------------------------------------------


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an artifact directory after its structural checks (format version,
    the fields a loader reads); ArtifactError naming manifest.json otherwise."""
    path = pathlib.Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(MANIFEST, f"missing: {directory} is not an exported artifact")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(MANIFEST, f"not valid JSON ({e})") from None
    if type(manifest) is not dict:
        raise ArtifactError(MANIFEST, "not a JSON object")
    version = manifest.get("format")
    if type(version) is not int or version < 1:
        raise ArtifactError(MANIFEST, f"no format version (got {version!r})")
    if version > FORMAT_VERSION:
        raise ArtifactError(MANIFEST, f"format version {version} is newer than this runtime "
                                      f"reads ({FORMAT_VERSION}); load it with a newer "
                                      f"Neurenix")
    required = {"target": str, "inputs": list, "outputs": list, "bindings": list,
                "program": dict, "sources": dict, "files": dict, "weights": str}
    for key, kind in required.items():
        if type(manifest.get(key)) is not kind:
            raise ArtifactError(MANIFEST, f"field {key!r} is missing or not a "
                                          f"{kind.__name__}")
    for name, entry in manifest["files"].items():
        if (type(entry) is not dict or type(entry.get("sha256")) is not str
                or type(entry.get("bytes")) is not int or not safe_name(name)):
            raise ArtifactError(MANIFEST, f"files entry {name!r} is malformed")
    return manifest


def safe_name(name: object) -> bool:
    """Whether `name` is a relative path inside the artifact (no '..', not absolute)."""
    if type(name) is not str or not name or name.startswith(("/", "\\")):
        return False
    return all(part not in ("", ".", "..") for part in name.replace("\\", "/").split("/"))


def verify_files(directory: str | os.PathLike, manifest: dict) -> None:
    """Check that every file the manifest lists is there with its size and SHA-256, and that
    the files the loader reads are listed; ArtifactError naming the first file that is not."""
    root = pathlib.Path(directory)
    files = manifest["files"]
    needed = [WEIGHTS] + [f for f in _source_files(manifest["sources"])]
    batch1 = manifest.get("dynamic_batch")
    batch1 = batch1.get("batch1") if type(batch1) is dict else None
    if type(batch1) is dict and type(batch1.get("sources")) is dict:
        needed += _source_files(batch1["sources"])  # a GPU dynamic batch's batch-1 program
    for name in needed:
        if name not in files:
            raise ArtifactError(name, "the manifest does not list it (no checksum)")
    for name, entry in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise ArtifactError(name, f"missing from {directory}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ArtifactError(name, f"{size} bytes, the manifest says {entry['bytes']} "
                                      f"(truncated or replaced)")
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(name, "SHA-256 does not match the manifest (the file was "
                                      "modified or corrupted)")


def _source_files(sources: dict) -> list[str]:
    """The files named by the manifest's `sources` (program source and per-kernel sources)."""
    names = []
    for key, value in sources.items():
        if key == "kernels" and type(value) is dict:
            names += [v for v in value.values()]
        elif type(value) is str:
            names.append(value)
    for name in names:
        if not safe_name(name):
            raise ArtifactError(MANIFEST, f"sources names {name!r}, not a file inside the "
                                          f"artifact")
    return names
