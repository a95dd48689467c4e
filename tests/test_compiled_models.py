"""Whole models compiled: the worked autodiff examples and a training loop against NumPy.

The same numbers as tests/test_autodiff.py, but every value and gradient comes out of one
native call; and a two-layer ReLU network trained with plain SGD through `updates=` follows
a hand-written NumPy loop at every one of 200 steps.
"""

from __future__ import annotations

import math

import numpy as np

import graphc as gc


def assert_close(got, want, rtol=1e-12):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


def test_scalar_example_values_and_gradients_compiled():
    """y = ln x1 + x1·x2 − sin x2 at (2, 5)."""
    x1, x2 = gc.input("x1", (), "float64"), gc.input("x2", (), "float64")
    y = gc.log(x1) + x1 * x2 - gc.sin(x2)
    d1, d2 = gc.grad(y, [x1, x2])
    step = gc.compile(inputs=[x1, x2], outputs=[y, d1, d2])
    value, g1, g2 = step(2.0, 5.0)
    assert value.shape == g1.shape == g2.shape == ()
    assert_close(value, math.log(2) + 10 - math.sin(5))
    assert_close(value, 11.652071455223083)
    assert_close(g1, 5.5)
    assert_close(g2, 2 - math.cos(5))
    assert_close(g2, 1.7163378145367738)


def test_broadcast_example_gradients_compiled():
    """x1 = ones(2,2), x2 = [1.1], y = x1·(x2+2), z = 3y², out = mean(z)."""
    x1, x2 = gc.input("x1", (2, 2), "float64"), gc.input("x2", (1,), "float64")
    y = x1 * (x2 + 2)
    out = (3 * y**2).mean()
    g1, g2 = gc.grad(out, [x1, x2])
    step = gc.compile(inputs=[x1, x2], outputs=[out, g1, g2])
    value, got1, got2 = step(np.ones((2, 2)), np.array([1.1]))
    assert_close(value, 3 * 3.1**2)
    assert_close(got1, np.full((2, 2), 14.415))
    assert got2.shape == (1,)
    assert_close(got2, [18.6])


def test_linear_layer_applied_twice_compiled():
    w = gc.param("w", np.array([[0.9472]]))
    x, t = gc.input("x", (1, 1), "float64"), gc.input("t", (1, 1), "float64")
    loss = ((x @ w @ w - t) ** 2).sum()
    step = gc.compile(inputs=[x, t], outputs=gc.grad(loss, w))
    gw = step(np.array([[10.0]]), np.array([[5.0]]))
    wv = 0.9472
    assert_close(gw, [[4 * (wv * wv * 10 - 5) * wv * 10]])
    assert_close(gw, [[150.48652]], rtol=1e-7)
    assert w.value[0, 0] == wv  # no updates were asked for


def numpy_step(params, x, y, lr):
    """One SGD step of the 3-32-1 ReLU network with a sum-of-squares loss, by hand."""
    w1, b1, w2, b2 = params
    h = x @ w1 + b1
    a = np.maximum(h, 0)
    out = a @ w2 + b2
    loss = np.sum((out - y) ** 2)
    d_out = 2 * (out - y)
    d_h = (d_out @ w2.T) * (h > 0)
    grads = [x.T @ d_h, d_h.sum(axis=0), a.T @ d_out, d_out.sum(axis=0)]
    return loss, [p - lr * g for p, g in zip(params, grads)]


def test_two_layer_relu_network_trains_like_numpy_for_200_steps():
    rng = np.random.default_rng(0)
    batch, lr = 16, 1e-4
    initial = [
        rng.normal(0, 0.5, (3, 32)),
        rng.normal(0, 0.1, (32,)),
        rng.normal(0, 0.5, (32, 1)),
        np.zeros(1),
    ]
    w1, b1, w2, b2 = params = [
        gc.param(name, value) for name, value in zip(["w1", "b1", "w2", "b2"], initial)
    ]
    x, y = gc.input("x", (batch, 3), "float64"), gc.input("y", (batch, 1), "float64")
    out = gc.relu(x @ w1 + b1) @ w2 + b2
    loss = ((out - y) ** 2).sum()
    grads = gc.grad(loss, params)
    step = gc.compile(
        inputs=[x, y], outputs=loss, updates={p: p - lr * g for p, g in zip(params, grads)}
    )
    reference = [v.copy() for v in initial]
    losses = []
    for _ in range(200):
        xv = rng.uniform(-2, 2, (batch, 3))
        yv = np.sin(xv).sum(axis=1, keepdims=True) + 0.5 * xv[:, :1] ** 2
        want, reference = numpy_step(reference, xv, yv, lr)
        got = step(xv, yv)
        assert got.shape == ()
        assert_close(got, want, rtol=1e-9)
        losses.append(float(got))
    for p, expected in zip(params, reference):
        assert_close(p.value, expected, rtol=1e-9)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])  # it does learn
