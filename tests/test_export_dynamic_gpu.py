"""Dynamic-batch export for the GPU targets (`export(..., target, dynamic_batch=MAX)`).

An MLP and a small conv net are exported for OpenCL and WebGPU with dynamic_batch=MAX and run
through `neurenix.runtime.load` (PoCL, lavapipe) at batches 1, 2, 7 and MAX against eager
mode; 0 and MAX + 1 are refused.  A training step runs at any batch, step by step as eager.
CUDA and ROCm artifacts are checked structurally (both programs' code, sized kernels taking
the batch after their buffers) and the CUDA one runs through the real loader on a recording
driver (tests/test_dynamic_cuda_hip.py): the launches of each call, at its batch size; on a
machine with the GPU both run against eager mode (skipped elsewhere).  The command line's
--dynamic-batch works for a GPU target.  The
browser runtime: `neurenix.js` evaluates the program's sizes as `runtime/sizes.py` does
(checked in Node where it is installed), and headless Chromium runs a WebGPU artifact at
batch 1, a middle size and MAX against eager mode, and refuses batch MAX + 1 and 0.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import artifact, load, loader
from neurenix.runtime.sizes import extent_value
from test_dynamic_cuda_hip import SIGNATURE
from test_export_dynamic import MODELS, _eager, _mlp, train_case

import neurenix
from neurenix import cli, nn
from neurenix.export import ExportError, export

MAX = 16
RTOL, ATOL = 1e-4, 1e-5


def _sample(batch: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple]:
    """(target, model) -> (model, directory, per-sample shape): each model exported for
    OpenCL and WebGPU with dynamic_batch=MAX, traced on a batch of 4."""
    root = tmp_path_factory.mktemp("export-dynamic-gpu")
    out = {}
    for kind, (make, sample) in MODELS.items():
        neurenix.manual_seed(0)
        model = make()
        model.eval()
        x = neurenix.Tensor(_sample(4, sample, 1))
        for target in ("opencl", "webgpu"):
            out[target, kind] = (model, export(model, (x,), target, root / f"{target}-{kind}",
                                               dynamic_batch=MAX), sample)
    return out


@pytest.mark.parametrize("target", ["opencl", "webgpu"])
@pytest.mark.parametrize("kind", MODELS)
def test_python_loader_runs_any_batch(artifacts: dict, target: str, kind: str) -> None:
    needs_device(target)
    model, directory, sample = artifacts[target, kind]
    loaded = load(directory)
    assert loaded.max_batch == MAX and loaded.target == target
    assert loaded.executable.program.symbols == ("batch",)  # batches 2..MAX: one program
    assert loaded._batch1.executable.program.symbols == ()
    for batch in (1, 2, 7, MAX, 3, 1):
        x = _sample(batch, sample, batch)
        (got,) = loaded([x])
        np.testing.assert_allclose(got, _eager(model, x), rtol=RTOL, atol=ATOL)
    for batch in (0, MAX + 1):
        with pytest.raises(ValueError, match=rf"batch size {batch} is outside 1\.\.{MAX} "
                                             rf"\(the artifact was exported with "
                                             rf"dynamic_batch={MAX}\)"):
            loaded([np.zeros((batch, *sample), np.float32)])


def test_gpu_manifest_holds_both_programs(artifacts: dict) -> None:
    _, directory, _ = artifacts["webgpu", "cnn"]
    manifest = json.loads((directory / "manifest.json").read_text())
    batch1 = manifest["dynamic_batch"]["batch1"]
    assert batch1["sources"]["program"] == "batch1/model.wgsl"
    for name, file in batch1["sources"]["kernels"].items():
        assert file == f"batch1/kernels/{name}.wgsl" and file in manifest["files"]
        assert "NxSizes" not in (directory / file).read_text()  # a static program
    sized = manifest["program"]["metadata"]["sized_kernels"]
    assert sized and all("var<uniform> nx_sizes" in (directory / f"kernels/{k}.wgsl")
                         .read_text() for k in sized)
    grids = [g for k in manifest["kernels"] for g in k["grid"]]
    assert any(isinstance(g, dict) for g in grids)  # launch sizes of the batch, as JSON
    # a modified batch-1 kernel is refused as any other file is
    copy = directory.parent / "tampered-batch1"
    shutil.copytree(directory, copy)
    kernel = copy / next(iter(batch1["sources"]["kernels"].values()))
    kernel.write_text(kernel.read_text() + "\n")
    with pytest.raises(artifact.ArtifactError, match="batch1/kernels/.*bytes"):
        load(copy)
    shutil.rmtree(copy)  # a GPU artifact's batch-1 program needs its own sources
    shutil.copytree(directory, copy)
    del manifest["dynamic_batch"]["batch1"]["sources"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match="names no source of the batch-1 program"):
        load(copy)


def test_webgpu_refuses_a_batch_past_the_loop_limit(tmp_path: Path) -> None:
    """A column sum loops over the batch in each work-item: past half of lavapipe's loop
    limit the trace's guard fails, and export names the largest batch it can take."""
    with pytest.raises(ExportError, match=r"false at batch \d+\); export with "
                                          r"dynamic_batch=\d+ or less"):
        export(lambda x: x.sum(0), (neurenix.randn(4, 3),), "webgpu", tmp_path / "a",
               dynamic_batch=40_000)
    with pytest.raises(ExportError, match=r"more than 1073741824 \(the 32-bit size limit\)"):
        export(lambda x: x * 2, (neurenix.randn(4, 1 << 14),), "webgpu", tmp_path / "a",
               dynamic_batch=1 << 17)
    assert not (tmp_path / "a").exists()


