"""The neurenix-compile command, run as a user runs it (a subprocess on small model files):
the artifact it writes, its progress and summary, --input-shape, --check on each device,
--benchmark, CUDA/HIP exports, source annotations naming the model file, and one-line errors.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from devices import needs_device
from neurenix.runtime import hip_compile, nvrtc

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("load", "trace", "passes", "codegen", "toolchain", "write")

NET = """\
import neurenix
from neurenix import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 4)

    def forward(self, x):
        h = self.fc(x)
        return h.relu() * 2


model = Net()
example_inputs = (neurenix.randn(3, 10),)
"""
NET_FORWARD_LINES = (11, 12)

TWO_INPUTS = """\
import neurenix
from neurenix import nn


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, n):
        return self.fc(x) * n.unsqueeze(1)


model = Scale()
example_inputs = (neurenix.randn(2, 4), neurenix.tensor([1, 3]))
"""


def cli(cwd: pathlib.Path, *args: str, env: dict | None = None,
        script: bool = False) -> subprocess.CompletedProcess:
    """neurenix-compile ARGS in `cwd` (`script`: the installed console script)."""
    command = [shutil.which("neurenix-compile")] if script else [sys.executable, "-m",
                                                                  "neurenix.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def write(tmp_path: pathlib.Path, text: str, name: str = "model.py") -> str:
    (tmp_path / name).write_text(text)
    return name


def manifest(directory: pathlib.Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr


def assert_one_error(done: subprocess.CompletedProcess, message: str, status: int = 1) -> None:
    """Exit `status`, and stderr's last line, on its own, is the one error line."""
    assert done.returncode == status, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert errors == [lines[-1]], done.stderr
    assert lines[-1].startswith("neurenix-compile: error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in done.stderr


def stage_lines(stderr: str) -> list[str]:
    return [line.split()[0] for line in stderr.splitlines()
            if line.startswith("  ") and " ... " in line]


def kernel_comments(directory: pathlib.Path) -> list[str]:
    return [k["comment"] for k in manifest(directory)["program"]["kernels"]]


# ---- what it writes ------------------------------------------------------------------------


def test_readme_command_writes_a_checked_artifact_naming_the_model_file(tmp_path):
    """The README's first command, through the installed script, in a fresh directory."""
    if shutil.which("neurenix-compile") is None:
        pytest.skip("the neurenix-compile script is not on PATH (pip install -e .)")
    shutil.copy(ROOT / "examples" / "mlp.py", tmp_path / "mlp.py")
    done = cli(tmp_path, "mlp.py", "--check", script=True)
    assert_ok(done)
    assert stage_lines(done.stderr) == [*STAGES, "runtime", "check"]
    assert re.search(r"^check: max relative difference vs eager \S+ \(tolerance 0.0001\): ok$",
                     done.stdout, re.M)
    out = tmp_path / "neurenix-out"
    data = manifest(out)
    assert data["target"] == "cpu" and data["inputs"][0]["shape"] == [64, 784]
    assert {"model.so", "model.ll", "weights.safetensors"} <= set(data["files"])
    defines = next(k for k, line in enumerate((tmp_path / "mlp.py").read_text().splitlines(), 1)
                   if line.startswith("model = "))
    for comment in kernel_comments(out):  # a Sequential: the line that defines the model
        assert comment.endswith(f"(mlp.py:{defines})"), comment


def test_progress_summary_and_annotations(tmp_path):
    done = cli(tmp_path, write(tmp_path, NET), "-o", "art", "--verbose")
    assert_ok(done)
    assert stage_lines(done.stderr) == list(STAGES)
    assert re.search(r"^    simplify +\d+ -> \d+", done.stderr, re.M)  # --verbose: each pass
    out = done.stdout
    ops = re.search(r"^  ops +(\d+) traced, (\d+) after passes$", out, re.M)
    assert ops and int(ops[1]) >= int(ops[2]) > 0
    assert re.search(r"^  kernels +1$", out, re.M)
    assert re.search(r"^  memory +\S+ \S+ planned, \S+ \S+ naive, ", out, re.M)
    assert re.search(r"^  compile time +\d", out, re.M)
    artifact = tmp_path / "art"
    for name in [*manifest(artifact)["files"], "manifest.json"]:
        assert re.search(rf"^ +{re.escape(name)} +\d", out, re.M), name
    comments = kernel_comments(artifact)
    assert re.search(r"^  kernel +\S+: .*\(model\.py:11", out, re.M)
    for line in NET_FORWARD_LINES:  # the forward's own lines, not the command's
        assert any(f"model.py:{line}" in c for c in comments), comments
    assert not any("neurenix" in c.split("(")[-1] for c in comments), comments


def test_input_shape_sets_each_input(tmp_path):
    done = cli(tmp_path, write(tmp_path, TWO_INPUTS), "-o", "art", "--input-shape", "5x4",
               "--input-shape", "5", "--check")
    assert_ok(done)
    assert "Scale(float32[5,4], int64[5])" in done.stderr
    assert [(t["shape"], t["dtype"]) for t in manifest(tmp_path / "art")["inputs"]] == \
        [([5, 4], "float32"), ([5], "int64")]
    assert ": ok" in done.stdout


@pytest.mark.parametrize("args, message, status", [
    (["--input-shape", "5x4"], "--input-shape: the model takes 2 example input(s), got 1", 1),
    (["--input-shape", "5x", "5"], "argument --input-shape: invalid shape '5x'", 2),
])
def test_input_shape_errors(tmp_path, args, message, status):
    assert_one_error(cli(tmp_path, write(tmp_path, TWO_INPUTS), *args), message, status)


def test_benchmark_times_artifact_and_eager(tmp_path):
    """Also: the default output directory, and an earlier artifact there replaced."""
    model = write(tmp_path, NET)
    assert_ok(cli(tmp_path, model))
    done = cli(tmp_path, model, "--benchmark", "--runs", "2")
    assert_ok(done)
    assert re.search(r"^benchmark: artifact \d+\.\d+ ms, eager \d+\.\d+ ms per run "
                     r"\(median of 2; ", done.stdout, re.M)
    assert "check:" not in done.stdout
    assert manifest(tmp_path / "neurenix-out")["target"] == "cpu"


def test_check_fails_when_the_artifact_differs_from_eager(tmp_path):
    """A forward that draws a Python random number: traced once (a constant), it differs
    from a later eager call."""
    body = "import random\n" + NET.replace("        return h.relu() * 2\n",
                                           "        return h * (1 + random.random())\n")
    done = cli(tmp_path, write(tmp_path, body), "--check")
    assert done.returncode == 1
    assert re.search(r"^check: max relative difference vs eager \S+ .*: FAILED$", done.stdout,
                     re.M)
    assert_one_error(done, "the cpu artifact differs from eager")


@pytest.mark.parametrize("target", ["opencl", "webgpu"])
def test_check_on_software_devices(tmp_path, target):
    needs_device(target)
    done = cli(tmp_path, write(tmp_path, NET), "--target", target, "-o", "art", "--check",
               "--tolerance", "1e-5")
    assert_ok(done)
    assert "(tolerance 1e-05): ok" in done.stdout
    data = manifest(tmp_path / "art")
    assert data["target"] == target
    assert ("model.cl" if target == "opencl" else "model.wgsl") in data["files"]


def _need_toolchain(name: str) -> None:
    """Skip when the toolchain is absent, fail where NEURENIX_REQUIRE_TOOLCHAINS lists it (as
    tests/test_toolchain_cuda_hip.py does)."""
    try:
        nvrtc.version() if name == "cuda" else hip_compile.hipcc()
    except (nvrtc.NVRTCError, hip_compile.HIPCompileError) as e:
        required = os.environ.get("NEURENIX_REQUIRE_TOOLCHAINS", "").split(",")
        if name in {r.strip() for r in required}:
            pytest.fail(f"{name} toolchain required here (NEURENIX_REQUIRE_TOOLCHAINS): {e}")
        pytest.skip(f"{name} toolchain absent: {e}")


@pytest.mark.parametrize("target, binary, key", [("cuda", "model.ptx", "ptx"),
                                                 ("hip", "model.co", "code_object")])
def test_gpu_toolchain_exports(tmp_path, target, binary, key):
    _need_toolchain(target)
    done = cli(tmp_path, write(tmp_path, NET), "--target", target, "-o", "art")
    assert_ok(done)
    data = manifest(tmp_path / "art")
    assert data["binaries"] == {key: binary} and binary in data["files"]
    assert "toolchain_missing" not in data
    assert (tmp_path / "art" / binary).stat().st_size > 0


# ---- errors ---------------------------------------------------------------------------------


FORWARD_RAISES = NET.replace("        h = self.fc(x)\n", "        h = self.fc(x.reshape(5, 6))\n")


@pytest.mark.parametrize("body, args, message, status", [
    (None, [], "no such file: missing.py", 1),
    ("x = 1\n", [], "model.py: define a module-level `model`", 1),
    ("raise RuntimeError('broken file')\n", [],
     "model.py: running the file raised RuntimeError: broken file", 1),
    (FORWARD_RAISES, [], "the model's forward raised ValueError", 1),
    (NET, ["--target", "tpu"], "argument --target: invalid choice: 'tpu'", 2),
    (NET, ["--dynamic-batch", "2", "--target", "webgpu"],
     "dynamic_batch=2: the example inputs' batch size 3 is outside 1..2", 1),
    (NET, ["--dynamic-batch", "1"], "--dynamic-batch must be at least 2", 2),
])
def test_bad_input_gives_one_line(tmp_path, body, args, message, status):
    model = "missing.py" if body is None else write(tmp_path, body)
    assert_one_error(cli(tmp_path, model, *args), message, status)


def test_forward_error_names_the_model_line(tmp_path):
    done = cli(tmp_path, write(tmp_path, FORWARD_RAISES))
    assert_one_error(done, "(at model.py:11)")
    assert "  trace      ... failed" in done.stderr.splitlines()


def test_verbose_error_shows_the_traceback(tmp_path):
    done = cli(tmp_path, write(tmp_path, FORWARD_RAISES), "--verbose")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and 'model.py", line 11, in forward' in done.stderr
    assert done.stderr.splitlines()[-1].startswith("neurenix-compile: error: ")


def test_refuses_a_directory_that_is_not_an_artifact(tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "notes.txt").write_text("mine")
    assert_one_error(cli(tmp_path, write(tmp_path, NET), "-o", "art"),
                     "holds no exported artifact")
    assert (tmp_path / "art" / "notes.txt").read_text() == "mine"


def test_absent_toolchain(tmp_path):
    """hipcc neither on PATH nor in ROCm's folder."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), ROCM_PATH=str(tmp_path))
    env.pop("NEURENIX_HIPCC", None)
    done = cli(tmp_path, write(tmp_path, NET), "--target", "hip", env=env)
    assert_one_error(done, "--target hip compiles a code object with hipcc: hipcc is not "
                           "installed")
    assert not (tmp_path / "neurenix-out").exists()


def test_absent_device(tmp_path):
    from neurenix.runtime import is_available
    if is_available("cuda"):
        pytest.skip("this machine has a CUDA device")
    _need_toolchain("cuda")
    done = cli(tmp_path, write(tmp_path, NET), "--target", "cuda", "--check")
    assert_one_error(done, "this machine has no cuda device")


def test_cpu_flag_builds_a_portable_library(tmp_path):
    model = write(tmp_path, NET)
    done = cli(tmp_path, model, "-o", "art", "--cpu", "generic", "--check")
    assert_ok(done)
    assert ": ok" in done.stdout
    assert manifest(tmp_path / "art")["cpu"]["features"] == []
    assert_one_error(cli(tmp_path, model, "--cpu", "pentium"), "unknown CPU 'pentium'")
