"""examples/sweep_dask.py: a sweep on a 2-worker LocalCluster of real worker processes, the
compiled steps shipped pickled and never compiled again on the workers."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphc.demo import build_max_of_five

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep_dask.py"


def test_a_seed_starts_from_the_weights_build_max_of_five_gives_it():
    example = runpy.run_path(str(EXAMPLE), run_name="example_sweep_dask")  # imports no dask
    built = build_max_of_five(seed=2, test_size=8).params()
    for ours, theirs in zip(example["initial_weights"](2), built, strict=True):
        np.testing.assert_array_equal(ours, theirs.value)


def test_the_sweep_runs_on_two_worker_processes_without_compiling_there(tmp_path):
    pytest.importorskip(
        "dask.distributed", reason="dask.distributed is not installed (pip install .[distributed])"
    )
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "300", "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "test squared error after 300 steps" in out
    rows = re.findall(r"^ +(\d\.\d{4})((?: +\d+\.\d{5}){5})$", out, flags=re.M)
    assert [lr for lr, _ in rows] == ["0.0003", "0.0010", "0.0030", "0.0100"]
    errors = np.array([[float(v) for v in cells.split()] for _, cells in rows])
    assert np.isfinite(errors).all() and (errors > 0).all()
    assert errors[-1, -1] < errors[0, -1]  # a larger lr learns faster in 300 steps
    assert "16 tasks in 2 worker processes; compiled on a worker: 0 of 16 tasks" in out