# ---- CUDA and ROCm: generated and checked here, run on a recording driver -----------------------


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    neurenix.manual_seed(0)
    model = _mlp().eval()
    root = tmp_path_factory.mktemp("export-dynamic-cuda")
    return model, export(model, (neurenix.randn(4, 16),), "cuda", root / "cuda",
                         dynamic_batch=MAX)


def test_cuda_and_rocm_artifacts_hold_both_programs(cuda_artifact: tuple,
                                                    tmp_path: Path) -> None:
    _, cuda_dir = cuda_artifact
    rocm_dir = export(_mlp().eval(), (neurenix.randn(4, 16),), "rocm", tmp_path / "rocm",
                      dynamic_batch=MAX)
    for directory, source, binary in ((cuda_dir, "model.cu", "ptx"),
                                      (rocm_dir, "model.hip", "code_object")):
        manifest = json.loads((directory / "manifest.json").read_text())
        batch1 = manifest["dynamic_batch"]["batch1"]
        assert manifest["sources"]["program"] == source
        assert batch1["sources"]["program"] == f"batch1/{source}"
        weights = artifact.read_safetensors(directory / "weights.safetensors")
        main = loader._program(directory, manifest, weights)
        small = loader._program(directory, manifest, weights, batch1, artifact.BATCH1_PREFIX)
        assert main.symbols == ("batch",) and small.symbols == ()
        for program in (main, small):  # a sized kernel takes the batch after its buffers
            params = {m.group(1): m.group(2).split(",")
                      for m in SIGNATURE.finditer(program.source)}
            assert set(params) == {k.name for k in program.kernels}
            for kernel in program.kernels:
                extra = ["const long long size0"] if program is main else []
                assert [a.strip() for a in params[kernel.name][len(kernel.args):]] == extra
        if binary in manifest["binaries"]:  # the toolchain was installed at export
            assert batch1["binaries"][binary] == f"batch1/{manifest['binaries'][binary]}"
            assert (directory / batch1["binaries"][binary]).stat().st_size > 0
        if binary == "ptx" and binary in manifest["binaries"]:
            ptx = (directory / "model.ptx").read_text()
            for kernel in main.kernels:  # each sized kernel takes the batch after its buffers
                entry = ptx.split(f".entry {kernel.name}(")[1].split(")")[0]
                assert entry.count(".param") == len(kernel.args) + 1, kernel.name


