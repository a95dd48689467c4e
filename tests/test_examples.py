"""The examples in examples/, each run in quick mode through its main(argv), plus the
claims they illustrate: digits accuracy, and one Sequential model compiled at batch 1 and
batch 32 sharing trained weights."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
