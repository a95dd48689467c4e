"""gc.distributed: the allreduce op (MPI_Allreduce inside the compiled step) and optimizers
that average their gradients over the ranks of a communicator, in one process and under
`mpiexec -n 2` (the test extra installs mpi4py and the MPICH library)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

import graphc as gc

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install '.[mpi]')")
REPO = pathlib.Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    """The mpiexec of the MPI library mpi4py uses (the mpich wheel installs one with Python)."""
    beside = pathlib.Path(sysconfig.get_path("scripts")) / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install '.[mpi]' installs MPICH's)")
    return found


def run_ranks(ranks: int, *args: str, timeout: float = 120) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), GRAPHC_THREADS="1")
    result = subprocess.run(
        [mpiexec(), "-n", str(ranks), sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_data_parallel_training_equals_one_process_on_the_full_batch():
    """examples/data_parallel.py: two ranks on half the batch each, gradients averaged in the
    step, follow the single-process run on the whole batch (float64, to rounding)."""
    out = run_ranks(2, "examples/data_parallel.py")
    losses = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "loss" in line]
    assert len(losses) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-12)
    difference = float(out.split("difference:")[1])
    assert difference < 1e-12, out


def test_compiled_allreduce_sums_over_ranks_like_the_interpreter():
    script = textwrap.dedent(
        """
        import numpy as np, graphc as gc
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        for dtype in ("float32", "float64"):
            x = gc.input("x", (3, 5), dtype)
            total = gc.distributed.allreduce(x * 2.0, comm, "sum") + 1.0
            mean = gc.distributed.allreduce(x, comm)
            step = gc.compile(inputs=[x], outputs=[total, mean])
            xv = np.arange(15, dtype=dtype).reshape(3, 5) + comm.rank
            got = step(xv)
            want = gc.evaluate([total, mean], {x: xv})
            assert "allreduce" in step.kernels, step.kernels
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            np.testing.assert_array_equal(got[1], np.arange(15).reshape(3, 5) + 0.5)
        done = comm.gather(f"ok{comm.rank}")  # one print: ranks' outputs would interleave
        if comm.rank == 0:
            print(" ".join(done))
        """
    )
    out = run_ranks(2, "-c", script)
    assert out.split() == ["ok0", "ok1"]


def test_in_one_process_the_world_has_one_rank_and_averaging_changes_nothing():
    comm = MPI.COMM_WORLD
    assert comm.Get_size() == 1

    def train(allreduce):
        x = gc.input("x", (8, 3), "float64")
        w = gc.param("w", np.linspace(-1, 1, 6).reshape(3, 2))
        b = gc.param("b", np.zeros(2))
        loss = ((x @ w + b) ** 2).mean()
        optimizer = gc.optim.Adam([w, b], lr=0.1, allreduce=allreduce)
        step = gc.compile(inputs=[x], outputs=loss, updates=optimizer.updates(loss))
        xv = np.random.default_rng(0).normal(size=(8, 3))
        losses = [float(step(xv)) for _ in range(5)]
        return losses, w.value.copy(), b.value.copy()

    averaged, plain = train(comm), train(None)
    for a, p in zip(averaged, plain):
        np.testing.assert_array_equal(a, p)


def test_an_allreduce_names_what_is_wrong():
    x = gc.input("x", (2,), "float64")
    with pytest.raises(gc.GraphcError, match="mpi4py communicator"):
        gc.distributed.allreduce(x, comm="world")
    with pytest.raises(gc.GraphcError, match="'sum' or 'mean'"):
        gc.distributed.allreduce(x, MPI.COMM_WORLD, op="max")
    with pytest.raises(gc.DTypeError, match="float32 or float64"):
        gc.distributed.allreduce(gc.input("n", (2,), "int32"), MPI.COMM_WORLD)


def test_aot_refuses_a_step_that_calls_mpi(tmp_path):
    """An exported object needs only libc and libm: one calling MPI is refused by name."""
    x = gc.input("x", (4,), "float64")
    step = gc.compile(inputs=[x], outputs=gc.distributed.allreduce(x, MPI.COMM_WORLD))
    with pytest.raises(gc.CompileError, match="MPI_Allreduce"):
        gc.aot.export(step, tmp_path, name="reduced")
