"""The benchmark script cannot rot: every Neurenix workload runs once at a tiny size.

Nothing here is timed; PyTorch, torch.compile and onnxruntime are not touched.
"""
import importlib
import json
import pathlib
import sys

import numpy as np
import pytest
from devices import needs_device  # tests/devices.py: imported before benchmarks/ joins the path

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("workloads"), importlib.import_module("bench")
    finally:
        sys.path.remove(str(BENCH))


def _run_once(workloads, name, framework, backend):
    runner = workloads.build_runner(name, framework, tiny=True, backend=backend)
    with runner.context():
        value = runner.value(runner.step())
    assert np.all(np.isfinite(value))
    return value


@pytest.mark.parametrize("name", ["mlp_b1", "mlp_b64", "mlp_train_b64", "cnn_infer",
                                  "cnn_train", "lstm_infer", "lstm_train", "eltwise",
                                  "gemm_1024"])
def test_every_neurenix_workload_runs_and_compiled_agrees(modules, name):
    workloads, _ = modules
    assert name in workloads.WORKLOADS
    eager = _run_once(workloads, name, "neurenix_eager", None)
    compiled = _run_once(workloads, name, "neurenix_compiled", "reference")
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp_b1", "eltwise", "gemm_1024"])
def test_native_backend_runs_the_small_workloads(modules, name):
    workloads, _ = modules
    eager = _run_once(workloads, name, "neurenix_eager", None)
    np.testing.assert_allclose(_run_once(workloads, name, "neurenix_compiled", None), eager,
                               rtol=1e-4, atol=1e-5)


