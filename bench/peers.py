"""The peers: each workload hand-written in NumPy, PyTorch (eager) and JAX (jax.jit).

Every factory takes the same data as graphc's version of the case (weights in graphc's
layout, `w: (in, out)`, `b: (out,)`) and returns a zero-argument callable that runs one step
on pre-made inputs and returns its result (training steps update their own state, as in a
training loop). The code is what a careful user would write: in-place updates in NumPy,
`torch.optim.Adam`/`SGD` in PyTorch, one jitted function over all state in JAX. JAX results
are blocked on inside the call so that asynchronous dispatch does not hide the work.

PyTorch and JAX are optional: `available()` says which are importable (JAX is imported
with JAX_PLATFORMS=cpu and x64 enabled, so float64 cases really run in float64).

Threads: `graphc bench --threads N` (default 1) sets GRAPHC_THREADS for graphc and
GRAPHC_BENCH_PEER_THREADS for the peers (OpenBLAS through threadpoolctl,
torch.set_num_threads, XLA's Eigen pool off at 1), so that every library is compared on the
same number of threads; one thread also keeps spinning worker pools from wrecking the
timings on a loaded 2-core machine. Caveat, measured: jax 0.10's CPU runtime still uses both
cores for large matmuls and elementwise loops with those flags, so a 1-thread table
understates graphc against jax.jit; GRAPHC_BENCH_PEER_THREADS=0 leaves each library its
default.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import numpy as np

PEER_THREADS = int(os.environ.get("GRAPHC_BENCH_PEER_THREADS", "1"))
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}
SGD_LR = 0.1


def _import(name: str):
    if name == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if PEER_THREADS == 1 and "jax" not in sys.modules:
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None
    if name == "jax":
        module.config.update("jax_enable_x64", True)
    if name == "torch" and PEER_THREADS:
        module.set_num_threads(PEER_THREADS)
    return module


def limit_blas_threads():
    """Hold NumPy's BLAS to PEER_THREADS threads; returns the limiter (None: not possible)."""
    if not PEER_THREADS:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=PEER_THREADS, user_api="blas")


def available() -> dict[str, str | None]:
    """Version of every optional peer, or None when it is not importable."""
    found = {}
    for name in ("torch", "jax", "onnxruntime"):
        module = _import(name)
        found[name] = getattr(module, "__version__", "?") if module else None
    return found


def to_numpy(result) -> np.ndarray:
    """A peer's result as an ndarray (torch tensors detached, jax arrays copied out)."""
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return np.asarray(result)


# ---- NumPy ----------------------------------------------------------------------------------


def _numpy_forward(weights, x):
    activations = [x]
    for i, (w, b) in enumerate(weights):
        z = activations[-1] @ w
        z += b
        if i < len(weights) - 1:
            np.maximum(z, 0, out=z)
        activations.append(z)
    return activations


def numpy_mlp_infer(weights, x) -> Callable:
    return lambda: _numpy_forward(weights, x)[-1]


def numpy_mlp_train(weights, x, y) -> Callable:
    """ReLU MLP, MSE loss, Adam: forward, backward and update with NumPy."""
    params = [a.copy() for wb in weights for a in wb]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    lr, (b1, b2), eps = ADAM["lr"], ADAM["betas"], ADAM["eps"]
    state = {"t": 0}

    def step():
        layers = list(zip(params[0::2], params[1::2]))
        acts = _numpy_forward(layers, x)
        diff = acts[-1] - y
        loss = np.mean(diff * diff)
        delta = diff * (2.0 / diff.size)
        grads = [None] * len(params)
        for i in range(len(layers) - 1, -1, -1):
            grads[2 * i] = acts[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i:
                delta = (delta @ layers[i][0].T) * (acts[i] > 0)
        state["t"] += 1
        t = state["t"]
        c1, c2 = 1 - b1**t, 1 - b2**t
        for p, g, (m, v) in zip(params, grads, moments):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= lr * (m / c1) / (np.sqrt(v / c2) + eps)
        return loss

    return step


def numpy_softmax_train(weights, x, labels) -> Callable:
    """784-100-10 ReLU network, softmax cross-entropy on integer labels, one SGD step."""
    params = [a.copy() for wb in weights for a in wb]
    rows = np.arange(len(labels))

    def step():
        (w1, b1), (w2, b2) = zip(params[0::2], params[1::2])
        hidden = np.maximum(x @ w1 + b1, 0)
        logits = hidden @ w2 + b2
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(total[:, 0]) - shifted[rows, labels])
        delta = exp / total
        delta[rows, labels] -= 1
        delta /= len(labels)
        grads = [hidden.T @ delta, delta.sum(axis=0)]
        delta = (delta @ w2.T) * (hidden > 0)
        grads = [x.T @ delta, delta.sum(axis=0), *grads]
        for p, g in zip(params, grads):
            p -= SGD_LR * g
        return loss

    return step


def numpy_elementwise(a, b, c, d) -> Callable:
    return lambda: np.tanh(a * b + c) * (1 / (1 + np.exp(-d))) - 0.5 * a


def numpy_matmul(a, b) -> Callable:
    return lambda: a @ b


