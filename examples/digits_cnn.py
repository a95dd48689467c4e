"""A small CNN on scikit-learn's 8×8 digits, trained with AdamW, then exported for C.

    conv 3×3·16 -> batch norm -> ReLU -> conv 3×3·32 -> batch norm -> ReLU -> max-pool 2
    -> flatten -> dropout 0.3 -> dense 10, softmax cross-entropy

The training step (forward, backward, AdamW with cosine decay, and the batch norms'
running statistics) is one compiled call; the classifier of the test set is a second
executable of the same model, reading the weights and running statistics the step
updates. `--export DIR` also writes the trained classifier at batch 1 as a C object
(DIR/digits_cnn.{o,h}) and the test digits (DIR/digits_test.bin), which
examples/aot_digits_cnn/main.c classifies without Python. Without scikit-learn the
example says so and exits 0 (`pip install '.[examples]'`).

    python examples/digits_cnn.py [--epochs N] [--quick] [--export DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import graphc as gc
from graphc.demo import ProgressBar

BATCH = 32


def load(seed: int, test_fraction: float = 0.2):
    """(train_x, train_y, test_x, test_y): images (N, 1, 8, 8) in [0, 1], a seeded split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def cnn(seed: int) -> gc.nn.Sequential:
    return gc.nn.Sequential(
        [
            gc.nn.Conv2D(16, 3, padding=1),
            gc.nn.BatchNorm(),
            gc.relu,
            gc.nn.Conv2D(32, 3, padding=1),
            gc.nn.BatchNorm(),
            gc.relu,
            gc.nn.MaxPool2D(2),
            gc.nn.Flatten(),
            gc.nn.Dropout(0.3),
            gc.nn.Dense(10),
        ],
        seed=seed,
        name="cnn",
    )


def train_digits(epochs: int = 20, lr: float = 3e-3, seed: int = 0, log=print, progress=True):
    """Train the CNN; returns (model, test accuracy after the last epoch, the test set)."""
    train_x, train_y, test_x, test_y = load(seed)
    x, labels = gc.input("images", (BATCH, 1, 8, 8)), gc.input("labels", (BATCH,), "int64")
    model = cnn(seed)
    loss = gc.nn.softmax_cross_entropy(model(x, training=True), labels)
    batches = len(train_x) // BATCH
    schedule = gc.optim.cosine_decay(lr, epochs * batches, warmup=batches)
    optimizer = gc.optim.AdamW(model.params(), lr=schedule)
    # the optimizer's updates and the batch norms' running statistics, in one step
    updates = {**optimizer.updates(loss), **model.state_updates()}
    step = gc.compile(inputs=[x, labels], outputs=loss, updates=updates)
    test_images = gc.input("test_images", test_x.shape)
    classify = gc.compile(inputs=[test_images], outputs=model(test_images))

    log(f"{len(train_x)} training and {len(test_x)} test digits; {model}")
    log(f"AdamW lr {lr} (cosine decay, warm-up 1 epoch), batch {BATCH}, {epochs} epochs")
    bar = ProgressBar(epochs * batches) if progress else None
    rng = np.random.default_rng(seed)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(train_x))[: batches * BATCH].reshape(batches, BATCH)
        losses = []
        for i, batch in enumerate(order):
            losses.append(float(step(train_x[batch], train_y[batch])))
            if bar:
                bar.update((epoch - 1) * batches + i + 1, losses[-1])
        accuracy = float(np.mean(classify(test_x).argmax(axis=1) == test_y))
        if epoch % 5 == 0 or epoch == epochs:
            line = f"epoch {epoch:>3}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.4f}"
            log(f"\r{line:<76}" if bar else line)  # over the bar's line; the bar redraws below
    return model, accuracy, (test_x, test_y)


def export(model, test_x, test_y, directory) -> float:
    """Write the classifier at batch 1 (its trained weights and running statistics
    embedded) as DIR/digits_cnn.{o,h}, and the test set as DIR/digits_test.bin (int32
    count, float32 images count×64, uint8 labels); returns the exported program's test
    accuracy, as the C example computes it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image = gc.input("image", (1, 1, 8, 8))
    classifier = gc.compile(gc.Program([image], model(image), name="digits_cnn"))
    gc.aot.export(classifier, directory, name="digits_cnn")
    with open(directory / "digits_test.bin", "wb") as file:
        np.array([len(test_x)], np.int32).tofile(file)
        test_x.astype(np.float32).tofile(file)
        test_y.astype(np.uint8).tofile(file)
    predictions = [int(classifier(pixels[None]).argmax()) for pixels in test_x]
    return float(np.mean(np.array(predictions) == test_y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 epochs")
    parser.add_argument("--export", metavar="DIR", help="write the classifier for C to DIR")
    args = parser.parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("digits_cnn needs scikit-learn for its bundled digits: pip install scikit-learn")
        return 0
    model, accuracy, (test_x, test_y) = train_digits(epochs=5 if args.quick else args.epochs)
    print(f"final test accuracy: {accuracy:.4f}")
    if args.export:
        exported = export(model, test_x, test_y, args.export)
        print(f"exported to {args.export}: digits_cnn.o, digits_cnn.h, digits_test.bin")
        print(f"the exported classifier at batch 1: test accuracy {exported:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
