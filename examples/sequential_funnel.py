"""One Sequential model, compiled three times: batch-32 training, batch-32 and batch-1 inference.

A 5 -> 32 -> 16 -> 4 funnel learns four statistics of five N(0, 1) inputs (max, min,
mean, mean of squares). Calling the model on inputs of another batch size builds new graph
nodes over the *same* parameter Tensors, so every executable reads one parameter storage:
after the batch-32 training step has updated the weights, the batch-1 executable (compiled
before training) predicts with the trained weights, row for row as the batch-32 one.

    python examples/sequential_funnel.py [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import graphc as gc

BATCH = 32


def targets(x: np.ndarray) -> np.ndarray:
    """max, min, mean and mean of squares of each row: the four outputs to learn."""
    return np.stack([x.max(1), x.min(1), x.mean(1), (x * x).mean(1)], axis=1)


def build(seed: int = 0):
    """The model and its three executables: (model, train32, infer32, infer1)."""
    model = gc.nn.Sequential(
        [gc.nn.Dense(32, "relu"), gc.nn.Dense(16, "relu"), gc.nn.Dense(4)], seed=seed
    )
    x, y = gc.input("x", (BATCH, 5)), gc.input("y", (BATCH, 4))
    loss = gc.nn.mse_loss(model(x), y)
    optimizer = gc.optim.Adam(model.params(), lr=3e-3)
    train32 = gc.compile(inputs=[x, y], outputs=loss, updates=optimizer.updates(loss))
    rows = gc.input("rows", (BATCH, 5))
    infer32 = gc.compile(inputs=[rows], outputs=model(rows))
    row = gc.input("row", (1, 5))
    infer1 = gc.compile(inputs=[row], outputs=model(row))
    return model, train32, infer32, infer1


def run(steps: int = 3000, seed: int = 0, log=print) -> dict:
    """Train at batch 32, then compare batch-1 and batch-32 inference on the same rows."""
    model, train32, infer32, infer1 = build(seed)
    log("parameters (one storage each, shared by all three executables):")
    for p in model.params():
        log(f"  {p.name:<10} {p.type}")
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((BATCH, 5), dtype=np.float32)
    before = infer1(rows[:1])

    for step in range(1, steps + 1):
        x = rng.standard_normal((BATCH, 5), dtype=np.float32)
        loss = train32(x, targets(x))
        if step % 1000 == 0 or step == steps:
            log(f"step {step:>5}  training loss {float(loss):.5f}")

    batched = infer32(rows)
    one_by_one = np.concatenate([infer1(rows[i : i + 1]) for i in range(BATCH)])
    difference = float(np.abs(batched - one_by_one).max())
    after = one_by_one[:1]
    test_error = float(np.mean((batched - targets(rows)) ** 2))
    log(f"\nrow 0: {np.array2string(rows[0], precision=2)}")
    log(f"  targets (max, min, mean, mean x²): {np.array2string(targets(rows)[0], precision=3)}")
    log(f"  batch-1 executable before training: {np.array2string(before[0], precision=3)}")
    log(f"  batch-1 executable after training:  {np.array2string(after[0], precision=3)}")
    log(f"  batch-32 executable after training: {np.array2string(batched[0], precision=3)}")
    log(f"max |batch-1 - batch-32| over all {BATCH} rows: {difference:.2e}")
    log(f"mean squared error of the 32 rows: {test_error:.5f}")
    return {
        "before": before,
        "batched": batched,
        "one_by_one": one_by_one,
        "difference": difference,
        "test_error": test_error,
        "params": model.params(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="500 steps")
    args = parser.parse_args(argv)
    run(steps=500 if args.quick else args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