def test_worker_and_tables(modules, tmp_path):
    _, bench = modules
    out = tmp_path / "r.json"
    assert bench.main(["--worker", "mlp_b1", "neurenix_eager", "--seconds", "0.01",
                       "--result", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ok"] and result["median_ms"] > 0 and len(result["check"]) == 10
    failed = {"ok": False, "error": "RuntimeError: boom"}
    report = {"ceilings": {"ok": True, "gemm_gflops": 100.0, "copy_gbps": 10.0},
              "workloads": {"mlp_b1": {"neurenix_eager": result, "neurenix_compiled": result,
                                       "torch_eager": result, "onnxruntime": failed}}}
    header, rows = bench.summary_rows(report)
    assert len(rows[0]) == len(header)
    assert rows[0][header.index("onnxruntime ms")] == "error: RuntimeError: boom"
    assert "1.00x" in rows[0][header.index("compiled / best peer")]
    assert bench.render(header, rows, markdown=True).startswith("| workload |")


def test_training_rows_compare_whole_steps(modules):
    workloads, bench = modules
    train, infer = workloads.WORKLOADS["mlp_train_b64"], workloads.WORKLOADS["mlp_b64"]
    assert "torch_compile_step" in train.frameworks()
    assert "onnxruntime" not in train.frameworks()
    assert "torch_compile_step" not in infer.frameworks()
    assert "onnxruntime" in infer.frameworks()
    with pytest.raises(ValueError, match="not a training workload"):
        workloads.build_runner("mlp_b64", "torch_compile_step", tiny=True)
    header, rows = bench.compile_rows({"workloads": {"mlp_train_b64": {}}})
    assert len(rows[0]) == len(header) and "torch.compile whole step first call s" in header


def test_device_benchmark_runs(tmp_path):
    """benchmarks/devices.py at its smoke size, on the devices present (an absent one is
    reported in its table, not an error)."""
    import subprocess
    out = tmp_path / "devices.json"
    done = subprocess.run([sys.executable, str(BENCH / "devices.py"), "--tiny", "--only",
                           "overhead,mlp_b1", "--seconds", "0.05", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())


def test_gpu_benchmark_runs_on_opencl(tmp_path):
    """benchmarks/gpu.py end to end on OpenCL at its smoke size (torch on its CPU, eager only
    to stay quick): every cell measured, no Neurenix cell wrong."""
    import subprocess

    needs_device("opencl")
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--device", "opencl",
                           "--tiny", "--only", "mlp_b64,gemm", "--seconds", "0.05",
                           "--peers", "eager", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["tiny"] and report["env"]["device"] == "opencl"
    assert set(report["results"]) == {"mlp_b64", "gemm"}
    for name, cell in report["results"].items():
        assert cell["ok"] and cell["torch_device"] == "cpu", (name, cell)
        for framework in ("neurenix", "torch_eager"):
            assert cell[framework]["ok"], (name, framework, cell[framework])
            assert cell[framework]["s"] > 0
        assert cell["neurenix"]["err"] <= 1e-3
    assert "| mlp_b64 |" not in done.stdout and "mlp_b64" in done.stdout


def test_training_loops_benchmark_runs_on_neurenix_forms(tmp_path):
    """benchmarks/training_loops.py --smoke on the three Neurenix forms (eager loop, compiled
    module in the eager loop, compiled whole step): every cell measured, and every form's
    losses equal eager Neurenix's step by step."""
    import subprocess
    out = tmp_path / "loops.json"
    done = subprocess.run([sys.executable, str(BENCH / "training_loops.py"), "--smoke",
                           "--forms", "nx_eager,nx_module,nx_step", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"mlp_train_b64", "cnn_train", "lstm_train"}
    for name, cells in report["results"].items():
        for form in ("nx_eager", "nx_module", "nx_step"):
            cell = cells[form]
            assert cell["ok"] and cell["median_ms"] > 0, (name, form, cell.get("error"))
            assert cell["loss_error"] <= 1e-4 and cell["steps_compared"] >= 4, (name, form)
    assert "| mlp_train_b64 |" in done.stdout


def test_training_loops_passes_report_medians_and_paired_ratios(tmp_path):
    """--passes 2: every cell runs twice (order reversed on the second pass), keeps both
    medians and reports their median; a ratio is the median of the per-pass ratios."""
    import subprocess
    out = tmp_path / "loops.json"
    done = subprocess.run([sys.executable, str(BENCH / "training_loops.py"), "--smoke",
                           "--only", "mlp", "--forms", "nx_eager,nx_step", "--passes", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("pass 2)") == 2
    report = json.loads(out.read_text())
    assert report["passes"] == 2
    for cell in report["results"]["mlp_train_b64"].values():
        assert len(cell["pass_ms"]) == 2
        assert cell["median_ms"] == pytest.approx(np.median(cell["pass_ms"]))
    sys.path.insert(0, str(BENCH))
    try:
        loops = importlib.import_module("training_loops")
    finally:
        sys.path.remove(str(BENCH))
    a = {"median_ms": 2.0, "pass_ms": [1.0, 3.0]}
    b = {"median_ms": 1.5, "pass_ms": [1.0, 2.0]}
    assert loops.ratio_of(a, b) == pytest.approx(1.25)  # median of 1.0 and 1.5, not 2.0 / 1.5
    with pytest.raises(SystemExit):
        loops.parse_args(["--passes", "0"])


def test_export_benchmark_runs(tmp_path):
    """benchmarks/export.py --smoke: the MLP exported for the CPU, timed through the C API
    (benchmarks/c/time_model.c), runtime.load, neurenix.compile and PyTorch eager; every
    output checked against eager Neurenix."""
    import shutil
    import subprocess
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    out = tmp_path / "export.json"
    done = subprocess.run([sys.executable, str(BENCH / "export.py"), "--smoke", "--json",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    mlp = json.loads(out.read_text())["models"]["mlp"]
    assert mlp["artifacts"]["cpu"]["total"] > 0 and list(mlp["artifacts"]) == ["cpu"]
    assert mlp["c_api"]["ok"] and mlp["c_api"]["s"] > 0
    assert mlp["c_cold"]["process_s"] > 0
    for key in ("runtime_load", "neurenix_compile", "torch_eager"):
        assert mlp["python"][key]["ok"], (key, mlp["python"][key])
    assert "| mlp | cpu |" in done.stdout


def test_dynamic_shapes_benchmark_runs(tmp_path):
    """benchmarks/dynamic_shapes.py at its smallest: one model, two sizes, one round; the
    dynamic function compiles once and agrees with the static one (the script checks)."""
    import subprocess
    out = tmp_path / "dynamic.json"
    done = subprocess.run([sys.executable, str(BENCH / "dynamic_shapes.py"), "--only", "mlp",
                           "--modes", "infer", "--sizes", "2,3", "--rounds", "1", "--seconds",
                           "0.01", "--no-cv", "--json", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    cell = json.loads(out.read_text())["cells"]["mlp/infer"]
    assert cell["ok"]
    assert [cell["sizes"][s]["dyn_programs"] for s in ("2", "3")] == [1, 1]
    assert cell["sizes"]["2"]["dyn_compiled"] and not cell["sizes"]["3"]["dyn_compiled"]


def test_dynamic_products_benchmark_runs(tmp_path):
    """benchmarks/dynamic_products.py --quick: every product layout and the convolution at
    three shapes, one function each; from the second shape on it runs a dynamic program, and
    every output agrees with eager (the script checks, and fails otherwise)."""
    import subprocess
    out = tmp_path / "products.json"
    done = subprocess.run([sys.executable, str(BENCH / "dynamic_products.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert {r["case"] for r in rows} == {"a@b", "a.T@b", "a@b.T", "(a.T@b).T", "conv3x3"}
    for case in {r["case"] for r in rows}:
        mine = [r for r in rows if r["case"] == case]
        assert len(mine) == 3 and not mine[0]["dynamic"] and all(r["dynamic"] for r in mine[1:])
    assert max(r["error"] for r in rows) < 1e-4
