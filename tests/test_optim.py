"""gc.optim against hand-written NumPy optimizers, on the reference interpreter.

The problem is a 3-4-2 tanh MLP with an MSE loss whose forward and backward pass are also
written out in NumPy below, so the reference is independent of graphc's autodiff. Updates
are applied by hand: evaluate every new value, then assign them all (simultaneously).
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

BATCH, IN, HIDDEN, OUT = 5, 3, 4, 2


def build_problem(dtype="float64", seed=0):
    """(x, y, params [w1, b1, w2, b2], loss) of the MLP regression problem."""
    x = gc.input("x", (BATCH, IN), dtype)
    y = gc.input("y", (BATCH, OUT), dtype)
    model = gc.nn.MLP(HIDDEN, 2, OUT, activation="tanh", seed=seed, dtype=dtype)
    loss = gc.nn.mse_loss(model(x), y)
    return x, y, model.params(), loss


def numpy_loss_and_grads(params, xv, yv):
    """Forward and backward of tanh(x w1 + b1) w2 + b2 with a mean squared error, in NumPy."""
    w1, b1, w2, b2 = params
    h = np.tanh(xv @ w1 + b1)
    pred = h @ w2 + b2
    d_pred = 2 * (pred - yv) / pred.size
    d_z = (d_pred @ w2.T) * (1 - h * h)
    grads = [xv.T @ d_z, d_z.sum(0), h.T @ d_pred, d_pred.sum(0)]
    return np.mean((pred - yv) ** 2), grads


def numpy_adam(params, grads, m, v, t, lr, b1, b2, eps, weight_decay=0.0):
    """One textbook Adam step (Kingma & Ba), t counted from 1, with AdamW's decoupled
    weight decay w <- w (1 - lr weight_decay) first; returns new params, m, v."""
    new_params, new_m, new_v = [], [], []
    for w, g, m_i, v_i in zip(params, grads, m, v, strict=True):
        w = w * (1 - lr * weight_decay)
        m_i = b1 * m_i + (1 - b1) * g
        v_i = b2 * v_i + (1 - b2) * g**2
        m_hat = m_i / (1 - b1**t)
        v_hat = v_i / (1 - b2**t)
        new_params.append(w - lr * m_hat / (np.sqrt(v_hat) + eps))
        new_m.append(m_i)
        new_v.append(v_i)
    return new_params, new_m, new_v


def numpy_sgd(params, grads, buffers, lr, momentum, weight_decay=0.0, nesterov=False):
    """One SGD step as torch.optim.SGD (dampening 0); returns new params and buffers."""
    grads = [g + weight_decay * w for w, g in zip(params, grads, strict=True)]
    buffers = [momentum * buf + g for buf, g in zip(buffers, grads, strict=True)]
    if nesterov:
        steps = [g + momentum * buf for g, buf in zip(grads, buffers, strict=True)]
    else:
        steps = buffers if momentum else grads
    return [w - lr * s for w, s in zip(params, steps, strict=True)], buffers


def batches(steps, seed=7):
    """`steps` (x, y) batches: y = max of x's entries and their negated sum."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        xv = rng.uniform(-1, 1, (BATCH, IN))
        yield xv, np.stack([xv.max(1), -xv.sum(1)], axis=1)


def apply_updates(updates, feed):
    """Evaluate all new values first, then assign them: updates are simultaneous."""
    targets = list(updates)
    values = gc.evaluate([updates[t] for t in targets], feed)
    for target, value in zip(targets, values, strict=True):
        target.value = value


# ---- Adam -----------------------------------------------------------------------------------


def test_adam_matches_textbook_numpy_over_20_steps():
    x, y, params, loss = build_problem()
    opt = gc.optim.Adam(params, lr=0.05, betas=(0.8, 0.99), eps=1e-7)
    updates = opt.updates(loss)
    ref = [p.value.copy() for p in params]
    m = [np.zeros_like(w) for w in ref]
    v = [np.zeros_like(w) for w in ref]
    for t, (xv, yv) in enumerate(batches(20), start=1):
        ref_loss, grads = numpy_loss_and_grads(ref, xv, yv)
        np.testing.assert_allclose(gc.evaluate(loss, {x: xv, y: yv}), ref_loss, rtol=1e-12)
        ref, m, v = numpy_adam(ref, grads, m, v, t, 0.05, 0.8, 0.99, 1e-7)
        apply_updates(updates, {x: xv, y: yv})
        assert opt.t.value == t
        for p, expected in zip(params, ref, strict=True):
            np.testing.assert_allclose(p.value, expected, rtol=1e-9, atol=1e-12)
        for state, expected in zip(opt.state()[:-1], [*m, *v], strict=True):
            np.testing.assert_allclose(state.value, expected, rtol=1e-9, atol=1e-15)


