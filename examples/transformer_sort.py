"""A small transformer that learns to sort a sequence of digits.

Each position of the output must name the digit of that rank in the input, so every
output depends on the whole sequence: a task for attention. The model is one
pre-LayerNorm encoder block over learned token and position embeddings:

    tokens (batch, 10) -> token embedding + position embedding (64 wide)
    -> TransformerEncoderLayer(64, 4 heads, FFN 128, dropout 0.1) -> LayerNorm -> dense 10

trained with AdamW (cosine decay with warm-up, global-norm clipping 1.0) on fresh random
sequences at every step, the whole step one compiled call. `--export DIR` writes the
trained sorter at batch 1 as a C object (DIR/transformer_sort.{o,h}).

    python examples/transformer_sort.py [--steps N] [--quick] [--export DIR]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import graphc as gc
from graphc.demo import ProgressBar

LENGTH, DIGITS, WIDTH, BATCH = 10, 10, 64, 64


class Sorter:
    """Token and position embeddings, then an encoder block and a per-position classifier."""

    def __init__(self, seed: int, dropout: float = 0.1):
        self.tokens = gc.nn.Embedding(DIGITS, WIDTH, seed=seed, name="tokens")
        self.positions = gc.nn.Embedding(LENGTH, WIDTH, seed=seed + 1, name="positions")
        self.encoder = gc.nn.Sequential(
            [
                gc.nn.TransformerEncoderLayer(WIDTH, 4, 2 * WIDTH, dropout=dropout),
                gc.nn.LayerNorm(),
                gc.nn.Dense(DIGITS),
            ],
            seed=seed + 2,
        )

    def __call__(self, tokens, training: bool = False) -> gc.Tensor:
        """Logits (batch, LENGTH, DIGITS) for integer tokens (batch, LENGTH)."""
        embedded = self.tokens(tokens) + self.positions(np.arange(LENGTH))
        return self.encoder(embedded, training=training)

    def params(self) -> list[gc.Tensor]:
        return self.tokens.params() + self.positions.params() + self.encoder.params()


def train_sorter(steps: int = 1500, lr: float = 3e-3, seed: int = 0, log=print, progress=True):
    """Train on fresh sequences; returns (model, token accuracy, sequence accuracy) on 2,000
    unseen test sequences."""
    model = Sorter(seed)
    tokens = gc.input("tokens", (BATCH, LENGTH), "int64")
    targets = gc.input("sorted", (BATCH, LENGTH), "int64")
    loss = gc.nn.softmax_cross_entropy(model(tokens, training=True), targets)
    schedule = gc.optim.cosine_decay(lr, steps, warmup=min(100, steps // 10))
    optimizer = gc.optim.AdamW(model.params(), lr=schedule, clip_norm=1.0)
    step = gc.compile(inputs=[tokens, targets], outputs=loss, updates=optimizer.updates(loss))
    rng = np.random.default_rng(seed)
    test = rng.integers(0, DIGITS, (2000, LENGTH))
    test_tokens = gc.input("test_tokens", test.shape, "int64")
    predict = gc.compile(inputs=[test_tokens], outputs=model(test_tokens).argmax(axis=-1))

    parameters = sum(p.size for p in model.params())
    log(f"sort {LENGTH} digits: one encoder block, width {WIDTH}, {parameters} parameters")
    log(f"AdamW lr {lr} (cosine decay), clip_norm 1.0, batch {BATCH}, {steps} steps")
    bar = ProgressBar(steps) if progress else None
    for i in range(1, steps + 1):
        batch = rng.integers(0, DIGITS, (BATCH, LENGTH))
        value = float(step(batch, np.sort(batch, axis=1)))
        if bar:
            bar.update(i, value)
    right = predict(test) == np.sort(test, axis=1)
    token_accuracy, sequence_accuracy = float(right.mean()), float(right.all(axis=1).mean())
    predicted = predict(test)
    for row in range(3):
        log(f"  {test[row]} -> {predicted[row]}")
    return model, token_accuracy, sequence_accuracy


def export(model: Sorter, directory) -> list:
    """Write the sorter at batch 1 (int64 tokens in, int64 sorted digits out) for C."""
    tokens = gc.input("tokens", (1, LENGTH), "int64")
    program = gc.Program([tokens], model(tokens).argmax(axis=-1), name="transformer_sort")
    return gc.aot.export(gc.compile(program), directory, name="transformer_sort")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="500 steps")
    parser.add_argument("--export", metavar="DIR", help="write the sorter for C to DIR")
    args = parser.parse_args(argv)
    model, tokens, sequences = train_sorter(steps=500 if args.quick else args.steps)
    print(f"test token accuracy {tokens:.4f}, whole sequences sorted {sequences:.4f}")
    if args.export:
        paths = export(model, args.export)
        print("exported " + " ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
