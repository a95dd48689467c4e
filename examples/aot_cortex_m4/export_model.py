"""Export the max-of-five MLP (graphc/demo.py) for a Cortex-M4F: a training step and a predictor.

    python export_model.py build/      # build/max_of_five_{train,predict}.{o,h}

Both are freestanding objects (target thumbv7em-none-eabihf): no libm, no allocation, no
threads; the C program gives each its memory block as a static array. The same exports
from the command line:

    graphc aot export_model.py:train_step -o build/ --target thumbv7em-none-eabihf
"""

from __future__ import annotations

import sys

import graphc as gc
from graphc.demo import build_max_of_five

TARGET = "thumbv7em-none-eabihf"
BATCH, PREDICT_ROWS = 32, 4


def executables():
    """(training step, predictor) of one model: float32, Adam, seed 0."""
    net = build_max_of_five(seed=0, batch=BATCH, test_size=PREDICT_ROWS)
    return net.train, net.predict


def train_step():
    return executables()[0]


def predict():
    return executables()[1]


def main(directory: str) -> None:
    for executable in executables():
        paths = gc.aot.export(executable, directory, target=TARGET)
        print(" ".join(str(p) for p in paths if p is not None))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build")
