"""Dynamic-batch export (`neurenix.export(..., dynamic_batch=MAX)`, issue 13).

An MLP and a small conv net are exported once with dynamic_batch=64 and run through
`neurenix.runtime.load` at batches 1, 2, 7 and 64 against eager mode; 0 and 65 are refused.
A C program built here against the artifact runs it through `nx_model_run_batch` at two
batch sizes (and gets NX_ERROR_BATCH for 65).  A training step exported the same way runs
at any batch, step by step as eager.  The CLI's --dynamic-batch writes and checks such an
artifact; traces that hold for some batch sizes only are refused.  The GPU targets:
tests/test_export_dynamic_gpu.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from devices import needs_device
from neurenix.runtime import load

import neurenix
from neurenix import cli, nn, optim
from neurenix.export import ExportError, export

MAX = 64
RTOL, ATOL = 1e-5, 1e-6


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


MODELS = {"mlp": (_mlp, (16,)), "cnn": (_cnn, (3, 8, 8))}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each model exported with dynamic_batch=MAX: (model, directory, per-sample shape)."""
    root = tmp_path_factory.mktemp("export-dynamic")
    out = {}
    for kind, (make, sample) in MODELS.items():
        neurenix.manual_seed(0)
        model = make()
        model.eval()
        x = neurenix.Tensor(np.random.default_rng(1).standard_normal((4, *sample))
                            .astype(np.float32))
        # the MLP's artifact also cross-compiles both programs for AArch64
        cross = ("aarch64-linux-gnu",) if kind == "mlp" else ()
        out[kind] = (model, export(model, (x,), "cpu", root / kind, dynamic_batch=MAX,
                                   cross=cross), sample)
    return out


def _eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with neurenix.no_grad():
        return model(neurenix.Tensor(x)).numpy()


@pytest.mark.parametrize("kind", MODELS)
def test_python_loader_runs_any_batch(artifacts: dict, kind: str) -> None:
    model, directory, sample = artifacts[kind]
    loaded = load(directory)
    assert loaded.max_batch == MAX
    rng = np.random.default_rng(2)
    for batch in (1, 2, 7, MAX, 1):
        x = rng.standard_normal((batch, *sample)).astype(np.float32)
        (got,) = loaded([x])
        np.testing.assert_allclose(got, _eager(model, x), rtol=RTOL, atol=ATOL)
    for batch in (0, MAX + 1):
        with pytest.raises(ValueError, match=rf"batch size {batch} is outside 1\.\.{MAX}"):
            loaded([np.zeros((batch, *sample), np.float32)])
    with pytest.raises(ValueError, match="expects float32"):
        loaded([np.zeros((2, *sample), np.float64)])
    with pytest.raises(ValueError, match="do not fit"):
        loaded([np.zeros((2, 5), np.float32)])


def test_manifest_states_the_batch(artifacts: dict) -> None:
    _, directory, _ = artifacts["mlp"]
    manifest = json.loads((directory / "manifest.json").read_text())
    dynamic = manifest["dynamic_batch"]
    assert (dynamic["symbol"], dynamic["min"], dynamic["max"]) == ("batch", 1, MAX)
    assert dynamic["program"] == {"min": 2, "max": MAX}
    batch = {"poly": [[["batch"], 1]]}
    assert manifest["inputs"][0]["shape"] == [batch, 16]
    assert manifest["outputs"][0]["shape"] == [batch, 4]
    assert manifest["program"]["symbols"] == ["batch"]
    assert "symbols" not in dynamic["batch1"]["program"]
    assert dynamic["batch1"]["program"]["inputs"][0]["shape"] == [1, 16]
    assert dynamic["batch1"]["program"]["entry"] != manifest["program"]["entry"]
    assert manifest["c_api"]["run"] == "nx_model_run_batch"
    assert manifest["memory"]["arena_bytes"] >= 0
    assert "model-aarch64.o" in manifest["files"]
    loaded = load(directory)
    assert loaded.executable.program.symbols == ("batch",)
    assert loaded._batch1.executable.program.symbols == ()


DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

