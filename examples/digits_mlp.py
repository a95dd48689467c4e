"""A two-layer softmax network on scikit-learn's 8×8 digits, trained with SGD.

The classic MNIST homework at a size that runs in seconds: 64 pixels -> hidden ReLU layer
-> 10 logits, softmax cross-entropy with integer labels, minibatch SGD with momentum. The
1,797 digits ship with scikit-learn (`sklearn.datasets.load_digits`, no download); without
scikit-learn the example says so and exits 0 (`pip install graphc[examples]`).

    python examples/digits_mlp.py [--epochs N] [--hidden H] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import graphc as gc

BATCH = 32


def load(seed: int, test_fraction: float = 0.2):
    """(train_x, train_y, test_x, test_y): pixels scaled to [0, 1], a seeded shuffle split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_digits(epochs: int = 30, hidden: int = 64, lr: float = 0.02, seed: int = 0, log=print):
    """Train the network; returns the test accuracy after the last epoch."""
    train_x, train_y, test_x, test_y = load(seed)
    x, labels = gc.input("pixels", (BATCH, 64)), gc.input("labels", (BATCH,), "int64")
    model = gc.nn.Sequential([gc.nn.Dense(hidden, "relu"), gc.nn.Dense(10)], seed=seed)
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    optimizer = gc.optim.SGD(model.params(), lr=lr, momentum=0.9)
    step = gc.compile(inputs=[x, labels], outputs=loss, updates=optimizer.updates(loss))
    # one executable for the whole test set; it reads the weights the training step updates
    test_pixels = gc.input("test_pixels", test_x.shape)
    classify = gc.compile(inputs=[test_pixels], outputs=model(test_pixels))

    log(f"{len(train_x)} training and {len(test_x)} test digits; 64 -> {hidden} -> 10")
    log(f"SGD lr {lr} momentum 0.9, batch {BATCH}, {epochs} epochs")
    rng = np.random.default_rng(seed)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(train_x))
        losses = [
            float(step(train_x[batch], train_y[batch]))
            for batch in order[: len(order) // BATCH * BATCH].reshape(-1, BATCH)
        ]
        accuracy = float(np.mean(classify(test_x).argmax(axis=1) == test_y))
        if epoch % 5 == 0 or epoch == epochs:
            log(f"epoch {epoch:>3}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.4f}")
    return accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="10 epochs")
    args = parser.parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("digits_mlp needs scikit-learn for its bundled digits: pip install scikit-learn")
        return 0
    accuracy = train_digits(epochs=10 if args.quick else args.epochs, hidden=args.hidden)
    print(f"final test accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