def test_adam_state_names_shapes_and_dtypes():
    x, y, params, loss = build_problem("float32")
    opt = gc.optim.Adam(params)
    assert (opt.betas, opt.eps) == ((0.9, 0.999), 1e-7)
    names = [s.name for s in opt.state()]
    assert names[0] == "adam.m[dense1.w]" and names[4] == "adam.v[dense1.w]"
    assert names[-1] == "adam.t" and len(names) == 2 * len(params) + 1
    assert opt.t.shape == () and opt.t.dtype == "float32" and opt.t.value == 0
    for s in opt.state():
        assert s.node.op == "param" and not s.value.any()
    updates = opt.updates(loss)
    assert [t.name for t in updates] == [p.name for p in params] + names  # params first
    for target, value in updates.items():
        assert (value.shape, value.dtype) == (target.shape, target.dtype)


def test_adam_leaves_a_param_outside_the_loss_unchanged():
    x, y, params, loss = build_problem()
    unused = gc.param("unused", np.ones(3))
    updates = gc.optim.Adam([*params, unused], lr=0.1).updates(loss)
    apply_updates(updates, dict(zip((x, y), next(batches(1)), strict=True)))
    np.testing.assert_array_equal(unused.value, np.ones(3))


def test_two_optimizers_keep_separate_named_state():
    _, _, params, _ = build_problem()
    actor = gc.optim.Adam(params[:2], name="actor_adam")
    assert [s.name for s in actor.state()] == [
        "actor_adam.m[dense1.w]",
        "actor_adam.m[dense1.b]",
        "actor_adam.v[dense1.w]",
        "actor_adam.v[dense1.b]",
        "actor_adam.t",
    ]


# ---- SGD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_numpy_over_20_steps(momentum):
    x, y, params, loss = build_problem()
    opt = gc.optim.SGD(params, lr=0.1, momentum=momentum)
    updates = opt.updates(loss)
    assert len(updates) == len(params) * (2 if momentum else 1)
    ref = [p.value.copy() for p in params]
    buffers = [np.zeros_like(w) for w in ref]
    for xv, yv in batches(20):
        _, grads = numpy_loss_and_grads(ref, xv, yv)
        ref, buffers = numpy_sgd(ref, grads, buffers, 0.1, momentum)
        apply_updates(updates, {x: xv, y: yv})
        for p, expected in zip(params, ref, strict=True):
            np.testing.assert_allclose(p.value, expected, rtol=1e-9, atol=1e-12)
    if momentum:
        assert opt.state()[0].name == "sgd.momentum[dense1.w]"
        for state, expected in zip(opt.state(), buffers, strict=True):
            np.testing.assert_allclose(state.value, expected, rtol=1e-9, atol=1e-12)
    else:
        assert opt.state() == []


def test_sgd_with_a_tensor_learning_rate():
    w = gc.param("w", np.array([1.0, -2.0]))
    lr = gc.param("lr", np.float64(0.5))
    loss = (w * w).sum()
    updates = gc.optim.SGD([w], lr=lr).updates(loss)
    assert list(updates) == [w]  # lr is not trained
    apply_updates(updates, {})
    np.testing.assert_array_equal(w.value, [0.0, 0.0])  # w - 0.5 * 2w
    w.value, lr.value = [1.0, 1.0], 0.25
    apply_updates(updates, {})
    np.testing.assert_array_equal(w.value, [0.5, 0.5])


# ---- errors ---------------------------------------------------------------------------------


def test_optimizer_errors():
    x, y, params, loss = build_problem()
    with pytest.raises(gc.GraphcError, match="gc.param"):
        gc.optim.SGD([x], lr=0.1)
    with pytest.raises(gc.GraphcError, match="only floats"):
        gc.optim.Adam([gc.param("count", np.zeros(2, "int32"))])
    with pytest.raises(gc.ShapeError, match="scalar"):
        gc.optim.Adam(params).updates(x.sum(axis=0))
    with pytest.raises(gc.ShapeError, match="lr"):
        gc.optim.SGD(params, lr=gc.param("lr", np.ones(2)))
