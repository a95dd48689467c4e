"""RLtools' "max of five": a 5-32-16-1 ReLU MLP learns the max of five N(0, 1) inputs.

Adam (lr 1e-3), batch 32, mean squared error, seeded. The whole training step (forward,
backward and the Adam update) is one compiled call; a second executable for the test set
shares the weights. The model is `graphc.demo.build_max_of_five`, which `graphc demo` uses.

    python examples/max_of_five.py [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from graphc.demo import TEST_SIZE, build_max_of_five, sample, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="training steps")
    parser.add_argument("--quick", action="store_true", help="1000 steps only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = 1000 if args.quick else args.steps

    net = build_max_of_five(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    test_x, test_y = sample(rng, TEST_SIZE)
    print(f"step {0:>6}  test squared error {net.test_error(test_x, test_y):.5f}")
    recent = []

    def report(step, loss):
        recent.append(loss)
        if step % 1000 == 0 or step == steps:
            error = net.test_error(test_x, test_y)
            print(
                f"step {step:>6}  test squared error {error:.5f}"
                f"  (training loss, mean of the last {len(recent)} steps: {np.mean(recent):.5f})"
            )
            recent.clear()

    train(net, steps, rng, on_step=report)
    print("\nten test inputs, their max and the network's prediction:")
    predictions = net.predict(test_x)[:10, 0]
    for row, truth, guess in zip(test_x[:10], test_y[:10, 0], predictions):
        inputs = " ".join(f"{v:6.2f}" for v in row)
        print(f"  [{inputs}]  max {truth:6.3f}  predicted {guess:6.3f}  error {guess - truth:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
