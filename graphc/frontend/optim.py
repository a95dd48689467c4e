"""Optimizers, gradient clipping and learning-rate schedules as graph builders (`gc.optim`).

An optimizer owns its state (momentum buffers, Adam's moments, the step count) as
`gc.param` tensors next to the model's parameters, named after them (`adam.m[dense1.w]`,
`adam.t`). `opt.updates(loss)` differentiates `loss` and returns the new value of every
parameter and state tensor as one dict, so a whole training step — forward, backward and
update — compiles into one program:

    opt = gc.optim.AdamW(model.params(), lr=gc.optim.cosine_decay(1e-3, 10_000, warmup=500),
                         clip_norm=1.0)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))

All new values are computed from the old ones (updates are simultaneous). One step is:

    g = grad(loss, params)  or the caller's `grads=`     (opt.updates(loss, grads=...))
    g = average of g over the ranks                      (allreduce=comm)
    g = g * min(1, clip_norm / (‖g‖ + 1e-6))             (clip_norm=, ‖g‖ over all params)
    lr = lr  or  schedule(t)                             (t: steps taken before this one)
    the optimizer's rule (SGD, Adam, AdamW), as PyTorch's torch.optim

`lr` is a Python float (baked into the graph), a scalar Tensor (e.g. a param the caller
sets between steps) or a schedule: any function of the optimizer's step counter `t` (a
float scalar state tensor `<name>.t`, 0 at the first step) that returns a scalar Tensor,
such as `cosine_decay`; it is computed inside the compiled step.
With `allreduce=comm` (an mpi4py communicator) the gradients are averaged over the ranks
in one fused buffer per step (graphc/frontend/distributed.py).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.frontend import distributed
from graphc.frontend.functions import cos, grad, minimum, sqrt, where
from graphc.frontend.tensor import Tensor, as_tensor, param
from graphc.ir.graph import user_location
from graphc.ir.types import FLOATS

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineDecay",
    "Optimizer",
    "clip_by_global_norm",
    "cosine_decay",
]


def _check_number(owner: str, what: str, value, low: float = 0.0, high: float = math.inf):
    """`value` as a float in [low, high) (high included when infinite), else a GraphcError."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]  # a 0-d array: its scalar
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GraphcError(f"{owner}: {what} must be a number, got {value!r} (at {user_location()})")
    value = float(value)
    if not low <= value < high and not (value == high == math.inf):
        span = f"[{low:g}, {high:g})" if high != math.inf else f">= {low:g}"
        raise GraphcError(f"{owner}: {what} must be {span}, got {value!r} (at {user_location()})")
    return value


# ---- learning-rate schedules ----------------------------------------------------------------


