"""WebGPU artifacts in a browser: `neurenix.js` and `index.html` (docs/deploy/browser.md).

The spec's MLP, CNN and LSTM (tiny sizes) are exported for WebGPU, the directory is served
over loopback HTTP, and headless Chromium (WebGPU on SwiftShader, Vulkan on the CPU) opens
each artifact's `index.html`, which runs the model on the example stored at export and writes
a JSON report into `<pre id="result">`.  Exported training steps (`freeze=False`, artifact
format 2) run there too: the page trains for `?steps=N` steps and reports the losses, which
must match eager steps and fall; a small probe page checks what the page does not show: a
value check that fails (a class index out of range) rejects `run` and commits nothing, and the
trained weights (`model.readTensor`) stay on the GPU from run to run.  Chromium is driven
through the DevTools protocol over a pipe (`--remote-debugging-pipe`: NUL-terminated JSON on
file descriptors 3 and 4), so the test waits for the page's asynchronous GPU work instead of
a virtual-time budget.  Where Chromium is absent the browser test skips, except where CI
requires it (`NEURENIX_REQUIRE_BROWSER=1`, or "browser" in `NEURENIX_REQUIRE_DEVICES`): there
it fails.
"""
from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from devices import needs_device, required
from neurenix.runtime import artifact, load
from test_export import MODELS, _model
from training_steps import training_step

import neurenix
from neurenix import nn, optim
from neurenix.export import export

TOLERANCE = 1e-4
"""The largest |browser output - eager output| allowed, relative to the output's scale."""
PAGE_SECONDS = 40.0
TRAINING = ("mlp", "cnn", "lstm")
"""The spec models whose training steps the browser runs."""
TRAIN_STEPS = 30
"""Steps the training page runs (the artifact stores the first K losses to compare)."""
PROBE_STEPS = 3
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--enable-unsafe-webgpu",
                  "--enable-features=Vulkan", "--use-vulkan=swiftshader",
                  "--use-webgpu-adapter=swiftshader", "--disable-gpu-sandbox",
                  "--no-first-run", "--no-default-browser-check", "--mute-audio")


def browser_required() -> bool:
    """Whether CI requires the browser test (an absent Chromium fails it)."""
    return os.environ.get("NEURENIX_REQUIRE_BROWSER", "") not in ("", "0") or \
        "browser" in required()


def chromium() -> str | None:
    """The Chromium executable (NEURENIX_CHROMIUM, else chromium on PATH), or None."""
    named = os.environ.get("NEURENIX_CHROMIUM")
    if named:
        return shutil.which(named)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _dtypes(a: neurenix.Tensor, b: neurenix.Tensor, x: neurenix.Tensor) -> tuple:
    """int64 and bool in and out (two u32 words, and a u32 word, per element on WebGPU)."""
    return a * 3 + 1, b & (a > 2), x * a.float(), x > 0


