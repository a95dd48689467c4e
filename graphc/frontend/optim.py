"""Optimizers as graph builders (`gc.optim`).

An optimizer owns its state (momentum buffers, Adam's moments and step count) as
`gc.param` tensors next to the model's parameters, named after them
(`adam.m[dense1.w]`, `adam.t`). `opt.updates(loss)` differentiates `loss` and returns the
new value of every parameter and state tensor as one dict, so a whole training step —
forward, backward and update — compiles into one program:

    opt = gc.optim.Adam(model.params(), lr=1e-3)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))

All new values are computed from the old ones (updates are simultaneous). `lr` is a
Python float, baked into the graph, or a scalar Tensor (e.g. a param used as a schedule).
With `allreduce=comm` (an mpi4py communicator) the gradients are averaged over the ranks
in one fused buffer per step, inside the compiled step (graphc/frontend/distributed.py).
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphcError, ShapeError
from graphc.frontend import distributed
from graphc.frontend.functions import grad, sqrt
from graphc.frontend.tensor import Tensor, as_tensor, param
from graphc.ir.types import FLOATS


class Optimizer:
    """The shared part: checked params, named state, gradients of a scalar loss."""

    def __init__(self, params, lr, name: str, allreduce=None):
        self.allreduce = allreduce  # an mpi4py communicator: gradients averaged over its ranks
        if hasattr(params, "params"):
            params = params.params()
        self.params: list[Tensor] = []
        for p in params:
            if not isinstance(p, Tensor) or p.node.op != "param":
                raise GraphcError(f"{name}: can only optimize gc.param tensors, got {p!r}")
            if p.dtype not in FLOATS:
                raise GraphcError(f"{name}: param {p.name} is {p.type}; only floats are trainable")
            if not any(p is q for q in self.params):
                self.params.append(p)
        if isinstance(lr, Tensor) and lr.shape != ():
            raise ShapeError(f"{name}: lr must be a scalar, got {lr.type}")
        self.lr = lr
        self.name = name

    def state_like(self, kind: str, p: Tensor) -> Tensor:
        """A zero state tensor shaped like `p`, named `<optimizer>.<kind>[<param>]`."""
        return param(f"{self.name}.{kind}[{p.name}]", np.zeros(p.shape, p.dtype))

    def gradients(self, loss) -> list[Tensor]:
        loss = as_tensor(loss)
        if loss.shape != ():
            raise ShapeError(f"{self.name}: the loss must be a scalar, got {loss.type}")
        grads = grad(loss, self.params)
        if self.allreduce is None:
            return grads
        return distributed.average(grads, self.allreduce)

    def state(self) -> list[Tensor]:
        """The optimizer's state tensors (to save, inspect or reset)."""
        raise NotImplementedError

    def updates(self, loss) -> dict[Tensor, Tensor]:
        """{param or state tensor: its new value} for one step on `loss`, params first."""
        raise NotImplementedError


class SGD(Optimizer):
    """w -= lr * g; with momentum (PyTorch's form): buf = momentum * buf + g; w -= lr * buf."""

    def __init__(self, params, lr, momentum: float = 0.0, *, name: str = "sgd", allreduce=None):
        super().__init__(params, lr, name, allreduce)
        self.momentum = momentum
        self.buffers = [self.state_like("momentum", p) for p in self.params] if momentum else []

    def state(self) -> list[Tensor]:
        return list(self.buffers)

    def updates(self, loss) -> dict[Tensor, Tensor]:
        grads = self.gradients(loss)
        result, state = {}, {}
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if self.momentum:
                buffer = self.momentum * self.buffers[i] + g
                state[self.buffers[i]] = buffer
                g = buffer
            result[p] = (p - self.lr * g).astype(p.dtype)
        return {**result, **state}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; the step count `t` is 1 at the first step.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;  w -= lr m̂ / (sqrt(v̂) + eps)
    with m̂ = m / (1 - b1^t) and v̂ = v / (1 - b2^t). `t` is a float scalar of the params'
    dtype (exact up to 2^24 steps in float32).
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        *,
        name: str = "adam",
        allreduce=None,
    ):
        super().__init__(params, lr, name, allreduce)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.m = [self.state_like("m", p) for p in self.params]
        self.v = [self.state_like("v", p) for p in self.params]
        dtype = np.result_type(*[p.dtype for p in self.params]) if self.params else np.float32
        self.t = param(f"{name}.t", np.zeros((), dtype))

    def state(self) -> list[Tensor]:
        """m of every param, v of every param, then t."""
        return [*self.m, *self.v, self.t]

    def updates(self, loss) -> dict[Tensor, Tensor]:
        grads = self.gradients(loss)
        b1, b2 = self.betas
        t = self.t + 1
        result, state = {}, {}
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * (g * g)
            m_hat = m_new / (1 - b1**t).astype(p.dtype)
            v_hat = v_new / (1 - b2**t).astype(p.dtype)
            result[p] = (p - self.lr * m_hat / (sqrt(v_hat) + self.eps)).astype(p.dtype)
            state[m], state[v] = m_new, v_new
        state[self.t] = t
        return {**result, **{s: state[s] for s in self.state()}}
