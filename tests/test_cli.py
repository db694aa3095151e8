"""The neurenix-compile command: outputs, --check, and one-line errors for bad input."""
import json
import pathlib

import pytest

from neurenix.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_compiles_the_default_example(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(ROOT / "examples" / "mlp.py"), "-o", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "kernels:" in text and "check vs eager" in text and "ok" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [{"shape": [64, 784], "dtype": "float32"}]
    assert "matmul" in (out / "graph.txt").read_text()
    assert list(out.glob("forward.*"))


def _model_file(tmp_path, body: str) -> str:
    path = tmp_path / "model.py"
    path.write_text("import neurenix\nfrom neurenix import nn\n" + body)
    return str(path)


def test_build_function_is_accepted(tmp_path):
    path = _model_file(tmp_path, "def build():\n"
                                 "    return nn.Linear(3, 2), (neurenix.randn(4, 3),)\n")
    assert main([path, "-o", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize("body, message", [
    (None, "no such file"),
    ("x = 1\n", "define a module-level `model`"),
    ("model = 3\nexample_inputs = ()\n", "must be a neurenix.nn.Module"),
    ("model = nn.Linear(3, 2)\nexample_inputs = (neurenix.randn(4, 5),)\n",
     "forward raised ValueError: Linear"),
])
def test_bad_input_gives_one_line_and_exit_1(tmp_path, capsys, body, message):
    path = str(tmp_path / "missing.py") if body is None else _model_file(tmp_path, body)
    assert main([path, "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert "Traceback" not in err[0]
