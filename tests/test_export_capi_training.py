"""The C API of exported training steps (artifact format 2, `export(..., freeze=False)`).

First the generated runtime alone (`neurenix.export_capi`), on a hand-written entry function
linked in place of a compiled program: state buffers swapped after each run, the seed, the
tensor queries, and value checks compared exactly (int64 values beyond 2^53, float bounds on
integers, integer bounds on floats) with Python's text for the offending value.  Then the
spec's three training workloads (tests/training_steps.py) exported for the CPU and trained
from a C program built here with the system C compiler (tests/c/train_model.c, in its own
process: no Python there): its losses and final parameters are eager's, and a CrossEntropy
target out of range fails the run with eager's message and changes nothing.
"""
from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from neurenix.runtime import load
from neurenix.runtime.artifact import read_safetensors, write_safetensors
from training_steps import dropout_step, training_step

import neurenix
from neurenix import export_capi
from neurenix.export import export
from neurenix.export_capi import CCheck, CTensor

ROOT = Path(__file__).resolve().parents[1]
STRICT = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
STEPS = 5
KINDS = ("mlp", "cnn", "lstm")


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def _compile(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _build_driver(directory: Path, out: Path) -> Path:
    """tests/c/train_model.c built against the artifact's model.h and linked with model.so."""
    binary = out / "train_model"
    _compile([_cc(), *STRICT, str(ROOT / "tests" / "c" / "train_model.c"), "-I",
              str(directory), str(directory / "model.so"), f"-Wl,-rpath,{directory}", "-o",
              str(binary)])
    return binary


def _train(binary: Path, directory: Path, steps: int, inputs: list[np.ndarray],
           tensors: dict[str, Path], fail: list[np.ndarray] | None = None,
           ) -> subprocess.CompletedProcess:
    """Run train_model on the inputs (written beside the binary); its process."""
    files = []
    for name, arrays in (("in", inputs), ("bad", fail or [])):
        for k, x in enumerate(arrays):
            files.append(binary.parent / f"{name}{k}.bin")
            np.ascontiguousarray(x).tofile(files[-1])
    command = [str(binary), str(directory), str(steps), str(binary.parent / "losses.bin"),
               *map(str, files[:len(inputs)])]
    if fail is not None:
        command += ["--fail", *map(str, files[len(inputs):])]
    for name, path in tensors.items():
        command += ["--tensor", name, str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


# ---- the generated runtime, on a hand-written entry ------------------------------------------

FAKE_STEP = r"""
#include <stdint.h>
#include <string.h>

/* args: x, t (inputs), w (state 0), scale, seed, loss, seed copy, loss again (outputs),
 * t[0], t[1] (check values), next w (state_out 0) */
void fake_step(void** args, void* arena, const void* pool) {
    (void)arena;
    (void)pool;
    const float* x = args[0];
    const unsigned char* t = args[1];
    const float* w = args[2];
    const float* scale = args[3];
    float loss = 0.0f;
    for (int k = 0; k < 4; ++k) loss += w[k] * x[k];
    memcpy(args[5], &loss, sizeof loss);
    memcpy(args[6], args[4], 8);
    memcpy(args[8], t, ITEMSIZE);
    memcpy(args[9], t + ITEMSIZE, ITEMSIZE);
    float* next = args[10];
    for (int k = 0; k < 4; ++k) next[k] = w[k] - scale[k] * x[k];
}
"""
W0 = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
SCALE = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
X = np.array([1.0, 2.0, -1.0, 0.5], np.float32)
SEED = 1234


def _fake_model(directory: Path, checks: list[CCheck], t_dtype: str = "int64") -> Path:
    """A training artifact's C API on `fake_step`: model input t (two values of t_dtype) gives
    check values 0 and 1, state 0 is the tensor "0.weight"."""
    directory.mkdir(parents=True)
    write_safetensors(directory / "weights.safetensors",
                      {"0.weight": W0, "scale": SCALE, "unused": np.zeros(3, np.int32)})
    inputs = [CTensor("x", "float32", (4,)), CTensor("t", t_dtype, (2,))]
    outputs = [CTensor("loss", "float32", ()), CTensor("seed", "int64", ()),
               CTensor("loss", "float32", ())]
    tensors = [CTensor("0.weight", "float32", (4,)), CTensor("scale", "float32", (4,))]
    args = [("input", 0), ("input", 1), ("tensor", 0), ("tensor", 1), ("seed", 0),
            ("output", 0), ("output", 1), ("output", 2), ("check", 0), ("check", 1),
            ("state_out", 0)]
    (directory / "model.h").write_text(export_capi.header(inputs, outputs, training=True))
    (directory / "model.c").write_text(export_capi.source(
        "fake_step", inputs, outputs, tensors, args, [0, 1, 0], 64, states=[0], checks=checks,
        seed=SEED))
    itemsize = np.dtype(t_dtype).itemsize
    (directory / "fake_step.c").write_text(FAKE_STEP.replace("ITEMSIZE", str(itemsize)))
    _compile([_cc(), *STRICT, "-fPIC", "-shared", "-I", str(directory),
              str(directory / "model.c"), str(directory / "fake_step.c"),
              "-Wl,-soname,model.so", "-o", str(directory / "model.so"), "-lm"])
    return directory


class CModel:
    """A model.so loaded in this process through ctypes (each one RTLD_LOCAL)."""

    def __init__(self, directory: Path) -> None:
        lib = self.lib = ctypes.CDLL(str(directory / "model.so"))
        lib.nx_model_load.restype = ctypes.c_void_p
        lib.nx_model_load.argtypes = [ctypes.c_char_p]
        lib.nx_model_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.nx_model_free.argtypes = [ctypes.c_void_p]
        lib.nx_last_error.restype = ctypes.c_char_p
        lib.nx_model_steps.restype = ctypes.c_int64
        lib.nx_model_steps.argtypes = [ctypes.c_void_p]
        lib.nx_model_find_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nx_model_tensor_data.restype = ctypes.c_void_p
        lib.nx_model_tensor_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.nx_model_tensor_bytes.restype = ctypes.c_size_t
        lib.nx_model_tensor_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.nx_model_num_tensors.argtypes = [ctypes.c_void_p]
        lib.nx_model_tensor_name.restype = ctypes.c_char_p
        lib.nx_model_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.model = lib.nx_model_load(str(directory).encode())
        assert self.model, self.error()

    def error(self) -> str:
        return self.lib.nx_last_error().decode()

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> int:
        ins = (ctypes.c_void_p * len(inputs))(*[x.ctypes.data for x in inputs])
        outs = (ctypes.c_void_p * len(outputs))(*[y.ctypes.data for y in outputs])
        return self.lib.nx_model_run(self.model, ins, outs)

    def steps(self) -> int:
        return self.lib.nx_model_steps(self.model)

    def tensor(self, name: str, dtype: str = "float32") -> np.ndarray:
        t = self.lib.nx_model_find_tensor(self.model, name.encode())
        assert t >= 0, self.error()
        size = self.lib.nx_model_tensor_bytes(self.model, t)
        data = ctypes.string_at(self.lib.nx_model_tensor_data(self.model, t), size)
        return np.frombuffer(data, dtype).copy()

    def close(self) -> None:
        self.lib.nx_model_free(self.model)


def _outputs() -> list[np.ndarray]:
    return [np.full((), np.nan, np.float32), np.zeros((), np.int64),
            np.full((), np.nan, np.float32)]


def _eager_steps(n: int) -> tuple[list[float], np.ndarray]:
    w, losses = W0.copy(), []
    for _ in range(n):
        losses.append(float(np.float32(np.sum(w * X, dtype=np.float32))))
        w = (w - SCALE * X).astype(np.float32)
    return losses, w


def test_state_seed_and_queries_through_train_model(tmp_path: Path) -> None:
    message = "target {} is out of range"
    directory = _fake_model(tmp_path / "m", [CCheck(0, 1, "int64", 0, 10, False, message)])
    assert "#define NX_MODEL_TRAINING 1" in (directory / "model.h").read_text()
    binary = _build_driver(directory, tmp_path)
    good = [X, np.array([0, 9], np.int64)]
    bad = [X, np.array([0, 10], np.int64)]
    done = _train(binary, directory, 3, good, {"0.weight": tmp_path / "w.bin",
                                               "scale": tmp_path / "scale.bin"}, fail=bad)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["training 1", "tensor 0 0.weight float32 [4] 16",
                         "tensor 1 scale float32 [4] 16"]
    assert "failed: target 10 is out of range" in lines and lines[-1] == "steps 3"
    losses, w = _eager_steps(3)
    np.testing.assert_allclose(np.fromfile(tmp_path / "losses.bin", np.float32), losses,
                               rtol=1e-6)
    np.testing.assert_allclose(np.fromfile(tmp_path / "w.bin", np.float32), w, rtol=1e-6)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "scale.bin", np.float32), SCALE)
    done = _train(binary, directory, 0, good, {}, fail=good)  # a run that does not fail
    assert done.returncode == 3 and "succeeded" in done.stderr
    done = _train(binary, directory, 1, good, {"nothing": tmp_path / "x.bin"})
    assert done.returncode == 2 and "no tensor 'nothing'" in done.stderr


