"""The examples in examples/ run to completion and do what they claim."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_train_simple_example_reduces_the_loss():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_simple.py"),
                             "--epochs", "60"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loss" in result.stdout and "->" in result.stdout
