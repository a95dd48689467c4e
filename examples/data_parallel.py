"""Data-parallel training over MPI: each rank trains on its slice of the batch, and the
gradients are averaged across ranks inside the compiled step (one MPI_Allreduce per step).

    mpiexec -n 2 python examples/data_parallel.py            # train, compare, print
    mpiexec -n 2 python examples/data_parallel.py --bench    # per-step times, W1-B and W5

The model is the max-of-five MLP (5-32-16-1, float64, Adam). The full batch of 64 rows is
split evenly over the ranks; with equal slices the mean of the slices' mean losses is the
full batch's mean loss, so every rank's weights follow exactly the single-process run on
the full batch (up to the order of the sums). Rank 0 trains that single-process run too,
and prints how far apart the two are.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from mpi4py import MPI

import graphc as gc

BATCH, STEPS = 64, 200


def max_of_five_step(rows: int, comm=None, seed: int = 0):
    """The training step on `rows` rows: gradients averaged over `comm` when given."""
    x = gc.input("x", (rows, 5), "float64")
    y = gc.input("y", (rows, 1), "float64")
    model = gc.nn.MLP(32, 3, 1, "relu", seed=seed, dtype="float64", name="mlp")
    loss = gc.nn.mse_loss(model(x), y)
    optimizer = gc.optim.Adam(model.params(), lr=3e-3, allreduce=comm)
    return gc.compile(inputs=[x, y], outputs=loss, updates=optimizer.updates(loss)), model


def data(steps: int):
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1, 1, (steps, BATCH, 5))
    return xs, xs.max(axis=2, keepdims=True)


def train(comm) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    if BATCH % size:
        raise SystemExit(f"the batch of {BATCH} rows does not split over {size} ranks")
    rows = BATCH // size
    step, model = max_of_five_step(rows, comm)
    xs, ys = data(STEPS)
    mine = slice(rank * rows, (rank + 1) * rows)
    for x, y in zip(xs, ys):
        loss = step(x[mine], y[mine])
    total = comm.allreduce(float(loss), MPI.SUM) / size
    weights = np.concatenate([p.value.ravel() for p in model.params()])
    if rank == 0:
        single, reference = max_of_five_step(BATCH)
        for x, y in zip(xs, ys):
            single_loss = single(x, y)
        expected = np.concatenate([p.value.ravel() for p in reference.params()])
        difference = np.max(np.abs(weights - expected) / (np.abs(expected) + 1e-12))
        print(f"{size} ranks x {rows} rows, {STEPS} steps: loss {total:.6g}")
        print(f"one process, {BATCH} rows: loss {float(single_loss):.6g}")
        print(f"weights, largest relative difference: {difference:.2e}")


def bench(comm) -> None:
    """Per-step time of W1-B (64-256-256-1, batch 256, float32, Adam) and W5 (784-100-10,
    batch 100, SGD) with the gradient all-reduce, against the same step without it."""
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    rows = []
    for label, sizes, batch, make in [
        ("W1-B", (64, 256, 256, 1), 256, lambda p, c: gc.optim.Adam(p, 1e-3, allreduce=c)),
        ("W5", (784, 100, 10), 100, lambda p, c: gc.optim.SGD(p, 0.01, allreduce=c)),
    ]:
        times = []
        for with_comm in (None, comm):
            x = gc.input("x", (batch, sizes[0]))
            y = gc.input("y", (batch, sizes[-1]))
            layers = [gc.nn.Dense(n, "relu", seed=0) for n in sizes[1:-1]]
            model = gc.nn.Sequential([*layers, gc.nn.Dense(sizes[-1], seed=0)])
            loss = gc.nn.mse_loss(model(x), y)
            step = gc.compile(
                inputs=[x, y], outputs=loss, updates=make(model.params(), with_comm).updates(loss)
            )
            xv = rng.standard_normal((batch, sizes[0])).astype(np.float32)
            yv = rng.standard_normal((batch, sizes[-1])).astype(np.float32)
            for _ in range(20):
                step(xv, yv)
            comm.Barrier()
            start, count = time.perf_counter(), 200
            for _ in range(count):
                step(xv, yv)
            times.append((time.perf_counter() - start) / count)
        rows.append((label, *times))
    if rank == 0:
        for label, alone, reduced in rows:
            print(
                f"{label}: {size} rank(s), per step {reduced * 1e6:8.1f} us with the all-reduce, "
                f"{alone * 1e6:8.1f} us without"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="time W1-B and W5 steps instead")
    args = parser.parse_args()
    (bench if args.bench else train)(MPI.COMM_WORLD)


if __name__ == "__main__":
    main()
