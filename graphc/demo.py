"""`graphc demo`: RLtools' "max of five" MLP, trained and timed (DESIGN §7).

A 5-32-16-1 ReLU MLP learns y = max(x1, ..., x5) of five N(0, 1) inputs with Adam
(lr 1e-3, batch 32, mean squared error). The demo compiles the whole training step
(forward, backward and Adam in one native call), trains with a progress bar, reports the
test error and the throughput, and then times that same step in

    graphc          the compiled Executable
    NumPy           hand-written forward, backward and Adam (`NumpyMaxOfFive`), always
    PyTorch eager   torch.nn + torch.optim.Adam, when torch is importable
    jax.jit         jax.value_and_grad + a hand-written Adam under one jit, when jax is

as the median µs per step over many steps on one fixed batch. `--steps-per-call K` also
compiles the step with `gc.compile(..., steps=K)` (K steps in one native call, on batches
stacked K deep), trains with it, and times it per step beside the one-step call. The model
lives here, not in
examples/, because `pip install .` installs only the package; examples/max_of_five.py
reuses `build_max_of_five` and `sample`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

import graphc as gc

WIDTHS = (5, 32, 16, 1)
BATCH = 32
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-7
TEST_SIZE = 1000


def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows of five N(0, 1) inputs (float32) and their max, of shape (n, 1)."""
    x = rng.standard_normal((n, WIDTHS[0]), dtype=np.float32)
    return x, x.max(axis=1, keepdims=True)


