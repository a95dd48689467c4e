"""Build the max-of-five MLP and export a training step and a predictor for C (examples/aot_c).

    python export_model.py build/        # build/{mlp_train,mlp_predict}.{o,h}, lib*.so

Both programs are built from one model, so they start from the same weights; the C program
trains with `mlp_train`, then copies the weights into `mlp_predict`'s memory through the
state accessors. The functions also serve as CLI specs:

    graphc aot export_model.py:train_step -o build/ --name mlp_train
"""

from __future__ import annotations

import sys

import graphc as gc

BATCH, FEATURES, DTYPE = 8, 5, "float64"


def programs(batch: int = BATCH) -> tuple[gc.Program, gc.Program]:
    """(training step, predictor) over one 5-16-1 MLP (float64, Adam, seed 0)."""
    x = gc.input("x", (batch, FEATURES), DTYPE)
    y = gc.input("y", (batch, 1), DTYPE)
    model = gc.nn.MLP(16, 2, 1, seed=0, dtype=DTYPE, name="mlp")
    prediction = model(x)
    loss = gc.nn.mse_loss(prediction, y)
    optimizer = gc.optim.Adam(model.params(), lr=1e-2)
    train = gc.Program([x, y], loss, optimizer.updates(loss), name="mlp_train")
    predict = gc.Program([x], prediction, name="mlp_predict")
    return train, predict


def train_step() -> gc.Program:
    return programs()[0]


def predict() -> gc.Program:
    return programs()[1]


def main(directory: str) -> None:
    for program in programs():
        paths = gc.aot.export(gc.compile(program), directory, name=program.name)
        print(" ".join(str(p) for p in paths))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build")