# ---- PyTorch (eager) ------------------------------------------------------------------------


def _torch_mlp(torch, weights):
    layers = []
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(*w.shape, dtype=torch.from_numpy(w).dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_mlp_infer(weights, x) -> Callable:
    torch = _import("torch")
    model, xt = _torch_mlp(torch, weights), torch.from_numpy(x.copy())

    def step():
        with torch.no_grad():
            return model(xt)

    return step


def _torch_train(model, opt, loss_fn, x, target) -> Callable:
    """One optimizer step of `model` on `loss_fn(model(x), target)`."""

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return step


def torch_mlp_train(weights, x, y) -> Callable:
    torch = _import("torch")
    model = _torch_mlp(torch, weights)
    opt = torch.optim.Adam(model.parameters(), **ADAM)
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    return _torch_train(model, opt, torch.nn.functional.mse_loss, xt, yt)


def torch_softmax_train(weights, x, labels) -> Callable:
    torch = _import("torch")
    model = _torch_mlp(torch, weights)
    opt = torch.optim.SGD(model.parameters(), lr=SGD_LR)
    xt, lt = torch.from_numpy(x.copy()), torch.from_numpy(labels.astype(np.int64))
    return _torch_train(model, opt, torch.nn.functional.cross_entropy, xt, lt)


def torch_elementwise(a, b, c, d) -> Callable:
    torch = _import("torch")
    a, b, c, d = (torch.from_numpy(v.copy()) for v in (a, b, c, d))

    def step():
        return torch.tanh(a * b + c) * torch.sigmoid(d) - 0.5 * a

    return step


def torch_matmul(a, b) -> Callable:
    torch = _import("torch")
    a, b = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    return lambda: a @ b


# ---- JAX (jax.jit) --------------------------------------------------------------------------


def _jax_forward(jnp, params, x):
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = jnp.maximum(h, 0)
    return h


def jax_mlp_infer(weights, x) -> Callable:
    jax = _import("jax")
    jnp = jax.numpy
    params = [jnp.asarray(a) for wb in weights for a in wb]
    forward = jax.jit(lambda params, x: _jax_forward(jnp, params, x))
    xj = jnp.asarray(x)
    return lambda: forward(params, xj).block_until_ready()


def _jax_train(jax, weights, loss_fn, update, inputs) -> Callable:
    """A jitted step over (params, state, *inputs); state lives in the closure between calls."""
    jnp = jax.numpy
    params = [jnp.asarray(a) for wb in weights for a in wb]
    state = {"params": params, "opt": update.init(params)}
    grad_fn = jax.value_and_grad(loss_fn)

    @jax.jit
    def train(params, opt_state, *inputs):
        loss, grads = grad_fn(params, *inputs)
        params, opt_state = update.apply(params, grads, opt_state)
        return loss, params, opt_state

    inputs = [jnp.asarray(v) for v in inputs]

    def step():
        loss, state["params"], state["opt"] = train(state["params"], state["opt"], *inputs)
        return loss.block_until_ready()

    return step


class _JaxAdam:
    def __init__(self, jnp, dtype):
        self.jnp, self.dtype = jnp, dtype

    def init(self, params):
        zeros = [self.jnp.zeros_like(p) for p in params]
        return zeros, list(zeros), self.jnp.zeros((), self.dtype)

    def apply(self, params, grads, state):
        lr, (b1, b2), eps = ADAM["lr"], ADAM["betas"], ADAM["eps"]
        m, v, t = state
        t = t + 1
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        c1, c2 = 1 - b1**t, 1 - b2**t
        params = [
            p - lr * (mi / c1) / (self.jnp.sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)
        ]
        return params, (m, v, t)


class _JaxSGD:
    def init(self, params):
        return ()

    def apply(self, params, grads, state):
        return [p - SGD_LR * g for p, g in zip(params, grads)], state


def jax_mlp_train(weights, x, y) -> Callable:
    jax = _import("jax")
    jnp = jax.numpy

    def loss_fn(params, x, y):
        return jnp.mean((_jax_forward(jnp, params, x) - y) ** 2)

    return _jax_train(jax, weights, loss_fn, _JaxAdam(jnp, x.dtype), [x, y])


def jax_softmax_train(weights, x, labels) -> Callable:
    jax = _import("jax")
    jnp = jax.numpy

    def loss_fn(params, x, labels):
        logp = jax.nn.log_softmax(_jax_forward(jnp, params, x), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    return _jax_train(jax, weights, loss_fn, _JaxSGD(), [x, labels])


def jax_elementwise(a, b, c, d) -> Callable:
    jax = _import("jax")
    chain = jax.jit(lambda a, b, c, d: jax.numpy.tanh(a * b + c) * jax.nn.sigmoid(d) - 0.5 * a)
    args = [jax.numpy.asarray(v) for v in (a, b, c, d)]
    return lambda: chain(*args).block_until_ready()


def jax_matmul(a, b) -> Callable:
    jax = _import("jax")
    product = jax.jit(jax.numpy.matmul)
    a, b = jax.numpy.asarray(a), jax.numpy.asarray(b)
    return lambda: product(a, b).block_until_ready()