def test_state_swaps_seed_counts_and_a_failed_run_commits_nothing(tmp_path: Path) -> None:
    directory = _fake_model(tmp_path / "m", [CCheck(0, 1, "int64", 0, 10, False, "bad {}")])
    model = CModel(directory)
    try:
        good, bad = [X, np.array([1, 2], np.int64)], [X, np.array([-4, 2], np.int64)]
        assert model.steps() == 0
        np.testing.assert_array_equal(model.tensor("0.weight"), W0)
        losses, seeds = [], []
        for step in range(4):
            out = _outputs()
            assert model.run(good, out) == 0, model.error()
            losses.append(float(out[0]))
            seeds.append(int(out[1]))
            assert out[2] == out[0]  # a repeated output is copied
            assert model.steps() == step + 1
            if step == 1:
                before = model.tensor("0.weight")
                assert model.run(bad, _outputs()) == -1
                assert model.error() == "bad -4"
                assert model.steps() == 2
                np.testing.assert_array_equal(model.tensor("0.weight"), before)
        expected_losses, w = _eager_steps(4)
        np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
        np.testing.assert_allclose(model.tensor("0.weight"), w, rtol=1e-6)
        assert seeds == [SEED, SEED + 1, SEED + 2, SEED + 3]  # the failed run drew no seed
        np.testing.assert_array_equal(model.tensor("scale"), SCALE)
        assert model.lib.nx_model_num_tensors(model.model) == 2
        assert model.lib.nx_model_tensor_name(model.model, 2) is None
        assert "tensor 2: no such tensor" in model.error()
        assert model.lib.nx_model_find_tensor(model.model, b"unused") == -1
        assert model.lib.nx_model_find_tensor(model.model, None) == -1
    finally:
        model.close()