def _dtypes_inputs() -> list[np.ndarray]:
    """`_dtypes`' inputs: int64 past 32 bits and negative, bools, float32."""
    return [np.array([[-5, 2, 3], [2**40 + 3, 7, -2**35]], dtype=np.int64),
            np.array([[True, False, True], [True, True, False]]),
            np.array([[0.5, -1, 2], [3, -4, 0.25]], dtype=np.float32)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each spec model, and `_dtypes`, exported for WebGPU under one root: (directory,
    inputs, eager output)."""
    root = tmp_path_factory.mktemp("export-web")
    out = {}
    for kind in MODELS:
        model, inputs, expected = _model(kind)
        directory = export(model, tuple(neurenix.Tensor(x) for x in inputs), "webgpu",
                           root / kind)
        out[kind] = (directory, inputs, expected)
    inputs = _dtypes_inputs()
    directory = export(_dtypes, tuple(neurenix.Tensor(x) for x in inputs), "webgpu",
                       root / "dtypes")
    with neurenix.no_grad():
        expected = [y.numpy() for y in _dtypes(*[neurenix.Tensor(x) for x in inputs])]
    out["dtypes"] = (directory, inputs, expected)
    return out


# ---- the artifact's browser files --------------------------------------------------------------


def test_webgpu_artifact_holds_the_browser_files(artifacts: dict) -> None:
    directory, inputs, expected = artifacts["cnn"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["web"] == {"module": "neurenix.js", "page": "index.html"}
    assert manifest["example"] == {"file": "example.safetensors", "inputs": ["input:0"],
                                   "expected": ["expected:0"]}
    for name in ("neurenix.js", "index.html", "example.safetensors"):
        assert manifest["files"][name]["sha256"] == artifact.sha256_file(directory / name)
    example = artifact.read_safetensors(directory / "example.safetensors")
    np.testing.assert_array_equal(example["input:0"], inputs[0])
    np.testing.assert_allclose(example["expected:0"], expected, rtol=1e-6, atol=1e-7)
    module = (directory / "neurenix.js").read_text()
    assert "export async function load" in module
    assert not re.search(r"^\s*import\s", module, re.M)  # dependency-free
    assert 'import { load } from "./neurenix.js"' in (directory / "index.html").read_text()


def test_other_targets_have_no_browser_files(tmp_path: Path) -> None:
    model, inputs, _ = _model("mlp")
    directory = export(model, (neurenix.Tensor(inputs[0]),), "opencl", tmp_path / "cl")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert "example" not in manifest and not (directory / "neurenix.js").exists()


def test_webgpu_artifact_with_browser_files_loads_in_python(artifacts: dict) -> None:
    directory, inputs, expected = artifacts["mlp"]
    needs_device("webgpu")
    (got,) = load(directory)(inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---- Chromium ------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves a directory without logging every request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(artifacts: dict) -> Iterator[str]:
    """The artifacts' root served over loopback HTTP (an ephemeral port): its base URL."""
    root = next(iter(artifacts.values()))[0].parent
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class DevTools:
    """Chromium driven through the DevTools protocol over a pipe: `call(method, params,
    session)` sends a command and returns its result; events are kept in `events`."""

    def __init__(self, executable: str, profile: str) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # bash (not sh: dash takes single-digit descriptors only) moves the pipe's ends to the
        # descriptors 3 and 4 Chromium reads and writes; above 9 first, so none collide
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_read,
                                                                    replies_write)]
        os.close(commands_read)
        os.close(replies_write)
        shell = f'exec 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-; exec "$@"'
        self._log = tempfile.TemporaryFile()  # a file: a full stderr pipe would block Chromium
        self.process = subprocess.Popen(
            ["bash", "-c", shell, "bash", executable, *CHROMIUM_FLAGS,
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=tuple(ends), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log)
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._next = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        """The next message from Chromium (a RuntimeError when it exits or time runs out)."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited: {self.stderr_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             seconds: float = 30.0) -> dict:
        """Send one command and wait for its reply; its `result`."""
        self._next += 1
        message: dict = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + seconds
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def stderr_tail(self) -> str:
        """The end of Chromium's stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        """Close the browser (and end the process if it does not)."""
        try:
            if self.process.poll() is None:
                self.call("Browser.close", seconds=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._replies):
            os.close(fd)
        self._log.close()

    def console(self) -> list[str]:
        """The page's console messages and uncaught exceptions so far."""
        lines = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                lines.append(" ".join(str(a.get("value", a.get("description", "")))
                                      for a in params.get("args", [])))
            elif event.get("method") == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                lines.append(details.get("exception", {}).get("description")
                             or details.get("text", ""))
        return lines


def run_page(browser: DevTools, url: str, seconds: float = PAGE_SECONDS) -> dict:
    """Open `url` in a new tab and wait until its `#result` holds the JSON report."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target,
                                                     "flatten": True})["sessionId"]
    browser.call("Runtime.enable", session=session)
    browser.call("Page.navigate", {"url": url}, session=session)
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        value = browser.call("Runtime.evaluate", {
            "expression": "document.getElementById('result')?.textContent ?? ''",
            "returnByValue": True}, session=session)
        text = value.get("result", {}).get("value", "") or ""
        if text and text != "pending":
            browser.call("Target.closeTarget", {"targetId": target})
            return json.loads(text)
        time.sleep(0.1)
    raise TimeoutError(f"{url}: no result after {seconds:.0f} s (#result: {text!r}); "
                       f"console: {browser.console()}")


def _tampered(artifacts: dict) -> str:
    """A copy of the MLP's artifact beside the others with one byte of a kernel changed (its
    size kept): the directory's name."""
    directory = artifacts["mlp"][0]
    copy = directory.parent / "tampered"
    shutil.copytree(directory, copy)
    kernel = sorted((copy / "kernels").iterdir())[0]
    kernel.write_bytes(kernel.read_bytes().replace(b"0.0f", b"1.0f", 1))
    return copy.name