@dataclass
class MaxOfFive:
    """The model, its optimizer, and the compiled training and test steps (shared weights)."""

    model: gc.nn.Sequential
    optimizer: gc.optim.Adam
    train: object  # Executable: (x[32,5], y[32,1]) -> loss, updates params and Adam state
    predict: object  # Executable: x[test_size,5] -> prediction[test_size,1]
    train_k: object = None  # with steps_per_call K > 1: (x[K,32,5], y[K,32,1]) -> loss[K]

    def params(self) -> list[gc.Tensor]:
        return self.model.params()

    def test_error(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean squared error of the current weights on a test set."""
        return float(np.mean((self.predict(x) - y) ** 2))


def build_max_of_five(
    seed: int = 0,
    batch: int = BATCH,
    lr: float = LR,
    test_size: int = TEST_SIZE,
    steps_per_call: int = 1,
) -> MaxOfFive:
    """Build the 5-32-16-1 ReLU MLP with Adam and compile its training and test steps (and,
    for `steps_per_call` K > 1, the training step K times per call, on the same weights)."""
    x, y = gc.input("x", (batch, WIDTHS[0])), gc.input("y", (batch, 1))
    layers = [gc.nn.Dense(width, "relu") for width in WIDTHS[1:-1]] + [gc.nn.Dense(WIDTHS[-1])]
    model = gc.nn.Sequential(layers, seed=seed)
    loss = gc.nn.mse_loss(model(x), y)
    optimizer = gc.optim.Adam(model.params(), lr=lr, betas=BETAS, eps=EPS)
    program = gc.Program([x, y], loss, optimizer.updates(loss), name="max_of_five_train")
    train = gc.compile(program)
    train_k = gc.compile(program, steps=steps_per_call) if steps_per_call != 1 else None
    x_test = gc.input("x_test", (test_size, WIDTHS[0]))
    predict = gc.compile(inputs=[x_test], outputs=model(x_test), name="max_of_five_predict")
    return MaxOfFive(model, optimizer, train, predict, train_k)


def train(net: MaxOfFive, steps: int, rng: np.random.Generator, on_step=None) -> float:
    """Run `steps` training steps on fresh batches; returns the mean loss of the last 100.

    `on_step(step, loss)` is called after every step (for progress bars and reports). With
    `net.train_k` (K steps per call), K steps run per call while K are left, then one a call.
    """
    batch = net.train.graph.inputs[0].shape[0]
    per_call = net.train_k.steps if net.train_k is not None else 1
    chunk = 1000 * per_call  # draw the data for many steps at once: a draw costs more than a step
    losses = []
    for start in range(0, steps, chunk):
        xs = rng.standard_normal((min(chunk, steps - start), batch, WIDTHS[0]), dtype=np.float32)
        ys = xs.max(axis=2, keepdims=True)
        i = 0
        while i < len(xs):
            if len(xs) - i >= per_call > 1:
                called = net.train_k(xs[i : i + per_call], ys[i : i + per_call])
            else:
                called = [net.train(xs[i], ys[i])]
            for loss in map(float, called):
                losses.append(loss)
                i += 1
                if on_step is not None:
                    on_step(start + i, loss)
    return float(np.mean(losses[-100:])) if losses else float("nan")


# ---- the same step in NumPy -----------------------------------------------------------------


class NumpyMaxOfFive:
    """The training step written by hand in vectorized NumPy: forward, backward, Adam.

    `params` is [w1, b1, w2, b2, w3, b3] with w of shape (in, out), as in `gc.nn.Dense`;
    the arrays are copied. Arithmetic is in the params' dtype, like the compiled step.
    """

    def __init__(self, params, lr: float = LR, betas=BETAS, eps: float = EPS):
        self.params = [np.array(p, copy=True) for p in params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0
        self.lr, self.betas, self.eps = lr, betas, eps

    def loss_and_grads(self, x, y) -> tuple[float, list[np.ndarray]]:
        """mean((mlp(x) - y)²) and its gradient for every parameter."""
        w1, b1, w2, b2, w3, b3 = self.params
        h1 = np.maximum(x @ w1 + b1, 0)
        h2 = np.maximum(h1 @ w2 + b2, 0)
        error = h2 @ w3 + b3 - y
        loss = np.mean(error * error)
        g_out = (2 / error.size) * error  # d loss / d prediction
        g_h2 = (g_out @ w3.T) * (h2 > 0)  # through dense3, then relu
        g_h1 = (g_h2 @ w2.T) * (h1 > 0)
        grads = [x.T @ g_h1, g_h1.sum(0), h1.T @ g_h2, g_h2.sum(0), h2.T @ g_out, g_out.sum(0)]
        return float(loss), [g.astype(p.dtype, copy=False) for g, p in zip(grads, self.params)]

    def step(self, x, y) -> float:
        """One Adam step in place (bias-corrected, as `gc.optim.Adam`); returns the loss."""
        loss, grads = self.loss_and_grads(x, y)
        b1, b2 = self.betas
        self.t += 1
        correction1, correction2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
        return loss


# ---- the same step in PyTorch and JAX, when installed ---------------------------------------


def torch_step(params, lr: float = LR):
    """A PyTorch-eager training step (nn.Sequential + optim.Adam) from the same weights."""
    import torch

    torch.set_num_threads(1)  # like graphc; at this size more threads only add synchronization
    linears = []
    for w, b in zip(params[::2], params[1::2]):
        layer = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            layer.bias.copy_(torch.from_numpy(b))
        linears.append(layer)
    model = torch.nn.Sequential(
        linears[0], torch.nn.ReLU(), linears[1], torch.nn.ReLU(), linears[2]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, eps=EPS)

    def step(x, y) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, torch.from_numpy


def jax_step(params, lr: float = LR):
    """A jax.jit training step (value_and_grad + Adam in one jitted function)."""
    import jax
    import jax.numpy as jnp

    b1, b2 = BETAS

    def loss_fn(weights, x, y):
        w1, c1, w2, c2, w3, c3 = weights
        h = jnp.maximum(x @ w1 + c1, 0)
        h = jnp.maximum(h @ w2 + c2, 0)
        return jnp.mean((h @ w3 + c3 - y) ** 2)

    @jax.jit
    def update(weights, m, v, t, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(weights, x, y)
        t = t + 1
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        weights = [
            w - lr * (mi / (1 - b1**t)) / (jnp.sqrt(vi / (1 - b2**t)) + EPS)
            for w, mi, vi in zip(weights, m, v)
        ]
        return weights, m, v, t, loss

    state = [
        [jnp.asarray(p) for p in params],
        [jnp.zeros_like(p) for p in params],
        [jnp.zeros_like(p) for p in params],
        jnp.float32(0),
    ]

    def step(x, y):
        *state[:], loss = update(*state, x, y)  # new weights, moments and step count
        return loss.block_until_ready()

    return step, jnp.asarray


# ---- timing ---------------------------------------------------------------------------------


def median_step_us(step, x, y, seconds: float, block: int = 10) -> float:
    """Median over blocks of `block` calls of the time per call, in µs, for about `seconds`."""
    for _ in range(3 * block):  # warm up: caches, jit tracing, allocator
        step(x, y)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(block):
            step(x, y)
        times.append((time.perf_counter() - start) / block)
    return float(np.median(times)) * 1e6


def time_training_step(net: MaxOfFive, seconds: float = 1.0, seed: int = 1) -> list[tuple]:
    """(implementation, µs per step or None, note) for each implementation of the step."""
    x, y = sample(np.random.default_rng(seed), net.train.graph.inputs[0].shape[0])
    weights = [p.value.copy() for p in net.params()]  # before graphc's timing trains them
    rows = [("graphc (compiled)", median_step_us(net.train, x, y, seconds), "")]
    if net.train_k is not None:  # the same batch K times, one call: µs per step
        k = net.train_k.steps
        xs, ys = np.stack([x] * k), np.stack([y] * k)
        rows.append(
            (f"graphc ({k} steps/call)", median_step_us(net.train_k, xs, ys, seconds) / k, "")
        )
    rows.append(
        ("NumPy (hand-written)", median_step_us(NumpyMaxOfFive(weights).step, x, y, seconds), "")
    )
    for label, module, make in (
        ("PyTorch (eager)", "torch", torch_step),
        ("jax.jit", "jax", jax_step),
    ):
        try:
            step, convert = make(weights)
        except ImportError:
            rows.append((label, None, f"{module} is not installed: skipped"))
            continue
        rows.append((label, median_step_us(step, convert(x), convert(y), seconds), ""))
    return rows


def format_table(rows) -> str:
    """The timing rows as a text table with graphc's speed-up over each implementation."""
    graphc_us = rows[0][1]
    lines = [
        f"{'training step (batch 32)':<24} {'µs/step':>9} {'graphc speed-up':>16}",
        f"{'-' * 24} {'-' * 9} {'-' * 16}",
    ]
    for label, micros, note in rows:
        if micros is None:
            lines.append(f"{label:<24} {note}")
        else:
            lines.append(f"{label:<24} {micros:9.1f} {micros / graphc_us:15.1f}x")
    return "\n".join(lines)


class ProgressBar:
    """A one-line text progress bar, redrawn with '\\r' at most every `interval` seconds."""

    def __init__(self, total: int, stream=None, width: int = 30, interval: float = 0.1):
        self.total, self.width, self.interval = total, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.last_draw = self.start  # first drawn after `interval`: the rate is meaningful

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last_draw < self.interval and step < self.total:
            return
        self.last_draw = now
        filled = self.width * step // self.total
        rate = step / max(now - self.start, 1e-9)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {step:>6}/{self.total} loss {loss:8.5f} {rate:8.0f} steps/s")
        if step >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def main(quick: bool = False, steps_per_call: int = 1) -> int:
    """Train max-of-five with a progress bar, then time the step against NumPy/PyTorch/JAX
    (and, with `steps_per_call` K > 1, train K steps per native call and time that too)."""
    steps = 1000 if quick else 10_000
    print("graphc demo: a 5-32-16-1 ReLU MLP learns max(x1..x5) of five N(0,1) inputs")
    per_call = f", {steps_per_call} steps per call" if steps_per_call != 1 else ""
    print(f"  Adam lr {LR}, batch {BATCH}, {steps} steps{per_call}, seed 0")
    start = time.perf_counter()
    net = build_max_of_five(seed=0, steps_per_call=steps_per_call)
    print(
        f"  compiled the training step ({len(net.train.kernels)} kernels, "
        f"arena {net.train.memory.arena_bytes} bytes) in {time.perf_counter() - start:.2f} s"
    )
    rng = np.random.default_rng(0)
    test_x, test_y = sample(rng, TEST_SIZE)
    initial = net.test_error(test_x, test_y)

    bar = ProgressBar(steps)
    start = time.perf_counter()
    train(net, steps, rng, on_step=bar.update)
    elapsed = time.perf_counter() - start

    final = net.test_error(test_x, test_y)
    print(f"test error (MSE on {TEST_SIZE} samples): {initial:.4f} before, {final:.4f} after")
    print(f"training: {steps / elapsed:,.0f} steps per second ({steps} steps in {elapsed:.2f} s)")
    x, y = test_x[:5], test_y[:5, 0]
    prediction = net.predict(test_x)[:5, 0]
    for row, truth, guess in zip(x, y, prediction):
        print(
            f"  max({', '.join(f'{v:5.2f}' for v in row)}) = {truth:5.2f}  predicted {guess:5.2f}"
        )
    print()
    print("the same training step (forward + backward + Adam, batch 32), median over steps:")
    print(format_table(time_training_step(net, seconds=0.2 if quick else 1.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv[1:]))  # all options: `graphc demo --help`
