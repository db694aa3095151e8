"""Ahead-of-time export (`neurenix.export.export`) and loading (`neurenix.runtime.load`).

The spec's three models (MLP, CNN, 2-layer LSTM; benchmarks/workloads.py at tiny sizes) are
exported for the CPU and loaded back, through Python and through the C API from a C program
built here with the system C compiler (tests/c/run_model.c, run in its own process: no Python
there); exported for OpenCL and WebGPU and run on those devices; exported for CUDA and HIP
with their PTX and code object (toolchains required where CI says so).  Every file of an
artifact is tampered with (a flipped byte, a missing file), the format version raised, the
target and architecture changed: each is refused naming the file.  And `runtime.load` runs in
a process where every frontend and compiler module fails to import.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import artifact, load
from neurenix.runtime.artifact import ArtifactError
from test_toolchain_cuda_hip import _need_cuda, _need_hip

import neurenix
from neurenix.export import ExportError, export

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from workloads import WORKLOADS, make_inputs, neurenix_model  # noqa: E402

MODELS = {"mlp": "mlp_b1", "cnn": "cnn_infer", "lstm": "lstm_infer"}
RTOL, ATOL = 1e-5, 1e-6


def _model(kind: str) -> tuple[object, list[np.ndarray], np.ndarray]:
    """The spec model `kind` (tiny sizes, eval mode), its inputs and its eager output."""
    workload = WORKLOADS[MODELS[kind]]
    model = neurenix_model(workload, tiny=True)
    model.eval()
    inputs, _ = make_inputs(workload, tiny=True)
    with neurenix.no_grad():
        expected = model(*[neurenix.Tensor(x) for x in inputs]).numpy()
    return model, inputs, expected


@pytest.fixture(scope="module")
def cpu_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each spec model exported for the CPU: (directory, inputs, eager output)."""
    root = tmp_path_factory.mktemp("export-cpu")
    out = {}
    for kind in MODELS:
        model, inputs, expected = _model(kind)
        directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), "cpu",
                           root / kind)
        out[kind] = (directory, inputs, expected)
    return out


# ---- the CPU artifact ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_cpu_artifact_runs_as_eager(cpu_artifacts: dict, kind: str) -> None:
    directory, inputs, expected = cpu_artifacts[kind]
    loaded = load(directory)
    assert loaded.target == "cpu" and loaded.executable.loader == "shared library"
    (got,) = loaded(inputs)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    (again,) = loaded.run([x.copy() for x in inputs])
    np.testing.assert_array_equal(again, got)