@pytest.fixture(scope="module")
def browser() -> Iterator[DevTools]:
    """Headless Chromium for the module's pages (skips, or fails where CI requires it, when
    Chromium is absent)."""
    executable = chromium()
    if executable is None:
        if browser_required():
            pytest.fail("Chromium is required here (NEURENIX_REQUIRE_BROWSER) but is not "
                        "installed: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="neurenix-chromium-") as profile:
        devtools = DevTools(executable, profile)
        try:
            yield devtools
        finally:
            devtools.close()


@pytest.fixture(scope="module")
def browser_results(artifacts: dict, server: str, browser: DevTools) -> dict[str, dict]:
    """Each artifact's index.html run in headless Chromium: its JSON report, by model."""
    results: dict[str, dict] = {}
    for kind in artifacts:
        results[kind] = run_page(browser, f"{server}/{kind}/index.html?runs=5")
        results[kind]["console"] = browser.console()
    results["tampered"] = run_page(browser, f"{server}/{_tampered(artifacts)}/index.html")
    return results


@pytest.mark.parametrize("kind", MODELS)
def test_browser_runs_the_artifact_as_eager(browser_results: dict, artifacts: dict,
                                            kind: str) -> None:
    report = browser_results[kind]
    if report.get("status") != "ok" and not browser_required() and \
            "WebGPU" in str(report.get("error", "")):
        pytest.skip(f"this Chromium has no WebGPU: {report['error']}")
    assert report.get("status") == "ok", report
    _, _, expected = artifacts[kind]
    (output,) = report["outputs"]
    assert output["shape"] == list(expected.shape) and output["dtype"] == "float32"
    scale = float(np.abs(expected).max())
    assert float(output["scale"]) == pytest.approx(scale, rel=1e-6)
    assert float(output["max_abs_diff"]) <= TOLERANCE * scale, report
    np.testing.assert_allclose(output["values"], expected.reshape(-1)[:len(output["values"])],
                               rtol=TOLERANCE, atol=TOLERANCE * scale)
    assert report["runs"] == 5 and len(report["times_ms"]) == 5
    assert report["time_ms_median"] >= 0


def test_browser_converts_int64_and_bool(browser_results: dict, artifacts: dict) -> None:
    report = browser_results["dtypes"]
    assert report.get("status") == "ok", report
    _, _, expected = artifacts["dtypes"]
    assert [(o["dtype"], o["shape"]) for o in report["outputs"]] == \
        [(e.dtype.name, list(e.shape)) for e in expected]
    for output, want in zip(report["outputs"], expected):
        assert output["max_abs_diff"] == 0, report
        np.testing.assert_array_equal(np.asarray(output["values"], dtype=np.float64),
                                      want.reshape(-1).astype(np.float64))


def test_browser_refuses_a_modified_file(browser_results: dict) -> None:
    report = browser_results["tampered"]
    assert report["status"] == "error"
    assert report["error"].startswith("kernels/") and "SHA-256" in report["error"], report


# ---- training steps (artifact format 2) ----------------------------------------------------------


PROBE = """<!doctype html>
<meta charset="utf-8">
<title>neurenix.js probe</title>
<pre id="result">pending</pre>
<script type="module">
// Loads the artifact ?dir=NAME, reads every tensor (readTensor), runs ?steps=N steps on the
// example; for a training artifact then two runs whose class index is out of range (both
// must reject and commit nothing), reads the tensors again and runs one more step.
const params = new URLSearchParams(location.search);
const dir = params.get("dir");
const steps = Number(params.get("steps") ?? 3);
const report = {};
const diff = (a, b) => {
  if (a.length !== b.length) return Infinity;
  let most = 0;
  for (let i = 0; i < a.length; i++) most = Math.max(most, Math.abs(Number(a[i]) - Number(b[i])));
  return most;
};
try {
  const { load } = await import(`./${dir}/neurenix.js`);
  const model = await load(`./${dir}/`);
  const { inputs } = await model.example();
  const read = async () => {
    const values = {};
    for (const key of model.tensors) values[key] = await model.readTensor(key);
    return values;
  };
  Object.assign(report, { training: model.training, states: model.states,
                          tensors: model.tensors, steps_at_load: model.steps });
  const losses = [];
  const run = async (xs) => { const [y] = await model.run(xs); losses.push(Number(y[0])); };
  const initial = await read();
  for (let i = 0; i < steps; i++) await run(inputs);
  const trained = await read();
  report.steps = model.steps;
  report.changed = Object.fromEntries(model.tensors.map((k) => [k, diff(initial[k], trained[k])]));
  report.values = Object.fromEntries(model.tensors.map((k) => [k, Array.from(trained[k], Number)]));
  report.rejected = [];
  if (model.training) {
    const last = inputs.length - 1;
    for (const bad of [1000n, -5n]) {
      const xs = inputs.map((x) => x.slice());
      xs[last][0] = bad;
      try {
        await run(xs);
        report.rejected.push(null);
      } catch (e) {
        report.rejected.push({ name: e.name, message: e.message });
      }
    }
    report.steps_after_rejected = model.steps;
    const after = await read();
    report.changed_by_rejected = Math.max(
      0, ...model.tensors.map((k) => diff(trained[k], after[k])));
    await run(inputs);
  }
  Object.assign(report, { status: "ok", losses, final_steps: model.steps });
  model.destroy();
} catch (e) {
  Object.assign(report, { status: "error", error: String(e.message ?? e) });
}
document.getElementById("result").textContent = JSON.stringify(
  report, (key, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v));
</script>
"""
"""A page beside the artifacts that drives `neurenix.js` directly (`?dir=NAME&steps=N`)."""


@pytest.fixture(scope="module")
def training_artifacts(artifacts: dict) -> dict[str, tuple]:
    """Each spec model's training step exported for WebGPU (`freeze=False`) beside the other
    artifacts (`train-KIND`): (directory, training case)."""
    root = next(iter(artifacts.values()))[0].parent
    out = {}
    for kind in TRAINING:
        case = training_step(kind)
        directory = export(case.step, tuple(neurenix.Tensor(x) for x in case.inputs), "webgpu",
                           root / f"train-{kind}", freeze=False)
        out[kind] = (directory, case)
    x, y = _regression_inputs()
    out["dropout"] = (export(_dropout_step(), (neurenix.Tensor(x), neurenix.Tensor(y)),
                             "webgpu", root / "train-dropout", freeze=False), None)
    return out


def _regression_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((8, 8)).astype(np.float32),
            rng.standard_normal((8, 1)).astype(np.float32))


