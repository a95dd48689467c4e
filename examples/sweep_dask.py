"""A hyperparameter sweep on Dask: the max-of-five model, 4 learning rates x 4 seeds.

The training and test steps are compiled once, here in the client, with the learning rate a
scalar param (not a constant baked into the code). Each task receives them pickled, sets the
learning rate and its seed's initial weights, trains and returns the test error. Unpickling
on a worker with the client's CPU maps the compiled code without running LLVM (a worker on
another CPU compiles the graph again); the table reports both times per task.

    python examples/sweep_dask.py [--steps N] [--workers N] [--scheduler ADDRESS]

Without --scheduler it starts a LocalCluster of worker processes on this machine; with it, it
connects to a running cluster (`dask scheduler`, `dask worker ADDRESS`), whose workers need
graphc installed. Needs dask.distributed: `pip install -e '.[distributed]'`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time

import numpy as np

import graphc as gc
from graphc.demo import LR, WIDTHS, build_max_of_five, sample, train

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2, 3)
TEST_SIZE = 1000
COMPILE_TIMINGS = ("passes", "emit", "parse", "optimize", "codegen")  # Executable.timings


def initial_weights(seed: int) -> list[np.ndarray]:
    """The weights `build_max_of_five(seed)` starts from (a model built, nothing compiled)."""
    layers = [gc.nn.Dense(width, "relu") for width in WIDTHS[1:-1]] + [gc.nn.Dense(WIDTHS[-1])]
    model = gc.nn.Sequential(layers, seed=seed)
    model(gc.input("x", (1, WIDTHS[0])))
    return [p.value for p in model.params()]


def compile_seconds(*steps) -> float:
    """Seconds the steps' builds spent in graph passes, IR emission and LLVM."""
    return sum(step.timings.get(name, 0.0) for step in steps for name in COMPILE_TIMINGS)


def train_one(pickled: bytes, lr: float, seed: int, steps: int, test_x, test_y) -> dict:
    """A task: unpickle the compiled net (its own copy), set lr and weights, train, test."""
    start = time.perf_counter()
    net = pickle.loads(pickled)
    unpickled = time.perf_counter()
    net.optimizer.lr.value = lr
    for p, value in zip(net.params(), initial_weights(seed)):
        p.value = value
    train(net, steps, np.random.default_rng(seed))
    return {
        "lr": lr,
        "seed": seed,
        "test_error": net.test_error(test_x, test_y),
        "compile": compile_seconds(net.train, net.predict),
        "unpickle": unpickled - start,
        "train": time.perf_counter() - unpickled,
        "pid": os.getpid(),
    }


def table(results: list[dict], steps: int) -> str:
    """Test errors, one row per learning rate and one column per seed, and the timings."""
    error = {(r["lr"], r["seed"]): r["test_error"] for r in results}
    lines = [
        f"test squared error after {steps} steps (rows: learning rate, columns: seed)",
        f"{'lr':>8}" + "".join(f"{'seed ' + str(s):>10}" for s in SEEDS) + f"{'mean':>10}",
    ]
    for lr in LEARNING_RATES:
        row = [error[lr, s] for s in SEEDS]
        cells = "".join(f"{e:>10.5f}" for e in row)
        lines.append(f"{lr:>8.4f}{cells}{np.mean(row):>10.5f}")
    compiled = sum(r["compile"] > 0 for r in results)
    workers = len({r["pid"] for r in results})
    unpickle = 1e3 * statistics.median(r["unpickle"] for r in results)
    training = statistics.median(r["train"] for r in results)
    lines += [
        f"{len(results)} tasks in {workers} worker processes; compiled on a worker: "
        f"{compiled} of {len(results)} tasks (compile time per task, max: "
        f"{1e3 * max(r['compile'] for r in results):.1f} ms)",
        f"per task, median: unpickling {unpickle:.1f} ms, training {training:.3f} s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="training steps per task")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    args = parser.parse_args(argv)
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        sys.exit("this example needs dask.distributed: pip install -e '.[distributed]'")

    start = time.perf_counter()
    lr = gc.param("lr", np.float32(LR))
    net = build_max_of_five(seed=SEEDS[0], lr=lr, test_size=TEST_SIZE)
    print(
        f"compiled once, here: {compile_seconds(net.train, net.predict):.2f} s of compile, "
        f"{time.perf_counter() - start:.2f} s in all"
    )
    pickled = pickle.dumps(net)  # the steps, their code for this CPU, the fresh Adam state
    test_x, test_y = sample(np.random.default_rng(12345), TEST_SIZE)

    if args.scheduler:
        client, cluster = Client(args.scheduler), None
    else:
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        client.wait_for_workers(args.workers)
    try:
        shared = client.scatter([pickled, test_x, test_y], broadcast=True)
        tasks = [
            client.submit(train_one, shared[0], rate, seed, args.steps, shared[1], shared[2])
            for rate in LEARNING_RATES
            for seed in SEEDS
        ]
        print(table(client.gather(tasks), args.steps))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
