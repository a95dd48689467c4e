"""The workloads, as cases: one graphc program plus the same step in every peer.

    W1  training step (forward + backward + Adam), ReLU MLP, MSE:
        A = 5-32-16-1 at batch 32 (float32); B = 64-256-256-1 at batch 256 (float32, float64)
    W2  inference: A and B at batch 1 and 256 (float32)
    W3  elementwise chain tanh(a·b + c)·sigmoid(d) − 0.5·a, N = 10⁴ and 10⁶ (float32, float64)
    W4  square matmul, n = 32 … 1024 (float32, float64), also in GFLOP/s
    W5  784-100-10 ReLU network, softmax cross-entropy, one SGD step, batch 100 (float32)

A case is built cheaply (the graphc model and its initial weights); `Case.build(peer)`
compiles or jits. Every peer starts from graphc's initial weights, so the first results of
all peers must agree (`check` in suite.py). Sizes are parameters, so tests run the same
machinery on tiny cases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import graphc as gc

from . import peers

# graphc1: graphc's one-step executable called K times from Python (W9's second peer)
PEER_ORDER = ("graphc", "numpy", "torch", "jax", "onnxruntime", "graphc1")


@dataclass
class Case:
    """One benchmark row: a graphc program and a factory per peer for the same step."""

    id: str
    group: str
    dtype: str
    program: gc.Program
    feeds: tuple
    factories: dict[str, Callable[[], Callable]]
    flops: float | None = None
    compile_timings: dict = field(default_factory=dict)
    steps: int = 1  # training steps per call (gc.compile(..., steps=K))

    def graphc(self) -> Callable:
        """Compile cold (fresh cache: the caller sets GRAPHC_CACHE_DIR), then warm; run warm."""
        import time

        for kind in ("cold", "warm"):
            start = time.perf_counter()
            executable = gc.compile(self.program, steps=self.steps)
            self.compile_timings[kind] = {
                "total": time.perf_counter() - start,
                **executable.timings,
            }
        self.compile_timings["kernels"] = len(executable.kernels)
        self.compile_timings["arena_bytes"] = executable.memory.arena_bytes
        return functools.partial(executable, *self.feeds)

    def build(self, peer: str) -> Callable:
        return self.graphc() if peer == "graphc" else self.factories[peer]()


GROUPS = {
    "W1": "training step: forward + backward + Adam (ReLU MLP, MSE)",
    "W2": "inference (ReLU MLP)",
    "W3": "elementwise chain tanh(a*b + c)*sigmoid(d) - 0.5*a",
    "W4": "square matmul",
    "W5": "784-100-10 softmax network, one SGD step",
    "W6": "LeNet-5 on 1x28x28: Adam training step at batch 64, inference (bench/models.py)",
    "W7": "pre-LayerNorm transformer encoder block (8x64x128, 4 heads, FFN 512): AdamW step",
    "W8": "GRU 64 units over 32 steps (16 features, batch 32) -> Dense(1), MSE, Adam step",
    "W9": "K Adam steps of the 5-32-16-1 max-of-five MLP (batch 32) in one call (steps=K)",
}


def _peer_factories(names, numpy_fn, torch_fn, jax_fn, *args) -> dict:
    table = {"numpy": numpy_fn, "torch": torch_fn, "jax": jax_fn}
    return {n: functools.partial(table[n], *args) for n in names if table.get(n) is not None}


def _mlp(sizes, dtype, name):
    layers = [gc.nn.Dense(units, "relu", dtype=dtype) for units in sizes[1:-1]]
    layers.append(gc.nn.Dense(sizes[-1], dtype=dtype))
    return gc.nn.Sequential(layers, seed=0, name=name)


def _weights(model) -> list[tuple[np.ndarray, np.ndarray]]:
    params = [p.value.copy() for p in model.params()]
    return list(zip(params[0::2], params[1::2]))


def _symbol(case_id: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in case_id.lower())


def mlp_train_case(case_id, sizes, batch, dtype, peer_names) -> Case:
    """W1: one Adam step of a ReLU MLP with MSE loss."""
    rng = np.random.default_rng(1)
    x = gc.input("x", (batch, sizes[0]), dtype=dtype)
    y = gc.input("y", (batch, sizes[-1]), dtype=dtype)
    model = _mlp(sizes, dtype, "mlp")
    loss = gc.nn.mse_loss(model(x), y)
    opt = gc.optim.Adam(model.params(), **peers.ADAM)
    program = gc.Program([x, y], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.uniform(-1, 1, x.shape).astype(dtype)
    yv = xv.max(axis=1, keepdims=True).repeat(sizes[-1], axis=1).astype(dtype)
    weights = _weights(model)
    factories = _peer_factories(
        peer_names, peers.numpy_mlp_train, peers.torch_mlp_train, peers.jax_mlp_train,
        weights, xv, yv,
    )  # fmt: skip
    return Case(case_id, "W1", dtype, program, (xv, yv), factories)


def mlp_infer_case(case_id, sizes, batch, dtype, peer_names) -> Case:
    """W2: the forward pass of a ReLU MLP."""
    rng = np.random.default_rng(2)
    x = gc.input("x", (batch, sizes[0]), dtype=dtype)
    model = _mlp(sizes, dtype, "mlp")
    program = gc.Program([x], model(x), name=_symbol(case_id))
    xv = rng.uniform(-1, 1, x.shape).astype(dtype)
    factories = _peer_factories(
        peer_names, peers.numpy_mlp_infer, peers.torch_mlp_infer, peers.jax_mlp_infer,
        _weights(model), xv,
    )  # fmt: skip
    return Case(case_id, "W2", dtype, program, (xv,), factories)


def elementwise_case(case_id, n, dtype, peer_names) -> Case:
    """W3: tanh(a*b + c)*sigmoid(d) - 0.5*a over N elements."""
    rng = np.random.default_rng(3)
    a, b, c, d = (gc.input(name, (n,), dtype=dtype) for name in "abcd")
    program = gc.Program(
        [a, b, c, d], gc.tanh(a * b + c) * gc.sigmoid(d) - 0.5 * a, name=_symbol(case_id)
    )
    values = tuple(rng.normal(size=n).astype(dtype) for _ in range(4))
    factories = _peer_factories(
        peer_names, peers.numpy_elementwise, peers.torch_elementwise, peers.jax_elementwise,
        *values,
    )  # fmt: skip
    return Case(case_id, "W3", dtype, program, values, factories)


def matmul_case(case_id, n, dtype, peer_names) -> Case:
    """W4: an n×n by n×n matmul."""
    rng = np.random.default_rng(4)
    a, b = gc.input("a", (n, n), dtype=dtype), gc.input("b", (n, n), dtype=dtype)
    program = gc.Program([a, b], a @ b, name=_symbol(case_id))
    av, bv = (rng.uniform(-1, 1, (n, n)).astype(dtype) for _ in range(2))
    factories = _peer_factories(
        peer_names, peers.numpy_matmul, peers.torch_matmul, peers.jax_matmul, av, bv
    )
    return Case(case_id, "W4", dtype, program, (av, bv), factories, flops=2.0 * n**3)


def softmax_case(case_id, sizes, batch, peer_names, dtype="float32") -> Case:
    """W5: one SGD step of a ReLU network with softmax cross-entropy on integer labels."""
    rng = np.random.default_rng(5)
    x = gc.input("x", (batch, sizes[0]), dtype=dtype)
    labels = gc.input("labels", (batch,), dtype="int32")
    model = _mlp(sizes, dtype, "net")
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    opt = gc.optim.SGD(model.params(), lr=peers.SGD_LR)
    program = gc.Program([x, labels], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.uniform(0, 1, x.shape).astype(dtype)
    lv = rng.integers(0, sizes[-1], batch).astype(np.int32)
    factories = _peer_factories(
        peer_names, peers.numpy_softmax_train, peers.torch_softmax_train,
        peers.jax_softmax_train, _weights(model), xv, lv,
    )  # fmt: skip
    return Case(case_id, "W5", dtype, program, (xv, lv), factories)


MLP_A, MLP_B = (5, 32, 16, 1), (64, 256, 256, 1)


def all_cases(peer_names, quick: bool = False) -> list[Case]:
    """Every case, or with `quick` a subset that runs in well under a minute."""
    p = peer_names
    if quick:
        return [
            mlp_train_case("W1-A f32", MLP_A, 32, "float32", p),
            mlp_infer_case("W2-A b1", MLP_A, 1, "float32", p),
            elementwise_case("W3 1e6 f32", 10**6, "float32", p),
            matmul_case("W4 64 f32", 64, "float32", p),
        ]
    cases = [
        mlp_train_case("W1-A f32", MLP_A, 32, "float32", p),
        mlp_train_case("W1-B f32", MLP_B, 256, "float32", p),
        mlp_train_case("W1-B f64", MLP_B, 256, "float64", p),
    ]
    for label, sizes in (("A", MLP_A), ("B", MLP_B)):
        for batch in (1, 256):
            cases.append(mlp_infer_case(f"W2-{label} b{batch}", sizes, batch, "float32", p))
    for n, label in ((10**4, "1e4"), (10**6, "1e6")):
        for dtype in ("float32", "float64"):
            cases.append(elementwise_case(f"W3 {label} f{dtype[-2:]}", n, dtype, p))
    for dtype in ("float32", "float64"):
        for n in (32, 64, 128, 256, 512, 1024):
            cases.append(matmul_case(f"W4 {n} f{dtype[-2:]}", n, dtype, p))
    cases.append(softmax_case("W5", (784, 100, 10), 100, p))
    return cases


@dataclass
class Target:
    """A target: graphc at least `ratio` times faster than `peer` on `case_id`."""

    case_id: str
    peer: str
    ratio: float


TARGETS = [
    Target("W1-A f32", "jax", 10),
    Target("W1-A f32", "torch", 50),
    Target("W1-B f32", "jax", 1.2),
    Target("W1-B f64", "jax", 1.2),
    Target("W2-A b1", "numpy", 4),
    *[Target(f"W3 1e6 {d}", "jax", 1.2) for d in ("f32", "f64")],
    *[Target(f"W3 1e6 {d}", "numpy", 10) for d in ("f32", "f64")],
    *[Target(f"W4 {n} {d}", "numpy", 1.5) for n in (32, 64) for d in ("f32", "f64")],
    *[Target(f"W4 {n} {d}", "numpy", 0.8) for n in (256, 512, 1024) for d in ("f32", "f64")],
    Target("W5", "numpy", 1.3),
    # issue 21's targets for the models people train (not met yet: see README, Performance)
    Target("W6 train b64", "jax", 2),
    Target("W6 train b64", "torch", 3),
    Target("W6 infer b1", "onnxruntime", 1.5),
    Target("W6 infer b64", "onnxruntime", 1),
    Target("W7", "jax", 1.5),
    Target("W7", "torch", 3),
    # issue 17's: a GRU as one native loop (bench/recurrent.py)
    Target("W8", "jax", 2),
    Target("W8", "torch", 3),
    *[Target(f"W9 K={k}", "jax", 20) for k in (100, 1000)],
    *[Target(f"W9 K={k}", "graphc1", 2) for k in (100, 1000)],
]
