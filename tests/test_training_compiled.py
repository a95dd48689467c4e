"""Training steps compiled with gc.compile: optimizers against NumPy, and a real training run.

The same references as tests/test_optim.py, but each step is one compiled call that
updates parameters and optimizer state in place.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_optim import batches, build_problem, numpy_adam, numpy_loss_and_grads, numpy_sgd

import graphc as gc


def test_compiled_adam_matches_textbook_numpy_over_20_steps():
    x, y, params, loss = build_problem()
    opt = gc.optim.Adam(params, lr=0.05, betas=(0.8, 0.99), eps=1e-7)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))
    ref = [p.value.copy() for p in params]
    m = [np.zeros_like(w) for w in ref]
    v = [np.zeros_like(w) for w in ref]
    for t, (xv, yv) in enumerate(batches(20), start=1):
        ref_loss, grads = numpy_loss_and_grads(ref, xv, yv)
        np.testing.assert_allclose(step(xv, yv), ref_loss, rtol=1e-12)
        ref, m, v = numpy_adam(ref, grads, m, v, t, 0.05, 0.8, 0.99, 1e-7)
        assert opt.t.value == t
        for p, expected in zip(params, ref, strict=True):
            np.testing.assert_allclose(p.value, expected, rtol=1e-9, atol=1e-12)
        for state, expected in zip(opt.state()[:-1], [*m, *v], strict=True):
            np.testing.assert_allclose(state.value, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_compiled_sgd_matches_numpy_over_20_steps(momentum):
    x, y, params, loss = build_problem()
    opt = gc.optim.SGD(params, lr=0.1, momentum=momentum)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))
    ref = [p.value.copy() for p in params]
    buffers = [np.zeros_like(w) for w in ref]
    for xv, yv in batches(20):
        _, grads = numpy_loss_and_grads(ref, xv, yv)
        ref, buffers = numpy_sgd(ref, grads, buffers, 0.1, momentum)
        step(x=xv, y=yv)
        for p, expected in zip(params, ref, strict=True):
            np.testing.assert_allclose(p.value, expected, rtol=1e-9, atol=1e-12)


def test_max_of_five_training_run():
    """RLtools' example: a 5-32-16-1 MLP learns max(x) with Adam at batch 32, float32."""
    x, y = gc.input("x", (32, 5)), gc.input("y", (32, 1))
    model = gc.nn.Sequential(
        [gc.nn.Dense(32, "relu"), gc.nn.Dense(16, "relu"), gc.nn.Dense(1)], seed=0
    )
    loss = gc.nn.mse_loss(model(x), y)
    opt = gc.optim.Adam(model.params(), lr=1e-3)
    train = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))
    x_test = gc.input("x_test", (256, 5))
    predict = gc.compile(inputs=[x_test], outputs=model(x_test))  # shares the weights

    rng = np.random.default_rng(0)
    test_x = rng.uniform(-1, 1, (256, 5)).astype("float32")
    test_y = test_x.max(axis=1, keepdims=True)
    initial_error = np.mean((predict(test_x) - test_y) ** 2)
    for _ in range(3000):
        batch = rng.uniform(-1, 1, (32, 5)).astype("float32")
        train(batch, batch.max(axis=1, keepdims=True))
    prediction = predict(test_x)
    final_error = np.mean((prediction - test_y) ** 2)

    assert opt.t.value == 3000
    assert final_error < 0.01 and final_error < initial_error / 20  # interpreter: 0.0025
    reference = gc.evaluate(model(x_test), {x_test: test_x})  # the trained weights, interpreted
    np.testing.assert_allclose(prediction, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
def test_compiled_dense_activations_equal_the_interpreter(activation):
    x = gc.input("x", (8, 5), "float64")
    layer = gc.nn.Dense(3, activation, seed=0, dtype="float64")
    y = layer(x)
    xv = np.random.default_rng(2).standard_normal((8, 5))
    expected = gc.evaluate(y, {x: xv})
    np.testing.assert_allclose(gc.compile(inputs=[x], outputs=y)(xv), expected, rtol=1e-12)


def test_compiled_cross_entropy_step_with_integer_labels():
    x, labels = gc.input("x", (16, 4), "float64"), gc.input("labels", (16,), "int64")
    model = gc.nn.MLP(hidden=8, layers=2, out=3, seed=0, dtype="float64")
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    updates = gc.optim.SGD(model, lr=0.5).updates(loss)
    step = gc.compile(inputs=[x, labels], outputs=loss, updates=updates)
    rng = np.random.default_rng(3)
    xv, lv = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    expected = gc.evaluate([loss, *updates.values()], {x: xv, labels: lv})
    np.testing.assert_allclose(step(xv, lv), expected[0], rtol=1e-12)
    for p, value in zip(updates, expected[1:], strict=True):
        np.testing.assert_allclose(p.value, value, rtol=1e-10, atol=1e-14)