def _expected_error(values: np.ndarray, low: float | int, high: float | int,
                    inclusive: bool, message: str) -> str | None:
    """The check's outcome as eager's RangeTest decides it: None, or the message."""
    lo, hi = values[0].item(), values[1].item()
    if lo < low:
        return message.replace("{}", str(lo))
    if hi > high or (hi == high and not inclusive):
        return message.replace("{}", str(hi))
    return None


BIG = 2 ** 53
CHECK_CASES = [  # (dtype, [lo, hi], low, high, high_inclusive)
    ("int64", [0, BIG], 0, BIG, False),
    ("int64", [0, BIG], 0, BIG, True),
    ("int64", [0, BIG + 1], 0, BIG, True),  # equal to BIG as a double: must still fail
    ("int64", [0, BIG + 1], 0, float(BIG), True),
    ("int64", [0, BIG], 0, float(BIG), True),
    ("int64", [BIG + 1, BIG + 3], BIG + 2, 2 ** 62, False),
    ("int64", [BIG + 2, BIG + 3], BIG + 2, 2 ** 62, False),
    ("int64", [-(2 ** 63), 2 ** 63 - 1], -(2 ** 63), 2 ** 63 - 1, True),
    ("int64", [-(2 ** 63), 2 ** 63 - 1], -(2 ** 63), 2 ** 63 - 1, False),
    ("int64", [-(2 ** 63), 0], -(2 ** 63) + 1, 2 ** 64, False),
    ("int64", [0, 2], -0.5, 2.5, False),
    ("int64", [-1, 2], -0.5, 2.5, False),
    ("int64", [0, 3], -0.5, 2.5, False),
    ("int64", [0, 3], float("nan"), float("inf"), False),
    ("int64", [0, 3], -float("inf"), -float("inf"), False),
    ("int64", [0, 3], float("inf"), 5, False),
    ("int32", [-5, 7], -(2 ** 40), 2 ** 40, False),
    ("int32", [-5, 7], 2 ** 40, 2 ** 41, False),
    ("uint64", [0, 2 ** 64 - 1], 0, 2 ** 64 - 1, True),
    ("uint64", [0, 2 ** 64 - 1], 0, 2 ** 64 - 1, False),
    ("uint64", [0, 5], -1, 2 ** 70, False),
    ("bool", [False, True], 0, 1, False),
    ("bool", [False, True], 0, 1, True),
    ("uint8", [3, 250], 3.5, 250.0, True),
    ("float32", [0.1, 0.5], 0.0, 1.0, True),
    ("float32", [0.1, 1.0000001], 0.0, 1.0, True),
    ("float32", [0.0, 1.0], 0.0, 1.0, False),
    ("float32", [-1e-5, 0.5], 0.0, 1.0, True),
    ("float32", [float("nan"), float("nan")], 0.0, 1.0, False),
    ("float32", [-float("inf"), 0.0], 0, 1, False),
    ("float32", [0.0, 16777216.0], 0, 2 ** 24 + 1, False),
    ("float32", [0.0, 16777218.0], 0, 2 ** 24 + 1, False),
    ("float32", [-0.0, 3e-30], 0, 1, False),
    ("float64", [0.0, 1e16], 0, 1e15, False),
    ("float64", [0.0, 123456.0], 0, 1000, False),
    ("float64", [-1e-300, 0.0], 0, 1, False),
    ("float64", [-0.0001, 0.0], 0, 1, False),
    ("float64", [float(BIG), float(BIG)], BIG + 1, BIG + 2, False),
    ("float64", [float(BIG + 2), float(BIG + 2)], BIG + 1, BIG + 2, True),
    ("float64", [float(BIG + 2), float(BIG + 2)], BIG + 1, BIG + 3, False),
    ("float64", [float(BIG + 2), float(BIG + 4)], BIG + 1, BIG + 3, False),
    ("float64", [1.0, 2.0 ** 1000], -(10 ** 400), 10 ** 400, False),
    ("float64", [-float("inf"), float("inf")], -(10 ** 400), 10 ** 400, False),
    ("float16", [0.5, 65504.0], 0.25, 60000, False),
    ("float16", [2.0 ** -24, 1.0], 2.0 ** -23, 60000, False),
]