/* run_dynamic DIR BATCH IN.bin OUT.bin: one input and one output, at batch size BATCH. */
int main(int argc, char** argv) {
    if (argc != 5) return 1;
    nx_model* model = nx_model_load(argv[1]);
    if (!model) {
        fprintf(stderr, "load: %s\n", nx_last_error());
        return 1;
    }
    int64_t batch = atoll(argv[2]);
    printf("max %lld macro %d\n", (long long)nx_model_max_batch(model), NX_MODEL_MAX_BATCH);
    printf("plain shape %lld\n", (long long)nx_model_input_shape(model, 0)[0]);
    size_t in_bytes = nx_model_input_bytes_at(model, 0, batch);
    size_t out_bytes = nx_model_output_bytes_at(model, 0, batch);
    int64_t shape[8];
    int rank = nx_model_output_shape_at(model, 0, batch, shape);
    printf("rank %d first %lld in %zu out %zu\n", rank, (long long)(rank > 0 ? shape[0] : -1),
           in_bytes, out_bytes);
    void* in = malloc(in_bytes ? in_bytes : 1);
    void* out = malloc(out_bytes ? out_bytes : 1);
    FILE* f = fopen(argv[3], "rb");
    if (!f || fread(in, 1, in_bytes, f) != in_bytes) return 1;
    fclose(f);
    const void* inputs[1] = {in};
    void* outputs[1] = {out};
    if (nx_model_run(model, inputs, outputs) != -1) return 1; /* it needs the batch size */
    int status = nx_model_run_batch(model, batch, inputs, outputs);
    printf("status %d\n", status);
    if (status != 0) {
        fprintf(stderr, "run: %s\n", nx_last_error());
        return status == NX_ERROR_BATCH ? 3 : 2;
    }
    f = fopen(argv[4], "wb");
    if (!f || fwrite(out, 1, out_bytes, f) != out_bytes) return 1;
    fclose(f);
    free(in);
    free(out);
    nx_model_free(model);
    return 0;
}
"""


def test_c_api_runs_any_batch(artifacts: dict, tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    model, directory, sample = artifacts["cnn"]
    (tmp_path / "run_dynamic.c").write_text(DRIVER)
    binary = tmp_path / "run_dynamic"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2",
                    str(tmp_path / "run_dynamic.c"), "-I", str(directory),
                    str(directory / "model.so"), f"-Wl,-rpath,{directory}", "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=300)
    rng = np.random.default_rng(3)
    for batch in (1, 5, MAX + 1):
        x = rng.standard_normal((min(batch, MAX), *sample)).astype(np.float32)
        x.tofile(tmp_path / "in.bin")
        done = subprocess.run([str(binary), str(directory), str(batch), str(tmp_path / "in.bin"),
                               str(tmp_path / "out.bin")], capture_output=True, text=True,
                              timeout=300)
        assert f"max {MAX} macro {MAX}" in done.stdout and "plain shape -1" in done.stdout
        if batch > MAX:
            assert done.returncode == 3, done.stdout + done.stderr
            assert f"batch size {batch} is outside 1..{MAX}" in done.stderr
            continue
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"rank 2 first {batch} in {x.nbytes} out {batch * 40}" in done.stdout
        got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(batch, 10)
        np.testing.assert_allclose(got, _eager(model, x), rtol=RTOL, atol=ATOL)


def train_case() -> tuple[nn.Module, object]:
    """An MLP and its training step (Adam, cross entropy); the GPU export tests share it."""
    neurenix.manual_seed(0)
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


TRAIN_TOL = {"cpu": (1e-5, 1e-6), "opencl": (1e-4, 1e-5), "webgpu": (1e-4, 1e-5)}
"""(rtol, atol) of an exported training step's losses and weights against eager."""


@pytest.mark.parametrize("target", list(TRAIN_TOL))
def test_training_step_runs_any_batch(tmp_path: Path, target: str) -> None:
    if target != "cpu":
        needs_device(target)
    model, step = train_case()
    rtol, atol = TRAIN_TOL[target]
    x, y = neurenix.randn(8, 16), neurenix.Tensor(np.arange(8) % 4)
    extra = {"cross": ()} if target == "cpu" else {}
    trainer = load(export(step, (x, y), target, tmp_path / "train", freeze=False,
                          dynamic_batch=32, **extra))
    rng = np.random.default_rng(4)
    for batch in (1, 5, 32, 1):
        xb = rng.standard_normal((batch, 16)).astype(np.float32)
        yb = (np.arange(batch) % 4).astype(np.int64)
        (loss,) = trainer([xb, yb])
        want = step(neurenix.Tensor(xb), neurenix.Tensor(yb)).item()
        np.testing.assert_allclose(float(loss), want, rtol=rtol)
    assert trainer.steps == 4
    np.testing.assert_allclose(trainer.state_dict()["0.weight"], model[0].weight.detach().numpy(),
                               rtol=rtol, atol=atol)
    for batch in (1, 3):  # a failed value check, in either program, commits nothing
        with pytest.raises(ValueError, match="out of range"):
            trainer([np.zeros((batch, 16), np.float32), np.full(batch, 9)])
    assert trainer.steps == 4