class CosineDecay:
    """Linear warm-up from 0, then a half cosine from `lr` down to 0 at `steps`.

    With `t` the number of steps taken before this one (0 at the first step):

        lr(t) = lr · t / warmup                                    for 0 <= t < warmup
        lr(t) = lr · ½ (1 + cos(π (t - warmup) / (steps - warmup)))  for warmup <= t < steps
        lr(t) = 0                                                  for t >= steps

    so the first step runs at 0 when warmup > 0 (at `lr` when warmup = 0), the peak `lr` is
    reached at t = warmup, and steps past `steps` do not move the params. These are
    PyTorch's `CosineAnnealingLR(T_max=steps)` for warmup = 0, and Hugging Face's
    `get_cosine_schedule_with_warmup` / optax's `warmup_cosine_decay_schedule(0, lr,
    warmup, steps)` otherwise. `lr` may be a float or a scalar Tensor.
    """

    def __init__(self, lr, steps: int, warmup: int = 0):
        for what, value in (("steps", steps), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise GraphcError(
                    f"cosine_decay: {what} must be an int, got {value!r} (at {user_location()})"
                )
        if steps < 1 or not 0 <= warmup <= steps:
            raise GraphcError(
                f"cosine_decay: needs steps >= 1 and 0 <= warmup <= steps, got steps={steps}, "
                f"warmup={warmup} (at {user_location()})"
            )
        if isinstance(lr, Tensor):
            if lr.shape != () or lr.dtype not in FLOATS:
                raise ShapeError(f"cosine_decay: lr must be a float scalar, got {lr.type}")
        else:
            lr = _check_number("cosine_decay", "lr", lr)
        self.lr, self.steps, self.warmup = lr, int(steps), int(warmup)

    def __call__(self, t) -> Tensor:
        """The learning rate after `t` steps (a scalar Tensor or number), as a scalar Tensor."""
        t = as_tensor(t)
        if t.dtype not in FLOATS:
            t = t.astype("float64")
        decaying = max(self.steps - self.warmup, 1)  # warmup == steps: no cosine part
        progress = minimum((t - self.warmup) / decaying, 1.0)
        value = self.lr * (0.5 * (1.0 + cos(math.pi * progress)))
        if self.warmup:
            value = where(t < self.warmup, self.lr * (t / self.warmup), value)
        return where(t < self.steps, value, 0.0)

    def __repr__(self) -> str:
        return f"cosine_decay({self.lr!r}, steps={self.steps}, warmup={self.warmup})"


def cosine_decay(lr, steps: int, warmup: int = 0) -> CosineDecay:
    """The learning rate `lr` warmed up linearly over `warmup` steps, then decayed along a
    half cosine to 0 at `steps`: a function of the step counter (see CosineDecay)."""
    return CosineDecay(lr, steps, warmup)


# ---- gradient clipping ----------------------------------------------------------------------


def clip_by_global_norm(grads, max_norm: float) -> list[Tensor]:
    """`grads` scaled together by min(1, max_norm / (‖grads‖ + 1e-6)), ‖·‖ the 2-norm of
    all their entries at once: `torch.nn.utils.clip_grad_norm_`'s arithmetic."""
    max_norm = _check_number("clip_by_global_norm", "max_norm", max_norm)
    if max_norm <= 0:
        raise GraphcError(f"clip_by_global_norm: max_norm must be > 0, got {max_norm}")
    grads = [as_tensor(g) for g in grads]
    if not grads:
        return []
    squares = [(g * g).sum() for g in grads]
    total = squares[0]
    for s in squares[1:]:
        total = total + s  # mixed float32/float64 grads: the norm in float64
    scale = minimum(max_norm / (sqrt(total) + 1e-6), 1.0)
    return [(g * scale).astype(g.dtype) for g in grads]


# ---- optimizers -----------------------------------------------------------------------------


class Optimizer:
    """The shared part: checked params, named state, the learning rate of this step, and
    the gradients (differentiated or given, averaged over ranks, clipped)."""

    def __init__(self, params, lr, name: str, allreduce=None, clip_norm=None, counter=False):
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
        if isinstance(lr, Tensor):
            if lr.shape != ():
                raise ShapeError(f"{name}: lr must be a scalar, got {lr.type}")
        elif not callable(lr):
            lr = _check_number(name, "lr", lr)
        self.lr = lr
        self.name = name
        if clip_norm is not None:
            clip_norm = _check_number(name, "clip_norm", clip_norm)
            if clip_norm <= 0:
                raise GraphcError(f"{name}: clip_norm must be > 0 (or None), got {clip_norm}")
        self.clip_norm = clip_norm
        dtype = np.result_type(*[p.dtype for p in self.params]) if self.params else np.float32
        # the step counter: steps taken so far, a float of the params' dtype (exact to 2^24
        # steps in float32); made when the rule or a schedule needs it
        needed = counter or (callable(lr) and not isinstance(lr, Tensor))
        self.t: Tensor | None = param(f"{name}.t", np.zeros((), dtype)) if needed else None

    def state_like(self, kind: str, p: Tensor) -> Tensor:
        """A zero state tensor shaped like `p`, named `<optimizer>.<kind>[<param>]`."""
        return param(f"{self.name}.{kind}[{p.name}]", np.zeros(p.shape, p.dtype))

    def learning_rate(self):
        """This step's learning rate: the float or Tensor given, or the schedule at `t`."""
        if isinstance(self.lr, Tensor) or not callable(self.lr):
            return self.lr
        value = as_tensor(self.lr(self.t))
        if value.shape != () or value.dtype not in FLOATS:
            raise ShapeError(
                f"{self.name}: the lr schedule {self.lr!r} must return a float scalar, "
                f"got {value.type} (at {user_location()})"
            )
        return value

    def gradients(self, loss, grads=None) -> list[Tensor]:
        """grad(loss, params), or the given `grads`; then averaged and clipped if asked."""
        grads = self._differentiated(loss) if grads is None else self._given(grads)
        if self.allreduce is not None:
            grads = distributed.average(grads, self.allreduce)
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        return grads

    def _differentiated(self, loss) -> list[Tensor]:
        if loss is None:
            raise GraphcError(f"{self.name}: updates needs a loss or grads= (at {user_location()})")
        loss = as_tensor(loss)
        if loss.shape != ():
            raise ShapeError(f"{self.name}: the loss must be a scalar, got {loss.type}")
        return grad(loss, self.params)

    def _given(self, grads) -> list[Tensor]:
        """The caller's gradients, one per param (a list in param order, or a dict keyed by
        param), checked against the params' shapes and cast to their dtypes."""
        at = f"(at {user_location()})"
        if isinstance(grads, dict):
            by_id = {id(p): g for p, g in grads.items()}
            missing = [p.name for p in self.params if id(p) not in by_id]
            if missing or len(by_id) != len(self.params):
                raise GraphcError(
                    f"{self.name}: grads= must hold one gradient per param; missing {missing}, "
                    f"{len(by_id)} given for {len(self.params)} params {at}"
                )
            grads = [by_id[id(p)] for p in self.params]
        else:
            grads = list(grads)
        if len(grads) != len(self.params):
            raise GraphcError(
                f"{self.name}: grads= has {len(grads)} entries for {len(self.params)} params {at}"
            )
        result = []
        for p, g in zip(self.params, grads, strict=True):
            g = as_tensor(g, p)
            if g.shape != p.shape:
                raise ShapeError(f"{self.name}: the gradient of {p.name} {p.type} is {g.type} {at}")
            if g.dtype not in FLOATS:
                raise DTypeError(
                    f"{self.name}: the gradient of {p.name} must be float, got {g.type} {at}"
                )
            result.append(g.astype(p.dtype) if g.dtype != p.dtype else g)
        return result

    def state(self) -> list[Tensor]:
        """The optimizer's state tensors (to save, inspect or reset)."""
        raise NotImplementedError

    def updates(self, loss, grads=None) -> dict[Tensor, Tensor]:
        """{param or state tensor: its new value} for one step, params first.

        `grads` (a list in the order of `opt.params`, or a dict keyed by param) replaces
        grad(loss, params) — gradients the caller has transformed; `loss` is then not
        differentiated and may be None. Averaging and clipping still apply.
        """
        grads = self.gradients(loss, grads)
        lr = self.learning_rate()
        new_params, new_state = self.rule(grads, lr)
        if self.t is not None:
            new_state[self.t] = self.t + 1
        return {**new_params, **{s: new_state[s] for s in self.state()}}

    def rule(self, grads: list[Tensor], lr) -> tuple[dict, dict]:
        """({param: new value}, {state tensor except t: new value}) for one step."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, as PyTorch's torch.optim.SGD (dampening 0):

    g = g + weight_decay · w;  buf = momentum · buf + g   (buf starts at 0)
    w -= lr · (g + momentum · buf)  with nesterov,  lr · buf  with momentum,  lr · g  else
    """

    def __init__(
        self,
        params,
        lr,
        momentum: float = 0.0,
        *,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        clip_norm=None,
        name: str = "sgd",
        allreduce=None,
    ):
        super().__init__(params, lr, name, allreduce, clip_norm)
        self.momentum = _check_number(name, "momentum", momentum)
        self.weight_decay = _check_number(name, "weight_decay", weight_decay)
        if nesterov and not self.momentum:
            raise GraphcError(f"{name}: nesterov=True needs momentum > 0 (at {user_location()})")
        self.nesterov = bool(nesterov)
        self.buffers = [self.state_like("momentum", p) for p in self.params] if momentum else []

    def state(self) -> list[Tensor]:
        """The momentum buffers (if momentum), then t (if lr is a schedule)."""
        return [*self.buffers, *([self.t] if self.t is not None else [])]

    def rule(self, grads, lr):
        new_params, new_state = {}, {}
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buffer = self.momentum * self.buffers[i] + g
                new_state[self.buffers[i]] = buffer
                g = g + self.momentum * buffer if self.nesterov else buffer
            new_params[p] = (p - lr * g).astype(p.dtype)
        return new_params, new_state


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; the step count `t` is 1 at the first step.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;  w -= lr m̂ / (sqrt(v̂) + eps)
    with m̂ = m / (1 - b1^t) and v̂ = v / (1 - b2^t). The state `t` counts the steps taken
    (a float scalar of the params' dtype, exact up to 2^24 steps in float32); a schedule
    sees it before the step's increment.
    """

    weight_decay = 0.0  # AdamW's decoupled decay; Adam has none

    def __init__(
        self,
        params,
        lr=1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        *,
        clip_norm=None,
        name: str = "adam",
        allreduce=None,
    ):
        super().__init__(params, lr, name, allreduce, clip_norm, counter=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise GraphcError(f"{name}: betas must be a pair, got {betas!r}")
        self.betas = tuple(_check_number(name, "betas", b, 0.0, 1.0) for b in betas)
        self.eps = _check_number(name, "eps", eps)
        self.m = [self.state_like("m", p) for p in self.params]
        self.v = [self.state_like("v", p) for p in self.params]

    def state(self) -> list[Tensor]:
        """m of every param, v of every param, then t."""
        return [*self.m, *self.v, self.t]

    def rule(self, grads, lr):
        b1, b2 = self.betas
        t = self.t + 1
        new_params, new_state = {}, {}
        # The bias corrections divide scalars, once per step (in the param's dtype), and each
        # element pays products (a vector division or square root costs several cycles a
        # lane; Adam's update was bound by its three divisions and one root per element).
        # m̂ and v̂ are the same up to one rounding of the scalars.
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            step_size = lr / (1 - b1**t).astype(p.dtype)
            unbias_v = 1 / (1 - b2**t).astype(p.dtype)
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * (g * g)
            decayed = p * (1 - lr * self.weight_decay) if self.weight_decay else p
            update = step_size * m_new / (sqrt(v_new * unbias_v) + self.eps)
            new_params[p] = (decayed - update).astype(p.dtype)
            new_state[m], new_state[v] = m_new, v_new
        return new_params, new_state


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as PyTorch's AdamW:
    w ← w · (1 - lr · weight_decay), then Adam's step with the same lr."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        clip_norm=None,
        name: str = "adamw",
        allreduce=None,
    ):
        super().__init__(
            params, lr, betas, eps, clip_norm=clip_norm, name=name, allreduce=allreduce
        )
        self.weight_decay = _check_number(name, "weight_decay", weight_decay)