def _dropout_step():
    """A training step with dropout (a seed input: its random draws differ run to run) and
    no value checks (MSE): the state is committed in the run's own submission."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 1))
    model.train()
    opt = optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.MSELoss()

    def step(x: neurenix.Tensor, y: neurenix.Tensor) -> neurenix.Tensor:
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


@pytest.fixture(scope="module")
def training_results(training_artifacts: dict, server: str, browser: DevTools) -> dict:
    """The training pages' reports (`index.html?steps=TRAIN_STEPS`, by model) and the probe's
    (`probe` on the MLP's training step, `probe-inference` on its inference artifact)."""
    root = next(iter(training_artifacts.values()))[0].parent
    (root / "probe.html").write_text(PROBE, encoding="utf-8")
    results = {}
    for kind in training_artifacts:  # the spec models, then the dropout step
        results[kind] = run_page(browser, f"{server}/train-{kind}/index.html?steps={TRAIN_STEPS}")
    results["probe"] = run_page(browser, f"{server}/probe.html?dir=train-mlp&steps={PROBE_STEPS}")
    results["probe-inference"] = run_page(browser, f"{server}/probe.html?dir=mlp&steps=2")
    return results


def _ok(report: dict) -> None:
    """Assert the page succeeded (an artifact is compiled at WebGPU's default limits, so the
    browser's adapter runs it)."""
    error = str(report.get("error", ""))
    if report.get("status") != "ok" and not browser_required() and "WebGPU" in error:
        pytest.skip(f"this Chromium has no WebGPU: {error}")
    assert report.get("status") == "ok", report


def test_training_artifact_holds_the_first_losses(training_artifacts: dict) -> None:
    directory, case = training_artifacts["mlp"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["training"]["states"]
    info = manifest["example"]
    assert info["expected"] == [] and info["expected_steps"] == ["expected_steps:0"]
    steps = info["steps"]
    assert steps >= 1
    example = artifact.read_safetensors(directory / "example.safetensors")
    np.testing.assert_allclose(example["expected_steps:0"], case.eager_losses(steps),
                               rtol=1e-5, atol=1e-6)
    for name in ("neurenix.js", "index.html"):
        assert manifest["files"][name]["sha256"] == artifact.sha256_file(directory / name)


@pytest.mark.parametrize("kind", TRAINING)
def test_browser_trains_as_eager(training_results: dict, training_artifacts: dict,
                                 kind: str) -> None:
    report = training_results[kind]
    _ok(report)
    _, case = training_artifacts[kind]
    assert report["mode"] == "training" and report["steps"] == TRAIN_STEPS
    assert report["model_steps"] == TRAIN_STEPS and len(report["losses"]) == TRAIN_STEPS
    steps = report["expected_steps"]
    assert 1 <= steps <= TRAIN_STEPS and report["compared"] == steps
    eager = case.eager_losses(steps)
    scale = float(np.abs(eager).max())
    np.testing.assert_allclose(report["expected_losses"], eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report["losses"][:steps], eager, rtol=TOLERANCE,
                               atol=TOLERANCE * scale)
    assert float(report["max_abs_diff"]) <= TOLERANCE * scale, report
    losses = np.asarray(report["losses"], dtype=np.float64)
    assert np.isfinite(losses).all() and losses[-1] < losses[0], report["losses"]
    assert len(report["times_ms"]) == TRAIN_STEPS and report["time_ms_median"] >= 0


def test_browser_refuses_a_failed_check_and_commits_nothing(training_results: dict,
                                                            training_artifacts: dict) -> None:
    report = training_results["probe"]
    _ok(report)
    message = ("CrossEntropyLoss: target {} is out of range for 4 classes (expected 0 <= "
               "target < 4 or ignore_index=-100)")
    assert report["rejected"] == [
        {"name": "ValueError", "message": message.format(1000)},
        {"name": "ValueError", "message": message.format(-5)}], report["rejected"]
    # no state committed and the step count kept: the next step continues from step N
    assert report["steps_after_rejected"] == PROBE_STEPS
    assert report["changed_by_rejected"] == 0
    assert report["final_steps"] == PROBE_STEPS + 1
    _, case = training_artifacts["mlp"]
    eager = case.eager_losses(PROBE_STEPS + 1)
    np.testing.assert_allclose(report["losses"], eager, rtol=TOLERANCE,
                               atol=TOLERANCE * float(np.abs(eager).max()))


def test_browser_keeps_the_trained_weights_on_the_device(training_results: dict,
                                                         training_artifacts: dict) -> None:
    report = training_results["probe"]
    _ok(report)
    directory, case = training_artifacts["mlp"]
    assert report["training"] is True and report["steps_at_load"] == 0
    assert report["steps"] == PROBE_STEPS
    manifest = json.loads((directory / "manifest.json").read_text())
    assert report["states"] == manifest["training"]["states"]
    eager = case.eager_state(PROBE_STEPS)
    assert set(eager) <= set(report["states"])
    for name, want in eager.items():
        assert report["changed"][name] > 0, name  # readTensor: the trained value, not the file
        got = np.asarray(report["values"][name], dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=name)


def test_browser_reads_an_inference_artifacts_weights(training_results: dict,
                                                      artifacts: dict) -> None:
    report = training_results["probe-inference"]
    _ok(report)
    assert report["training"] is False and report["states"] == []
    assert report["steps"] == 2 and report["rejected"] == []
    weights = artifact.read_safetensors(artifacts["mlp"][0] / "weights.safetensors")
    assert set(report["tensors"]) == set(weights)
    for name, want in weights.items():
        assert report["changed"][name] == 0, name
        np.testing.assert_array_equal(np.asarray(report["values"][name], dtype=want.dtype),
                                      want.reshape(-1), err_msg=name)


def test_browser_draws_dropout_from_the_seed(training_results: dict,
                                             training_artifacts: dict) -> None:
    report = training_results["dropout"]
    _ok(report)
    directory, _ = training_artifacts["dropout"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [b["from"] for b in manifest["bindings"]].count("seed") >= 1
    assert manifest["checks"] == []
    # the first K losses of the reference evaluator, run with seed + k: other seeds would
    # drop other units and give other losses
    example = artifact.read_safetensors(directory / "example.safetensors")
    expected = example["expected_steps:0"]
    steps = len(expected)
    assert report["compared"] == steps and len(set(expected.tolist())) == steps
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(report["losses"][:steps], expected, rtol=TOLERANCE,
                               atol=TOLERANCE * scale)
    assert float(report["max_abs_diff"]) <= TOLERANCE * scale, report
    assert report["model_steps"] == TRAIN_STEPS
    losses = report["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