@pytest.mark.parametrize("target", ["cuda", "rocm"])
def test_gpu_artifact_runs_any_batch_on_a_gpu(tmp_path: Path, target: str) -> None:
    """On a machine with the GPU (skipped elsewhere): both programs equal eager."""
    needs_device(target)
    neurenix.manual_seed(0)
    model = _mlp().eval()
    loaded = load(export(model, (neurenix.randn(4, 16),), target, tmp_path / target,
                         dynamic_batch=MAX))
    for batch in (1, 7, MAX, 2):
        x = _sample(batch, (16,), batch)
        np.testing.assert_allclose(loaded([x])[0], _eager(model, x), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match=rf"batch size {MAX + 1} is outside 1\.\.{MAX}"):
        loaded([np.zeros((MAX + 1, 16), np.float32)])


def test_cuda_artifact_runs_through_the_loader_on_a_recording_driver(
        cuda_artifact: tuple) -> None:
    from neurenix.runtime import gpu_driver
    from test_dynamic_cuda_hip import Recorder
    from test_runtime_cuda import H200

    rec = Recorder()
    runtime = gpu_driver.Runtime("cuda", lambda: (rec.driver(), H200),
                                 lambda src, info: b"ptx")

    class Buffer(gpu_driver.GPUBuffer):
        device = "cuda"

    class Executable(gpu_driver.GPUExecutable):
        buffer_type = Buffer

    Buffer.runtime = Executable.runtime = runtime
    backend = types.SimpleNamespace(available=lambda: True, unavailable_reason=lambda: "",
                                    Executable=Executable, Buffer=Buffer)
    _, directory = cuda_artifact
    loaded = loader.load(directory, lambda target: backend)
    main, small = loaded.executable.program, loaded._batch1.executable.program
    sized = set(main.metadata["sized_kernels"])
    for batch, program in ((7, main), (1, small), (MAX, main)):
        start = len(rec.launches)
        (y,) = loaded([np.zeros((batch, 16), np.float32)])
        assert y.shape == (batch, 4)
        env = {"batch": batch}
        got = rec.launches[start:]
        assert [g[0] for g in got] == [k.name for k in program.kernels]
        for (name, grid, _, _, values), info in zip(got, program.kernels):
            assert grid[:len(info.grid)] == tuple(extent_value(g, env) for g in info.grid)
            assert values == ((batch,) if program is main and name in sized else None)
    with pytest.raises(ValueError, match=rf"batch size {MAX + 1} is outside 1\.\.{MAX}"):
        loaded([np.zeros((MAX + 1, 16), np.float32)])


# ---- the browser runtime ----------------------------------------------------------------------


SIZES_SCRIPT = """
const [module, manifestPath, batches] = process.argv.slice(2);
const nx = await import(module);
const fs = await import("node:fs");
const manifest = nx.parseManifest(fs.readFileSync(manifestPath, "utf8"));
const out = {};
for (const b of JSON.parse(batches)) out[b] = nx.programSizes(manifest.program, { batch: b });
const stub = new nx.Model({ manifest, inputs: manifest.inputs, maxBatch: manifest.dynamic_batch.max,
                            _symbol: "batch" });
const errors = [];
for (const f of [() => stub.shapesAt(0), () => stub.shapesAt(manifest.dynamic_batch.max + 1),
                 () => stub.batchOf([new Float32Array(17)]),
                 () => nx.programSizes(manifest.program, { batch: 2 ** 31 })]) {
  try { f(); errors.push(null); } catch (e) { errors.push(`${e.name}: ${e.message}`); }
}
const batchOf = stub.batchOf([new Float32Array(5 * 3 * 8 * 8)]);
const specs = nx.sizeText(manifest.inputs[0].shape[0]);
console.log(JSON.stringify({ sizes: out, errors, batchOf, shapes: stub.shapesAt(5), specs }));
"""