@pytest.mark.parametrize("case", range(len(CHECK_CASES)))
def test_value_checks_decide_exactly_as_eager(case: int, tmp_path: Path) -> None:
    dtype, values, low, high, inclusive = CHECK_CASES[case]
    message = "value {} is out of range (got {}; 100% sure, \\ \"é\")"
    directory = _fake_model(tmp_path / "m", [CCheck(0, 1, dtype, low, high, inclusive,
                                                    message)], t_dtype=dtype)
    t = np.array(values, dtype=dtype)
    expected = _expected_error(t, low, high, inclusive, message)
    model = CModel(directory)
    try:
        status = model.run([X, t], _outputs())
        if expected is None:
            assert status == 0, model.error()
            assert model.steps() == 1
        else:
            assert status == -1
            assert model.error() == expected
            assert model.steps() == 0
            np.testing.assert_array_equal(model.tensor("0.weight"), W0)
    finally:
        model.close()


def test_the_first_failing_check_reports(tmp_path: Path) -> None:
    checks = [CCheck(0, 0, "int64", 0, 100, False, "first {}"),
              CCheck(1, 1, "int64", 0, 100, False, "second {}")]
    directory = _fake_model(tmp_path / "m", checks)
    model = CModel(directory)
    try:
        assert model.run([X, np.array([5, 200], np.int64)], _outputs()) == -1
        assert model.error() == "second 200"
        assert model.run([X, np.array([-5, 200], np.int64)], _outputs()) == -1
        assert model.error() == "first -5"
        assert model.run([X, np.array([5, 6], np.int64)], _outputs()) == 0
    finally:
        model.close()