def test_manifest_describes_the_artifact(cpu_artifacts: dict) -> None:
    directory, inputs, expected = cpu_artifacts["cnn"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == artifact.FORMAT_VERSION
    assert manifest["neurenix_version"] == neurenix.__version__
    assert manifest["target"] == "cpu" and manifest["weights"] == "file"
    assert manifest["inputs"] == [{"name": "x", "shape": list(inputs[0].shape),
                                   "dtype": "float32"}]
    assert [o["shape"] for o in manifest["outputs"]] == [list(expected.shape)]
    assert manifest["memory"]["arena_bytes"] == manifest["program"]["arena_bytes"] > 0
    assert [k["name"] for k in manifest["kernels"]] == \
        [k["name"] for k in manifest["program"]["kernels"]]
    on_disk = sorted(p.name for p in directory.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert {"model.so", "model.h", "model.c", "model.ll", "model-aarch64.o",
            "weights.safetensors"} <= set(on_disk)
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == artifact.sha256_file(directory / name)
    weights = artifact.read_safetensors(directory / "weights.safetensors")
    assert "features.0.weight" in weights and "classifier.2.bias" in weights


def test_export_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    model, inputs, _ = _model("mlp")
    x = neurenix.Tensor(inputs[0])
    with pytest.raises(ExportError, match="freeze=False"):
        export(lambda t: model(t).sum().backward(), (x,), "cpu", tmp_path / "a")
    with pytest.raises(ValueError, match="unknown target"):
        export(model, (x,), "tpu", tmp_path / "a")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty directory"):
        export(model, (x,), "cpu", tmp_path / "busy")
    dropout = neurenix.nn.Sequential(neurenix.nn.Linear(16, 4), neurenix.nn.Dropout(0.5))
    with pytest.raises(ValueError, match="model.eval"):
        export(dropout, (x,), "cpu", tmp_path / "b")
    again = export(model, (x,), "cpu", tmp_path / "c")
    assert export(model, (x,), "cpu", again) == again  # an artifact is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- the C API, from a C program ----------------------------------------------------------------


def _c_compiler() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _build_driver(directory: Path, out: Path) -> Path:
    """tests/c/run_model.c built against the artifact's model.h and linked with model.so."""
    binary = out / "run_model"
    subprocess.run([_c_compiler(), "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2",
                    str(ROOT / "tests" / "c" / "run_model.c"), "-I", str(directory),
                    str(directory / "model.so"), f"-Wl,-rpath,{directory}", "-o",
                    str(binary)], check=True, capture_output=True, text=True, timeout=300)
    return binary


@pytest.mark.parametrize("kind", MODELS)
def test_c_api_runs_as_eager(cpu_artifacts: dict, kind: str, tmp_path: Path) -> None:
    directory, inputs, expected = cpu_artifacts[kind]
    binary = _build_driver(directory, tmp_path)
    files = []
    for k, x in enumerate(inputs):
        files.append(tmp_path / f"in{k}.bin")
        np.ascontiguousarray(x).tofile(files[-1])
    out = tmp_path / "out0.bin"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    done = subprocess.run([str(binary), str(directory), *map(str, files), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    shape = ",".join(str(d) for d in inputs[0].shape)
    assert f"input 0 x float32 [{shape}] {inputs[0].nbytes}" in done.stdout
    assert f"output 0 out0 float32 [{','.join(map(str, expected.shape))}] " \
           f"{expected.nbytes}" in done.stdout
    got = np.fromfile(out, dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_c_api_reports_errors_naming_the_file(cpu_artifacts: dict, tmp_path: Path) -> None:
    directory, inputs, _ = cpu_artifacts["mlp"]
    binary = _build_driver(directory, tmp_path)
    np.ascontiguousarray(inputs[0]).tofile(tmp_path / "in.bin")
    args = [str(tmp_path / "in.bin"), str(tmp_path / "out.bin")]
    done = subprocess.run([str(binary), str(tmp_path / "nowhere"), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "weights.safetensors: cannot open" in done.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    weights = (directory / "weights.safetensors").read_bytes()
    cases = {
        "truncated": weights[:-5],
        "header": weights[:8] + b"[" + weights[9:],
        "length": (1 << 40).to_bytes(8, "little") + weights[8:],
        "short": weights[:4],
        "missing tensor": _safetensors_without(weights, "4.bias"),
    }
    for what, data in cases.items():
        (bad / "weights.safetensors").write_bytes(data)
        done = subprocess.run([str(binary), str(bad), *args], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, what
        assert "weights.safetensors:" in done.stderr, (what, done.stderr)


def _safetensors_without(data: bytes, name: str) -> bytes:
    """A valid safetensors file holding every tensor of `data` but `name`."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    body = data[8 + size:]
    kept, blobs, offset = {}, [], 0
    for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if key == name:
            continue
        begin, end = entry["data_offsets"]
        kept[key] = dict(entry, data_offsets=[offset, offset + end - begin])
        blobs.append(body[begin:end])
        offset += end - begin
    text = json.dumps(kept).encode()
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def test_aarch64_object_assembles(cpu_artifacts: dict) -> None:
    directory, _, _ = cpu_artifacts["lstm"]
    manifest = json.loads((directory / "manifest.json").read_text())
    cross = manifest["cross"]["aarch64-linux-gnu"]
    data = (directory / cross["object"]).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # 64-bit, little-endian
    assert int.from_bytes(data[16:18], "little") == 1  # ET_REL: a relocatable object
    assert int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64
    assert b"neurenix_entry" in data
    assert "model-aarch64.o" in cross["link"] and "model.c" in cross["link"]
    readelf = shutil.which("readelf")
    if readelf:
        symbols = subprocess.run([readelf, "-s", str(directory / cross["object"])],
                                 capture_output=True, text=True, check=True).stdout
        assert any(line.split()[-1] == "neurenix_entry" and "FUNC" in line
                   and "GLOBAL" in line for line in symbols.splitlines() if line.strip())


# ---- refusing what cannot be trusted or run here ------------------------------------------------


def _copy(directory: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def _files(directory: Path) -> list[str]:
    return sorted(json.loads((directory / "manifest.json").read_text())["files"])


def test_every_file_is_checked(cpu_artifacts: dict, tmp_path: Path) -> None:
    directory, _, _ = cpu_artifacts["mlp"]
    names = _files(directory)
    assert len(names) >= 6
    for k, name in enumerate(names):
        flipped = _copy(directory, tmp_path / f"flip{k}")
        data = bytearray((flipped / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (flipped / name).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match="SHA-256") as info:
            load(flipped)
        assert info.value.file == name and str(info.value).startswith(f"{name}:")
        missing = _copy(directory, tmp_path / f"missing{k}")
        (missing / name).unlink()
        with pytest.raises(ArtifactError, match="missing") as info:
            load(missing)
        assert info.value.file == name
        truncated = _copy(directory, tmp_path / f"cut{k}")
        (truncated / name).write_bytes((truncated / name).read_bytes()[:-1])
        with pytest.raises(ArtifactError, match="truncated") as info:
            load(truncated)
        assert info.value.file == name


def _edit_manifest(directory: Path, tmp_path: Path, edit) -> Path:
    copy = _copy(directory, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_newer_format_missing_manifest_and_bad_json_are_refused(cpu_artifacts: dict,
                                                                tmp_path: Path) -> None:
    directory, _, _ = cpu_artifacts["mlp"]
    newer = _edit_manifest(directory, tmp_path / "a",
                           lambda m: m.update(format=artifact.FORMAT_VERSION + 1))
    with pytest.raises(ArtifactError, match="newer than this runtime") as info:
        load(newer)
    assert info.value.file == "manifest.json"
    gone = _copy(directory, tmp_path / "b")
    (gone / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load(gone)
    broken = _copy(directory, tmp_path / "c")
    (broken / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        load(broken)
    unlisted = _edit_manifest(directory, tmp_path / "d",
                              lambda m: m["files"].pop("weights.safetensors"))
    with pytest.raises(ArtifactError, match="weights.safetensors: the manifest does not list"):
        load(unlisted)
    escape = _edit_manifest(directory, tmp_path / "e",
                            lambda m: m["sources"].update(program="../model.ll"))
    with pytest.raises(ArtifactError, match="not a file inside the artifact"):
        load(escape)
    with pytest.raises(ArtifactError, match="not a directory"):
        load(tmp_path / "nowhere")


def test_foreign_machines_are_refused(cpu_artifacts: dict, tmp_path: Path) -> None:
    directory, _, _ = cpu_artifacts["mlp"]
    other = "aarch64-unknown-linux-gnu" if artifact.host_arch() != "aarch64" \
        else "x86_64-unknown-linux-gnu"
    arm = _edit_manifest(directory, tmp_path / "a",
                         lambda m: m["cpu"].update(triple=other))
    with pytest.raises(ArtifactError, match="model.so: compiled for") as info:
        load(arm)
    assert info.value.file == "model.so"
    features = _edit_manifest(directory, tmp_path / "b",
                              lambda m: m["cpu"]["features"].append("no-such-feature"))
    with pytest.raises(ArtifactError, match="lacks: no-such-feature"):
        load(features)
    absent = [k for k in ("cuda", "rocm") if not neurenix.runtime.is_available(k)]
    if absent:
        gpu = _edit_manifest(directory, tmp_path / "c", lambda m: m.update(target=absent[0]))
        with pytest.raises(ArtifactError, match=f"this machine has no {absent[0]} device"):
            load(gpu)
    unknown = _edit_manifest(directory, tmp_path / "d", lambda m: m.update(target="tpu"))
    with pytest.raises(ArtifactError, match="manifest.json: target 'tpu'"):
        load(unknown)


def test_a_rehashed_but_malformed_weights_file_is_refused(cpu_artifacts: dict,
                                                           tmp_path: Path) -> None:
    """The manifest vouches for bytes; the safetensors reader still checks their structure
    (a hand-edited artifact with its checksums recomputed)."""
    directory, _, _ = cpu_artifacts["mlp"]
    weights = (directory / "weights.safetensors").read_bytes()
    for k, data in enumerate([weights + b"\0\0\0\0", _safetensors_without(weights, "0.bias"),
                              weights[:8] + b"[" + weights[9:]]):
        copy = _copy(directory, tmp_path / str(k))
        (copy / "weights.safetensors").write_bytes(data)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["weights.safetensors"] = {
            "sha256": artifact.sha256_file(copy / "weights.safetensors"), "bytes": len(data)}
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError) as info:
            load(copy)
        assert info.value.file == "weights.safetensors"


def test_safetensors_round_trip(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(True),
              "c.d": np.arange(4, dtype=np.int64), "e": np.zeros((0, 2), np.float16)}
    artifact.write_safetensors(tmp_path / "w.safetensors", arrays, {"k": "v"})
    data = (tmp_path / "w.safetensors").read_bytes()
    assert int.from_bytes(data[:8], "little") % 8 == 0
    back = artifact.read_safetensors(tmp_path / "w.safetensors")
    assert sorted(back) == sorted(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)


def test_load_needs_only_the_runtime(cpu_artifacts: dict) -> None:
    """In a fresh process where every Neurenix module outside neurenix.runtime fails to import
    (the frontend's package __init__ is never run), load and run an exported model."""
    directory, inputs, expected = cpu_artifacts["lstm"]
    np.save(directory.parent / "lstm-input.npy", inputs[0])
    script = textwrap.dedent(f"""
        import importlib.util, sys, types
        import numpy as np
        spec = importlib.util.find_spec("neurenix")
        stub = types.ModuleType("neurenix")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["neurenix"] = stub  # the real package's __init__ imports the frontend

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("neurenix.") and not name.startswith("neurenix.runtime"):
                    raise ImportError("blocked for this test: " + name)
                return None

        sys.meta_path.insert(0, Refuse())
        for name in ("neurenix.compiler", "neurenix.export", "neurenix.tensor"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " imported")
        import neurenix.runtime
        model = neurenix.runtime.load({str(directory)!r})
        (out,) = model([np.load({str(directory.parent / 'lstm-input.npy')!r})])
        np.save({str(directory.parent / 'lstm-output.npy')!r}, out)
        bad = sorted(m for m in sys.modules if m.startswith("neurenix.")
                     and not m.startswith("neurenix.runtime"))
        print("loaded", bad)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, NEURENIX_COMPILE_WORKER="0"))
    assert done.returncode == 0, done.stderr
    assert "loaded []" in done.stdout
    got = np.load(directory.parent / "lstm-output.npy")
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# ---- GPU targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["opencl", "webgpu"])
@pytest.mark.parametrize("kind", MODELS)
def test_device_artifact_runs_as_eager(device: str, kind: str, tmp_path: Path) -> None:
    model, inputs, expected = _model(kind)
    directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), device,
                       tmp_path / kind)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["target"] == device and manifest["kernels"]
    assert all(len(k["grid"]) == len(k["block"]) >= 1 for k in manifest["kernels"])
    suffix = {"opencl": ".cl", "webgpu": ".wgsl"}[device]
    assert (directory / f"model{suffix}").is_file()
    if device == "webgpu":
        for kernel in manifest["kernels"]:
            assert (directory / "kernels" / f"{kernel['name']}.wgsl").is_file()
    needs_device(device)
    loaded = load(directory)
    (got,) = loaded(inputs)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", MODELS)
def test_cuda_artifact_has_ptx(kind: str, tmp_path: Path) -> None:
    _need_cuda()
    model, inputs, _ = _model(kind)
    directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), "cuda",
                       tmp_path / kind)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["target"] == "cuda" and manifest["ptx_arch"] == "sm_80"
    ptx = (directory / "model.ptx").read_text()
    assert ".target sm_80" in ptx
    for kernel in manifest["kernels"]:
        assert f".entry {kernel['name']}" in ptx
    assert manifest["files"]["model.ptx"]["sha256"] == \
        artifact.sha256_file(directory / "model.ptx")


@pytest.mark.parametrize("kind", MODELS)
def test_hip_artifact_has_a_code_object(kind: str, tmp_path: Path) -> None:
    _need_hip()
    model, inputs, _ = _model(kind)
    directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), "rocm",
                       tmp_path / kind)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["target"] == "rocm" and manifest["code_object_arch"] == "gfx90a"
    code = (directory / "model.co").read_bytes()
    assert code.startswith((b"__CLANG_OFFLOAD_BUNDLE__", b"\x7fELF"))
    assert b"gfx90a" in code
    assert (directory / "model.hip").read_text().count("__global__") >= \
        len(manifest["kernels"])


@pytest.mark.parametrize("cpu", ["generic", "x86-64-v3"])
def test_portable_cpu_library(cpu: str, tmp_path: Path) -> None:
    """`cpu=` compiles model.so for any CPU of the architecture (or an x86-64 level): no
    instruction past it, the manifest says what it needs, and it runs here as eager."""
    if not artifact.host_arch().startswith("x86"):
        pytest.skip("x86-64 levels are x86-64's")
    model, inputs, expected = _model("cnn")
    directory = export(model, (neurenix.Tensor(inputs[0]),), "cpu", tmp_path / cpu, cpu=cpu)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["cpu"]["name"] == ("x86-64" if cpu == "generic" else cpu)
    assert ("avx2" in manifest["cpu"]["features"]) == (cpu == "x86-64-v3")
    objdump = shutil.which("objdump")
    if objdump:
        text = subprocess.run([objdump, "-d", str(directory / "model.so")], check=True,
                              capture_output=True, text=True).stdout
        assert "zmm" not in text  # no AVX-512 at either level
        assert ("ymm" in text) == (cpu == "x86-64-v3")
    (got,) = load(directory)(inputs)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="unknown CPU 'pentium'"):
        export(model, (neurenix.Tensor(inputs[0]),), "cpu", tmp_path / "x", cpu="pentium")
