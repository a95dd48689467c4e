"""Loops as benchmark cases (issue 17's W8 and W9):

    W8  a GRU of 64 units over 32 steps of 16 features at batch 32, its last state through
        Dense(1), MSE to a target, one Adam step (float32)
    W9  K = 100 and 1000 Adam steps of the max-of-five MLP (5-32-16-1, batch 32) in one call
        (gc.compile(..., steps=K)), against jax.jit of lax.scan over the K steps and against
        graphc's one-step executable called K times (peer "graphc1"); a call returns the K
        losses

graphc runs the GRU as one native loop (gc.scan); jax.jit as `lax.scan`; PyTorch eager as
`nn.GRU`. Every peer starts from graphc's initial weights (nn.GRU's layout; the Dense's `w`
is the transpose of a Linear's weight), so their first losses agree (suite.check).
"""

from __future__ import annotations

import numpy as np

import graphc as gc

from . import peers, workloads
from .workloads import Case, _peer_factories, _symbol


def gru_train_case(case_id: str, peer_names, batch=32, steps=32, features=16, units=64) -> Case:
    """W8: one Adam step of GRU -> Dense(1) with MSE."""
    rng = np.random.default_rng(9)
    x = gc.input("x", (batch, steps, features), "float32")
    target = gc.input("target", (batch, 1), "float32")
    model = gc.nn.Sequential([gc.nn.GRU(units), gc.nn.Dense(1)], seed=0, name="gru")
    loss = gc.nn.mse_loss(model(x), target)
    opt = gc.optim.Adam(model.params(), **peers.ADAM)
    program = gc.Program([x, target], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.normal(size=x.shape).astype(np.float32)
    tv = rng.normal(size=target.shape).astype(np.float32)
    arrays = [p.value.copy() for p in model.params()]
    factories = _peer_factories(peer_names, None, torch_gru_train, jax_gru_train, arrays, xv, tv)
    return Case(case_id, "W8", "float32", program, (xv, tv), factories)


def torch_gru_train(arrays, x, target):
    torch = peers._import("torch")
    w_ih, w_hh, b_ih, b_hh, w, b = arrays
    gru = torch.nn.GRU(x.shape[2], w_hh.shape[1], batch_first=True)
    dense = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), arrays):
            getattr(gru, f"{name}_l0").copy_(torch.from_numpy(value))
        dense.weight.copy_(torch.from_numpy(w.T.copy()))
        dense.bias.copy_(torch.from_numpy(b))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.dense = gru, dense

        def forward(self, x):
            return self.dense(self.gru(x)[1][0])

    model = Model()
    opt = torch.optim.Adam(model.parameters(), **peers.ADAM)
    xt, tt = torch.from_numpy(x.copy()), torch.from_numpy(target.copy())
    return peers._torch_train(model, opt, torch.nn.functional.mse_loss, xt, tt)


def _jax_gru(jax, p, x):
    jnp = jax.numpy
    w_ih, w_hh, b_ih, b_hh, w, b = p
    units = w_hh.shape[1]

    def cell(h, x_t):
        gx, gh = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = jax.nn.sigmoid(gx[:, :units] + gh[:, :units])
        z = jax.nn.sigmoid(gx[:, units : 2 * units] + gh[:, units : 2 * units])
        n = jnp.tanh(gx[:, 2 * units :] + r * gh[:, 2 * units :])
        h = (1 - z) * n + z * h
        return h, None

    h0 = jnp.zeros((x.shape[0], units), x.dtype)
    h, _ = jax.lax.scan(cell, h0, x.transpose(1, 0, 2))
    return h @ w + b


def jax_gru_train(arrays, x, target):
    jax = peers._import("jax")

    def loss_fn(params, x, target):
        return jax.numpy.mean((_jax_gru(jax, params, x) - target) ** 2)

    update = peers._JaxAdam(jax.numpy, x.dtype)
    pairs = list(zip(arrays[0::2], arrays[1::2]))
    return peers._jax_train(jax, pairs, loss_fn, update, [x, target])


def steps_case(case_id: str, steps: int, peer_names, batch=32) -> Case:
    """W9: `steps` Adam steps of the 5-32-16-1 MLP on the max of five inputs, one call."""
    rng = np.random.default_rng(10)
    x = gc.input("x", (batch, 5), "float32")
    y = gc.input("y", (batch, 1), "float32")
    model = workloads._mlp((5, 32, 16, 1), "float32", "mlp")
    loss = gc.nn.mse_loss(model(x), y)
    opt = gc.optim.Adam(model.params(), **peers.ADAM)
    program = gc.Program([x, y], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.normal(size=(steps, batch, 5)).astype(np.float32)
    yv = xv.max(axis=2, keepdims=True)
    weights = workloads._weights(model)
    factories = {}
    if "jax" in peer_names:
        factories["jax"] = lambda: jax_mlp_scan_train(weights, xv, yv)

    def one_step():  # a model of its own (params are state), from the same weights
        x1, y1 = gc.input("x", x.shape, "float32"), gc.input("y", y.shape, "float32")
        twin = workloads._mlp((5, 32, 16, 1), "float32", "mlp")
        loss1 = gc.nn.mse_loss(twin(x1), y1)
        for p, value in zip(twin.params(), (a for wb in weights for a in wb)):
            p.value[...] = value
        updates = gc.optim.Adam(twin.params(), **peers.ADAM).updates(loss1)
        executable = gc.compile(gc.Program([x1, y1], loss1, updates, name="w9_one_step"))
        return lambda: np.array([executable(xs, ys) for xs, ys in zip(xv, yv)])

    factories["graphc1"] = one_step
    return Case(case_id, "W9", "float32", program, (xv, yv), factories, steps=steps)


def jax_mlp_scan_train(weights, xs, ys):
    """jax.jit of lax.scan over the K Adam steps of peers.jax_mlp_train's step."""
    jax = peers._import("jax")
    jnp = jax.numpy
    update = peers._JaxAdam(jnp, xs.dtype)

    def loss_fn(params, x, y):
        return jnp.mean((peers._jax_forward(jnp, params, x) - y) ** 2)

    grad_fn = jax.value_and_grad(loss_fn)

    def body(state, batch):
        params, opt_state = state
        loss, grads = grad_fn(params, *batch)
        return update.apply(params, grads, opt_state), loss

    @jax.jit
    def train(params, opt_state, xs, ys):
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xs, ys))
        return params, opt_state, losses

    params = [jnp.asarray(a) for wb in weights for a in wb]
    state = {"params": params, "opt": update.init(params)}
    xj, yj = jnp.asarray(xs), jnp.asarray(ys)

    def call():
        state["params"], state["opt"], losses = train(state["params"], state["opt"], xj, yj)
        return losses.block_until_ready()

    return call


def recurrent_cases(peer_names) -> list[Case]:
    """W8 and W9."""
    return [
        gru_train_case("W8", peer_names),
        steps_case("W9 K=100", 100, peer_names),
        steps_case("W9 K=1000", 1000, peer_names),
    ]
