"""The examples in examples/, each run in quick mode through its main(argv), plus the
claims they illustrate: digits accuracy (MLP and CNN, the CNN also from C), one Sequential
model compiled at batch 1 and batch 32 sharing trained weights, a transformer that sorts."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name: str) -> dict:
    """The globals of examples/<name>.py, run as a module (not as __main__)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


def test_max_of_five_quick(capsys):
    assert load("max_of_five")["main"](["--quick"]) == 0
    out = capsys.readouterr().out
    assert "step   1000  test squared error" in out
    assert out.count("predicted") == 10


def test_max_of_five_steps_flag(capsys):
    assert load("max_of_five")["main"](["--steps", "300"]) == 0
    assert "step    300  test squared error" in capsys.readouterr().out


def test_autograd_tour_prints_the_worked_values(capsys):
    assert load("autograd_tour")["main"]([]) == 0
    out = capsys.readouterr().out
    assert "y          = 11.652071455223" in out
    assert out.count("dy/dx1     = 5.500000000000") == 2  # reverse and forward
    assert out.count("dy/dx2     = 1.716337814537") == 2
    for value in ("0.25", "4.65", "14.415", "[18.6]", "dloss/dw   = 150.48652"):
        assert value in out
    assert '%"grad(x1)": f64[] = add' in out  # the printed adjoint graph


def test_digits_mlp_quick(capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install .[examples])")
    assert load("digits_mlp")["main"](["--quick"]) == 0
    assert "final test accuracy" in capsys.readouterr().out


def test_digits_mlp_accuracy_above_088():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install .[examples])")
    accuracy = load("digits_mlp")["train_digits"](epochs=10, log=lambda *_: None)
    assert accuracy > 0.88  # 0.98 here


def test_digits_mlp_without_sklearn_exits_0(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert load("digits_mlp")["main"](["--quick"]) == 0
    assert "needs scikit-learn" in capsys.readouterr().out


def test_sequential_funnel_quick(capsys):
    assert load("sequential_funnel")["main"](["--quick"]) == 0
    assert "max |batch-1 - batch-32| over all 32 rows" in capsys.readouterr().out


def test_sequential_batch_1_and_32_share_trained_weights():
    result = load("sequential_funnel")["run"](steps=500, log=lambda *_: None)
    # the same rows give the same outputs at batch 1 and batch 32
    np.testing.assert_allclose(result["one_by_one"], result["batched"], rtol=1e-5, atol=1e-6)
    # the batch-1 executable, compiled before training, sees the trained weights
    assert np.abs(result["one_by_one"][:1] - result["before"]).max() > 0.1
    assert result["test_error"] < 0.1


def _accuracy(text: str, label: str) -> float:
    """The number after `label` in an example's output."""
    return float(text.split(label, 1)[1].split()[0].rstrip(","))


def test_digits_cnn_quick_reaches_097(capsys):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install .[examples])")
    assert load("digits_cnn")["main"](["--quick"]) == 0
    captured = capsys.readouterr()
    assert _accuracy(captured.out, "final test accuracy:") >= 0.97  # 0.98 here
    assert "220/220" in captured.err  # the progress bar


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_digits_cnn_c_example_classifies_as_the_jit(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install .[examples])")
    build = tmp_path / "build"
    make = ["make", "-C", str(EXAMPLES / "aot_digits_cnn"), f"BUILD={build}"]
    arguments = [f"PYTHON={sys.executable}", "TRAIN=--quick", "run"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        make + arguments, check=True, capture_output=True, text=True, env=environment
    )
    jit = _accuracy(result.stdout, "the exported classifier at batch 1: test accuracy")
    assert _accuracy(result.stdout, "test digits right: accuracy") == jit >= 0.97
    assert "digit 0: label" in result.stdout


def test_transformer_sort_quick_reaches_095_and_exports(capsys, tmp_path):
    assert load("transformer_sort")["main"](["--quick", "--export", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert _accuracy(captured.out, "test token accuracy") >= 0.95  # 0.999 here (quick)
    assert "500/500" in captured.err
    header = (tmp_path / "transformer_sort.h").read_text()
    assert "void transformer_sort_run(void *mem, const int64_t *tokens, int64_t *out0);" in header