def test_an_inference_runtime_is_unchanged(tmp_path: Path) -> None:
    """Today's call (no states, checks or seed) compiles strictly; runs count as steps."""
    inputs = [CTensor("x", "float32", (4,))]
    outputs = [CTensor("y", "float32", (4,))]
    tensors = [CTensor("w", "float32", (4,))]
    header = export_capi.header(inputs, outputs)
    assert "#define NX_MODEL_TRAINING 0" in header
    source = export_capi.source("scale_entry", inputs, outputs, tensors,
                                [("input", 0), ("tensor", 0), ("output", 0)], [0], 0)
    assert "NX_NUM_STATES 0" in source and "NX_NUM_CHECKS 0" in source
    directory = tmp_path / "m"
    directory.mkdir()
    write_safetensors(directory / "weights.safetensors", {"w": SCALE})
    (directory / "model.h").write_text(header)
    (directory / "model.c").write_text(source)
    (directory / "entry.c").write_text(
        "void scale_entry(void** args, void* arena, const void* pool) {\n"
        "    (void)arena; (void)pool;\n"
        "    const float* x = args[0]; const float* w = args[1]; float* y = args[2];\n"
        "    for (int k = 0; k < 4; ++k) y[k] = x[k] * w[k];\n}\n")
    _compile([_cc(), *STRICT, "-fPIC", "-shared", "-I", str(directory),
              str(directory / "model.c"), str(directory / "entry.c"), "-o",
              str(directory / "model.so"), "-lm"])
    model = CModel(directory)
    try:
        y = np.zeros(4, np.float32)
        assert model.run([X], [y]) == 0
        np.testing.assert_allclose(y, X * SCALE)
        assert model.steps() == 1
        np.testing.assert_array_equal(model.tensor("w"), SCALE)
    finally:
        model.close()


def test_source_refuses_inconsistent_tables() -> None:
    x = [CTensor("x", "float32", (4,))]
    w = [CTensor("w", "float32", (4,))]
    base = [("input", 0), ("tensor", 0), ("output", 0)]
    with pytest.raises(ValueError, match="state_out"):
        export_capi.source("e", x, x, w, base, [0], 0, states=[0])
    with pytest.raises(ValueError, match="names nothing"):
        export_capi.source("e", x, x, w, [*base, ("state_out", 0)], [0], 0)
    with pytest.raises(ValueError, match="seed"):
        export_capi.source("e", x, x, w, [*base, ("seed", 0)], [0], 0)
    with pytest.raises(ValueError, match="does not write"):
        export_capi.source("e", x, x, w, [*base, ("check", 0)], [0], 0,
                           checks=[CCheck(0, 1, "int64", 0, 1, False, "m")])
    with pytest.raises(ValueError, match="tensor indices"):
        export_capi.source("e", x, x, w, base, [0], 0, states=[3])


# ---- the spec's training steps, exported and trained from C -------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per kind: (case, artifact directory, train_model binary), built on first use."""
    root = tmp_path_factory.mktemp("export-train")
    built: dict = {}

    def get(kind: str) -> tuple:
        if kind not in built:
            case = training_step(kind)
            directory = export(case.step, tuple(neurenix.Tensor(a) for a in case.inputs),
                               "cpu", root / kind, freeze=False)
            out = root / f"{kind}-driver"
            out.mkdir()
            built[kind] = (case, directory, _build_driver(directory, out))
        return built[kind]

    return get


def _state_files(names: list[str], out: Path) -> dict[str, Path]:
    """Where train_model writes each named tensor."""
    return {name: out / f"state{k}.bin" for k, name in enumerate(names)}


