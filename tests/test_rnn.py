"""gc.nn.GRU and gc.nn.LSTM (on gc.scan) against torch.nn.GRU / LSTM with copied weights:
outputs and gradients, interpreted and compiled, float32 and float64; a NumPy reference of
PyTorch's gate equations where PyTorch is missing; shapes, names, errors and training."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.errors import ShapeError

LAYERS = {"GRU": gc.nn.GRU, "LSTM": gc.nn.LSTM}
TOL = {"float32": 2e-5, "float64": 1e-11}


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (a second oracle)")
    torch.manual_seed(0)
    return torch


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_rnn(kind, x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's equations, batch-first, zero initial state: (every h, last h)."""
    n, steps, _ = x.shape
    units = w_hh.shape[1]
    h, c, hs = np.zeros((n, units)), np.zeros((n, units)), []
    for t in range(steps):
        gx, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if kind == "GRU":
            r = sigmoid(gx[:, :units] + gh[:, :units])
            z = sigmoid(gx[:, units : 2 * units] + gh[:, units : 2 * units])
            new = np.tanh(gx[:, 2 * units :] + r * gh[:, 2 * units :])
            h = (1 - z) * new + z * h
        else:
            i, f, g, o = np.split(gx + gh, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        hs.append(h)
    return np.stack(hs, 1), h


def model(kind, dtype, return_sequences, n=3, steps=5, features=4, units=6):
    layer = LAYERS[kind](units, return_sequences, seed=1, dtype=dtype)
    x = gc.input("x", (n, steps, features), dtype)
    y = layer(x)
    value = np.random.default_rng(2).normal(size=(n, steps, features)).astype(dtype)
    return layer, x, y, value


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_outputs_match_the_gate_equations_interpreted_and_compiled(kind, dtype, return_sequences):
    layer, x, y, value = model(kind, dtype, return_sequences)
    weights = [p.value.astype(np.float64) for p in layer.params()]
    every, last = numpy_rnn(kind, value.astype(np.float64), *weights)
    want = every if return_sequences else last
    interpreted = gc.evaluate(y, {x: value})
    compiled = gc.compile([x], y, cache=False)(value)
    assert interpreted.shape == want.shape and compiled.dtype == np.dtype(dtype)
    np.testing.assert_allclose(interpreted, want, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(compiled, interpreted, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("kind", LAYERS)
def test_params_names_and_layout_are_pytorchs(kind):
    layer, *_ = model(kind, "float32", False)
    gates = 3 if kind == "GRU" else 4
    names = [p.name for p in layer.params()]
    prefix = kind.lower()
    assert names == [f"{layer.name}.{a}" for a in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert layer.name.startswith(prefix)
    shapes = [p.shape for p in layer.params()]
    assert shapes == [(gates * 6, 4), (gates * 6, 6), (gates * 6,), (gates * 6,)]
    bound = 1 / np.sqrt(6)
    assert all(np.abs(p.value).max() <= bound for p in layer.params())


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_against_torch_outputs_and_gradients(kind, dtype, return_sequences):
    torch = _torch()
    layer, x, y, value = model(kind, dtype, return_sequences)
    target = np.random.default_rng(3).normal(size=y.shape).astype(dtype)
    loss = ((y - target) ** 2).mean()
    grads = gc.grad(loss, [x, *layer.params()])
    step = gc.compile([x], [y, *grads], cache=False)
    got = step(value)

    module = getattr(torch.nn, kind)(4, 6, batch_first=True).to(getattr(torch, dtype))
    with torch.no_grad():
        for p, name in zip(layer.params(), ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            getattr(module, f"{name}_l0").copy_(torch.from_numpy(p.value.copy()))
    tx = torch.from_numpy(value.copy()).requires_grad_(True)
    every, state = module(tx)
    ty = every if return_sequences else (state[0] if kind == "LSTM" else state)[0]
    tloss = ((ty - torch.from_numpy(target)) ** 2).mean()
    tloss.backward()
    want = [ty.detach().numpy(), tx.grad.numpy()]
    want += [getattr(module, f"{n}_l0").grad.numpy() for n in ("weight_ih", "weight_hh")]
    want += [getattr(module, f"{n}_l0").grad.numpy() for n in ("bias_ih", "bias_hh")]
    tol = 1e-5 if dtype == "float32" else 1e-11
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    interpreted = gc.evaluate([y, *grads], {x: value})
    for a, b in zip(interpreted, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", LAYERS)
def test_gradients_against_finite_differences(kind):
    layer, x, y, value = model(kind, "float64", True, n=2, steps=3, features=2, units=3)
    loss = (gc.sin(y) * y).sum()
    gc.check_grad(loss, [x, *layer.params()], {x: value}, rtol=1e-6, atol=1e-8)


def test_bad_inputs_name_the_layer_shapes_and_line():
    gru = gc.nn.GRU(4)
    with pytest.raises(ShapeError, match=r"GRU.*\(batch, steps, features\).*f32\[3,5\].*test_rnn"):
        gru(gc.input("flat", (3, 5)))
    gru(gc.input("x", (2, 3, 5)))
    with pytest.raises(ShapeError, match=r"built for 5 features.*f32\[2,3,6\].*test_rnn"):
        gru(gc.input("wide", (2, 3, 6)))
    with pytest.raises(ShapeError, match="units >= 1"):
        gc.nn.LSTM(0)


def test_a_gru_regressor_learns_compiled():
    """GRU -> Dense(1), MSE, Adam: the sum of a sequence, learned in 150 compiled steps."""
    rng = np.random.default_rng(0)
    x = gc.input("x", (32, 8, 1))
    target = gc.input("target", (32, 1))
    net = gc.nn.Sequential([gc.nn.GRU(16, seed=0), gc.nn.Dense(1, seed=1)])
    loss = ((net(x) - target) ** 2).mean()
    opt = gc.optim.Adam(net.params(), lr=0.01)
    step = gc.compile([x, target], loss, updates=opt.updates(loss), cache=False)
    losses = []
    for _ in range(150):
        value = rng.uniform(-1, 1, (32, 8, 1)).astype(np.float32)
        losses.append(float(step(value, value.sum(1) / 4)))
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])


def gru_training_ir(steps: int) -> str:
    from graphc.codegen.llvm import emit_program
    from graphc.ir.graph import Graph
    from graphc.passes import lower

    x, target = gc.input("x", (4, steps, 3)), gc.input("target", (4, 1))
    net = gc.nn.Sequential([gc.nn.GRU(8, seed=0), gc.nn.Dense(1, seed=1)])
    loss = ((net(x) - target) ** 2).mean()
    updates = gc.optim.Adam(net.params()).updates(loss)
    graph = Graph([loss.node], [(p.node, v.node) for p, v in updates.items()])
    return str(emit_program(*lower(graph), "train"))


def test_a_gru_training_step_compiles_to_the_same_code_at_any_length():
    """Compile time independent of the sequence's length: the LLVM IR of the training step
    at 10 and 1000 steps differs only in numbers (trip counts, the stacked buffers' offsets)."""
    short, long = gru_training_ir(10), gru_training_ir(1000)
    assert len(short.splitlines()) == len(long.splitlines())
    assert abs(len(long) - len(short)) < 0.01 * len(short)