def test_neurenix_js_evaluates_sizes_as_python(artifacts: dict, tmp_path: Path) -> None:
    """`programSizes` (what `run` uses per call) against `Program.sizes`, the grids' Groups
    and the uniform's values, in Node (no device needed)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("NEURENIX_REQUIRE_NODE", "") not in ("", "0"):
            pytest.fail("Node.js is required here (NEURENIX_REQUIRE_NODE) but not installed")
        pytest.skip("Node.js is not installed")
    _, directory, _ = artifacts["webgpu", "cnn"]
    manifest = json.loads((directory / "manifest.json").read_text())
    weights = artifact.read_safetensors(directory / "weights.safetensors")
    program = loader._program(directory, manifest, weights)
    batches = [2, 7, MAX, 1000]
    (tmp_path / "sizes.mjs").write_text(SIZES_SCRIPT)
    done = subprocess.run([node, str(tmp_path / "sizes.mjs"),
                           (directory / "neurenix.js").as_uri(), str(directory / "manifest.json"),
                           json.dumps(batches)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for b in batches:
        got, sizes = report["sizes"][str(b)], program.sizes({"batch": b})
        temps = {x.name for x in program.buffers if x.kind == "temp"}
        assert {n: o for n, (o, _) in got["temps"].items()} == \
            {n: sizes.offsets[n] for n in temps}
        assert got["arenaBytes"] >= sizes.arena_bytes
        assert got["arenaBytes"] == max([4, sizes.arena_bytes] + [
            o + max(4, -(-sizes.elements[n] * 4 // 4) * 4) for n, (o, _) in got["temps"].items()])
        assert [tuple(s) for s in got["inputShapes"]] == sizes.input_shapes
        assert [tuple(s) for s in got["outputShapes"]] == sizes.output_shapes
        want = [[extent_value(g, sizes.env) for g in k.grid] for k in program.kernels]
        assert [g[:len(w)] if g else None for g, w in zip(got["grids"], want)] == \
            [w if 0 not in w else None for w in want]
        assert got["uniform"][:1] == [b] and got["uniform"][1:] == [0, 0, 0]
    assert report["errors"][0] == f"RangeError: neurenix: batch size 0 is outside 1..{MAX} " \
                                  f"(the artifact was exported with dynamic_batch={MAX})"
    assert report["errors"][1].startswith(f"RangeError: neurenix: batch size {MAX + 1} is "
                                          f"outside 1..{MAX}")
    assert "not a whole number of samples" in report["errors"][2]
    assert "32-bit size limit" in report["errors"][3] or "32 bits" in report["errors"][3]
    assert report["batchOf"] == 5 and report["specs"] == "batch"
    assert report["shapes"] == {"inputs": [[5, 3, 8, 8]], "outputs": [[5, 10]]}


DYNAMIC_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>neurenix.js dynamic batch</title>
<pre id="result">pending</pre>
<script type="module">
// Loads the artifact ?dir=NAME and runs it once per batch size B of ?batches=..., in order, on
// the tensors NAME:B of cases.safetensors (NAME in ?inputs=...), the batch inferred from the
// inputs' lengths; then once more with the batch given, reads ?tensor= (trained weights), and
// with ?errors=1 reports the errors of calls at bad batch sizes.
const params = new URLSearchParams(location.search);
const dir = params.get("dir");
const batches = params.get("batches").split(",").map(Number);
const names = params.get("inputs").split(",");
const report = { runs: [] };
try {
  const nx = await import(`./${dir}/neurenix.js`);
  const model = await nx.load(`./${dir}/`);
  const cases = nx.parseSafetensors(await (await fetch("./cases.safetensors")).arrayBuffer());
  const inputs = (b) => names.map((n) => cases[`${n}:${b}`].data);
  Object.assign(report, { max_batch: model.maxBatch, input_shape: model.inputs[0].shape,
                          output_shape: model.outputs[0].shape });
  for (const b of batches) {
    const [y] = await model.run(inputs(b));
    report.runs.push({ batch: b, inferred: model.batchOf(inputs(b)),
                       shape: model.shapesAt(b).outputs[0], values: Array.from(y, Number) });
  }
  const b = batches[0];
  const [again] = await model.run(inputs(b), { batch: b });
  report.explicit = Array.from(again, Number);
  const key = params.get("tensor");
  if (key) report.tensor = Array.from(await model.readTensor(key));
  report.errors = [];
  const per = cases[`${names[0]}:${b}`].data.length / b;
  const bad = params.get("errors") ? [[[new Float32Array((model.maxBatch + 1) * per)], {}],
                                      [[new Float32Array(0)], {}],
                                      [[new Float32Array(2 * per)], { batch: 0 }],
                                      [[new Float32Array(2 * per)], { batch: 3 }]] : [];
  for (const [xs, options] of bad) {
    try {
      await model.run(xs, options);
      report.errors.push(null);
    } catch (e) {
      report.errors.push({ name: e.name, message: e.message });
    }
  }
  report.steps = model.steps;
  report.status = "ok";
  model.destroy();
} catch (e) {
  Object.assign(report, { status: "error", error: String(e.message ?? e) });
}
document.getElementById("result").textContent = JSON.stringify(report);
</script>
"""
PAGE_BATCHES = (5, 1, MAX, 2, 5)
"""The batch sizes the page runs the conv net at, in order: the arena grows at MAX, and 2
and 5 then run on the grown buffers."""
TRAIN_BATCHES = (3, 1, 8, 3)
"""The batch sizes the page trains at, in order: the batch-1 program and the symbolic one
update the same weights on the device."""