NET = """\
import neurenix
from neurenix import nn

model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
example_inputs = (neurenix.randn(3, 10),)
"""


def test_cli_dynamic_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "model.py").write_text(NET)
    status = cli.main([str(tmp_path / "model.py"), "--target", "cpu", "--dynamic-batch", "16",
                       "--check", "-o", str(tmp_path / "art")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "any size 1..16 at run time" in captured.out
    assert "check: max relative difference" in captured.out and "ok" in captured.out
    assert "batch sizes 1, 3, 16" in captured.err
    assert load(tmp_path / "art").max_batch == 16


def test_what_cannot_be_exported_is_refused(tmp_path: Path) -> None:
    lin = nn.Linear(16, 4)
    lin.eval()
    x = neurenix.randn(4, 16)

    def branchy(t):
        return lin(t) * 2 if t.shape[0] > 10 else lin(t)

    def as_int(t):
        return lin(t).reshape(int(t.shape[0]) * 4)

    with pytest.raises(ExportError, match=r"false at batch 11\); export with dynamic_batch=10"):
        export(branchy, (x,), "cpu", tmp_path / "a", dynamic_batch=MAX, cross=())
    with pytest.raises(ExportError, match="cannot keep the batch size symbolic"):
        export(as_int, (x,), "cpu", tmp_path / "a", dynamic_batch=MAX, cross=())
    with pytest.raises(ExportError, match="outside 1..2"):
        export(lin, (x,), "cpu", tmp_path / "a", dynamic_batch=2, cross=())
    with pytest.raises(ValueError, match="an int >= 2"):
        export(lin, (x,), "cpu", tmp_path / "a", dynamic_batch=1)
    bn = nn.Sequential(nn.Linear(16, 4), nn.BatchNorm1d(4))  # training mode: fails at batch 1
    with pytest.raises(ExportError, match="fails at batch 1.*more than 1 value per channel"):
        export(lambda t: bn(t).sum(), (x,), "cpu", tmp_path / "a", freeze=False,
               dynamic_batch=MAX, cross=())
    assert not (tmp_path / "a").exists()


def test_a_batch1_example_traces_at_max(tmp_path: Path) -> None:
    model = _mlp()
    model.eval()
    x = neurenix.randn(1, 16)
    loaded = load(export(model, (x,), "cpu", tmp_path / "a", dynamic_batch=8, cross=()))
    for batch in (1, 8):
        xb = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        np.testing.assert_allclose(loaded([xb])[0], _eager(model, xb), rtol=RTOL, atol=ATOL)


def test_fixed_shape_artifact_keeps_its_c_api(tmp_path: Path) -> None:
    """A model without dynamic_batch: NX_MODEL_MAX_BATCH 0, nx_model_run_batch refuses."""
    x = neurenix.randn(2, 16)
    directory = export(_mlp().eval(), (x,), "cpu", tmp_path / "a", cross=())
    assert "#define NX_MODEL_MAX_BATCH 0" in (directory / "model.h").read_text()
    assert "dynamic_batch" not in json.loads((directory / "manifest.json").read_text())
    assert load(directory).max_batch is None
    source = textwrap.dedent("""\
        #include "model.h"
        int main(int argc, char** argv) {
            (void)argc;
            nx_model* model = nx_model_load(argv[1]);
            return model && nx_model_run_batch(model, 2, 0, 0) == NX_ERROR_BATCH ? 0 : 1;
        }
        """)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    (tmp_path / "main.c").write_text(source)
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", str(tmp_path / "main.c"), "-I",
                    str(directory), str(directory / "model.so"), f"-Wl,-rpath,{directory}",
                    "-o", str(tmp_path / "main")], check=True, capture_output=True, timeout=300)
    assert subprocess.run([str(tmp_path / "main"), str(directory)], timeout=60).returncode == 0