@pytest.mark.parametrize("kind", KINDS)
def test_training_from_c_matches_eager(trained, kind: str, tmp_path: Path) -> None:
    case, directory, binary = trained(kind)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["inference_only"] is False
    states = manifest["training"]["states"]
    state_bindings = {b["tensor"] for b in manifest["bindings"] if b["from"] == "state"}
    assert set(states) == state_bindings
    expected_state = case.eager_state(STEPS)
    assert set(expected_state) <= set(states), (sorted(expected_state), states)
    files = _state_files(sorted(expected_state), tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    local = run_dir / binary.name
    shutil.copy(binary, local)
    done = _train(local, directory, STEPS, case.inputs, files)
    assert done.returncode == 0, done.stderr
    assert f"steps {STEPS}" in done.stdout
    weights = read_safetensors(directory / "weights.safetensors")
    for name in expected_state:
        array = weights[name]
        assert f" {name} {array.dtype.name} " in done.stdout
    losses = np.fromfile(run_dir / "losses.bin", np.float32)
    np.testing.assert_allclose(losses, case.eager_losses(STEPS), rtol=1e-4, atol=1e-5)
    for name, expected in expected_state.items():
        got = np.fromfile(files[name], expected.dtype).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
        assert not np.array_equal(got, weights[name]), f"{name} was not trained"
    assert "training 1" in done.stdout.splitlines()  # model.h's NX_MODEL_TRAINING
    assert "#define NX_MODEL_TRAINING 1" in (directory / "model.h").read_text()


@pytest.mark.parametrize("kind,bad_value", [("mlp", "classes"), ("cnn", -3)])
def test_a_target_out_of_range_fails_the_run_and_changes_nothing(trained, kind: str,
                                                                  bad_value, tmp_path: Path
                                                                  ) -> None:
    case, directory, binary = trained(kind)
    target = case.inputs[-1]
    assert target.dtype == np.int64
    classes = _classes(kind)
    bad_target = target.copy()
    bad_target.flat[-1] = classes if bad_value == "classes" else bad_value
    bad = [*case.inputs[:-1], bad_target]
    twin = training_step(kind)  # eager's error (raised before anything is updated)
    with pytest.raises(ValueError) as info:
        twin.step(*[neurenix.Tensor(a) for a in bad])
    expected_message = str(info.value)
    expected_state = case.eager_state(2)
    files = _state_files(sorted(expected_state), tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    local = run_dir / binary.name
    shutil.copy(binary, local)
    done = _train(local, directory, 2, case.inputs, files, fail=bad)
    assert done.returncode == 0, done.stderr
    assert f"failed: {expected_message}" in done.stdout.splitlines()
    assert "steps 2" in done.stdout
    for name, expected in expected_state.items():
        got = np.fromfile(files[name], expected.dtype).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def _classes(kind: str) -> int:
    """The number of classes of the workload's classifier (its last layer's outputs)."""
    case = training_step(kind)
    last = [p for name, p in case.model.named_parameters() if name.endswith("bias")][-1]
    return int(last.shape[0])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_float_values_are_written_as_python_writes_them(dtype: str, tmp_path: Path) -> None:
    """A check that fails every value but NaN reports it: the text is str() of the value's
    item() (Python's shortest repr of the double), for a thousand values of every magnitude."""
    check = CCheck(0, 1, dtype, float("inf"), -float("inf"), False, "{}")
    directory = _fake_model(tmp_path / "m", [check], t_dtype=dtype)
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500),
        rng.integers(-10 ** 6, 10 ** 6, 200).astype(np.float64),
        2.0 ** rng.integers(-1070 if dtype == "float64" else -149, 128, 200),
        [0.0, -0.0, 1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 0.1, 123456.0, 5e-324,
         2.0 ** -24, 1.7976931348623157e308, np.inf, -np.inf, 0.3, 2.0 / 3.0]])
    model = CModel(directory)
    try:
        with np.errstate(over="ignore"):
            values = values.astype(dtype)
        for v in values:
            assert model.run([X, np.array([v, v], dtype)], _outputs()) == -1
            assert model.error() == str(v.item()), float(v)
    finally:
        model.close()


def test_dropout_from_c_draws_the_python_loaders_masks(tmp_path: Path) -> None:
    """The seed: a step with dropout run from C draws, step after step, the masks the Python
    loader draws (the exported seed plus the runs so far), a new one per step."""
    step, x = dropout_step(lr=0.01)
    directory = export(step, (neurenix.Tensor(x),), "cpu", tmp_path / "a", freeze=False)
    binary = _build_driver(directory, tmp_path)
    done = _train(binary, directory, STEPS, [x], {"3.weight": tmp_path / "w.bin"})
    assert done.returncode == 0, done.stderr
    losses = np.fromfile(tmp_path / "losses.bin", np.float32)
    assert len(set(losses.tolist())) == STEPS  # a new mask per step
    loaded = load(directory)
    expected = [loaded([x])[0].item() for _ in range(STEPS)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.fromfile(tmp_path / "w.bin", np.float32).reshape(1, 32),
                               loaded.state_dict()["3.weight"], rtol=1e-5, atol=1e-7)