@pytest.fixture(scope="module")
def browser_report(artifacts: dict) -> dict:
    """The dynamic page's reports on the WebGPU conv net's artifact (`infer`) and a training
    step's (`train`, with eager's losses and weights), and their index.html's."""
    from test_export_browser import DevTools, _Quiet, browser_required, chromium, run_page

    executable = chromium()
    if executable is None:
        if browser_required():
            pytest.fail("Chromium is required here (NEURENIX_REQUIRE_BROWSER) but is not "
                        "installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    model, directory, sample = artifacts["webgpu", "cnn"]
    root = directory.parent
    cases = {f"x:{b}": _sample(b, sample, 10 + b) for b in sorted(set(PAGE_BATCHES))}
    trained, step = train_case()
    x, y = neurenix.randn(4, 16), neurenix.Tensor(np.arange(4) % 4)
    export(step, (x, y), "webgpu", root / "train", freeze=False, dynamic_batch=8)
    for b in set(TRAIN_BATCHES):
        cases[f"tx:{b}"] = _sample(b, (16,), 20 + b)
        cases[f"ty:{b}"] = (np.arange(b) % 4).astype(np.int64)
    losses = [step(neurenix.Tensor(cases[f"tx:{b}"]), neurenix.Tensor(cases[f"ty:{b}"])).item()
              for b in TRAIN_BATCHES]
    artifact.write_safetensors(root / "cases.safetensors", cases)
    (root / "dynamic.html").write_text(DYNAMIC_PAGE, encoding="utf-8")
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    join = lambda values: ",".join(map(str, values))  # noqa: E731
    try:
        with tempfile.TemporaryDirectory(prefix="neurenix-chromium-") as profile:
            browser = DevTools(executable, profile)
            try:
                report = {
                    "infer": run_page(browser, f"{base}/dynamic.html?dir={directory.name}&"
                                               f"batches={join(PAGE_BATCHES)}&inputs=x&errors=1"),
                    "train": run_page(browser, f"{base}/dynamic.html?dir=train&inputs=tx,ty&"
                                               f"batches={join(TRAIN_BATCHES)}&tensor=0.weight"),
                    "index": run_page(browser, f"{base}/{directory.name}/index.html?runs=2"),
                    "train-index": run_page(browser, f"{base}/train/index.html?steps=3"),
                }
            finally:
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    error = str(report["infer"].get("error", ""))
    if report["infer"].get("status") != "ok" and not browser_required() and "WebGPU" in error:
        pytest.skip(f"this Chromium has no WebGPU: {error}")
    # eager: the step once more at the first batch (the page's explicit run), then weights
    b = TRAIN_BATCHES[0]
    losses.append(step(neurenix.Tensor(cases[f"tx:{b}"]), neurenix.Tensor(cases[f"ty:{b}"]))
                  .item())
    report.update(cases=cases, model=model, losses=losses,
                  weight=trained[0].weight.detach().numpy())
    return report


def test_browser_runs_any_batch_as_eager(browser_report: dict) -> None:
    report = browser_report["infer"]
    assert report["status"] == "ok", report
    assert report["max_batch"] == MAX and report["input_shape"] == ["batch", 3, 8, 8]
    assert report["output_shape"] == ["batch", 10]
    assert [r["batch"] for r in report["runs"]] == list(PAGE_BATCHES)
    for run in report["runs"]:
        b = run["batch"]
        want = _eager(browser_report["model"], browser_report["cases"][f"x:{b}"])
        assert run["inferred"] == b and run["shape"] == [b, 10]
        np.testing.assert_allclose(np.asarray(run["values"]).reshape(b, 10), want,
                                   rtol=RTOL, atol=ATOL, err_msg=f"batch {b}")
    assert report["explicit"] == report["runs"][0]["values"]
    assert report["steps"] == len(PAGE_BATCHES) + 1  # the refused calls did not run


def test_browser_refuses_batches_outside_the_range(browser_report: dict) -> None:
    report = browser_report["infer"]
    assert report["status"] == "ok", report
    errors = report["errors"]
    exported = f"(the artifact was exported with dynamic_batch={MAX})"
    assert errors[0] == {"name": "RangeError", "message": f"neurenix: batch size {MAX + 1} is "
                                                          f"outside 1..{MAX} {exported}"}
    assert errors[1] == {"name": "RangeError", "message": f"neurenix: batch size 0 is outside "
                                                          f"1..{MAX} {exported}"}
    assert errors[2]["message"].startswith("neurenix: batch size 0 is outside")
    assert errors[3]["name"] == "RangeError"  # 2 samples' values given as 3
    assert errors[3]["message"].endswith("expected 576 float32 values, got 384")


def test_browser_trains_at_any_batch_as_eager(browser_report: dict) -> None:
    report = browser_report["train"]
    assert report["status"] == "ok", report
    assert report["max_batch"] == 8 and [r["batch"] for r in report["runs"]] == \
        list(TRAIN_BATCHES)
    got = [r["values"][0] for r in report["runs"]] + report["explicit"]
    np.testing.assert_allclose(got, browser_report["losses"], rtol=1e-4)
    weight = browser_report["weight"]
    np.testing.assert_allclose(np.asarray(report["tensor"]).reshape(weight.shape), weight,
                               rtol=1e-3, atol=1e-5)


def test_browser_pages_run_the_stored_example(browser_report: dict) -> None:
    index = browser_report["index"]
    assert index["status"] == "ok", index
    assert index["batch"] == 4 and index["max_batch"] == MAX
    (output,) = index["outputs"]
    assert output["shape"] == [4, 10]
    assert float(output["max_abs_diff"]) <= 1e-4 * float(output["scale"])
    train = browser_report["train-index"]
    assert train["status"] == "ok", train
    assert train["compared"] == 3 and float(train["max_abs_diff"]) <= 1e-4 * train["scale"]


# ---- the command line ---------------------------------------------------------------------------


NET = """\
import neurenix
from neurenix import nn

model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
example_inputs = (neurenix.randn(3, 10),)
"""


def test_cli_dynamic_batch_on_opencl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    needs_device("opencl")
    (tmp_path / "model.py").write_text(NET)
    status = cli.main([str(tmp_path / "model.py"), "--target", "opencl", "--dynamic-batch",
                       "16", "--check", "-o", str(tmp_path / "art")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "any size 1..16 at run time" in captured.out and "ok" in captured.out
    assert "batch sizes 1, 3, 16" in captured.err
    assert load(tmp_path / "art").max_batch == 16
