"""Convolution and pooling: values and gradients against loop-based NumPy meanings, finite
differences and (where installed) PyTorch; compiled against the interpreter; the compiled
forms read windows in place (no im2col buffer); bad shapes are ShapeErrors naming the op."""

from __future__ import annotations

import numpy as np
import pytest
from optable import np_conv, np_window

import graphc as gc
from graphc.errors import ShapeError

# (input shape, weight shape, stride, padding, dilation, groups)
CONVS = [
    ((2, 3, 8, 9), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, 1, 2),
    ((1, 2, 7, 7), (2, 2, 2, 2), 1, "same", 2, 1),
    ((3, 6, 10, 10), (6, 1, 3, 3), (2, 1), ((1, 0), (2, 1)), (1, 2), 6),  # depthwise
    ((2, 3, 10), (5, 3, 4), 1, ((1, 2),), 1, 1),  # 1-d
    ((1, 2, 5, 4, 6), (3, 2, 2, 3, 2), (1, 2, 1), 1, 1, 1),  # 3-d
]


def _np_pad(x, padding, kernel, dilation):
    rank = x.ndim - 2
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, np.broadcast_to(dilation, rank))]
        pairs = [(t // 2, t - t // 2) for t in totals]
    elif isinstance(padding, tuple) and isinstance(padding[0], tuple):
        pairs = list(padding)
    else:
        pairs = [(p, p) for p in np.broadcast_to(padding, rank)]
    return np.pad(x, [(0, 0), (0, 0), *pairs])


def _as_tuple(value, rank):
    return tuple(int(v) for v in np.broadcast_to(value, rank))


def np_conv_full(x, w, stride, padding, dilation, groups):
    rank = x.ndim - 2
    dilation = _as_tuple(dilation, rank)
    padded = _np_pad(x, padding, w.shape[2:], dilation)
    return np_conv(padded, w, _as_tuple(stride, rank), dilation, groups)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"{c[0]}*{c[1]}")
def test_conv_values_gradients_and_compiled(case, dtype):
    shape, wshape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(shape).astype(dtype)
    w = gc.param("w", rng.standard_normal(wshape).astype(dtype))
    x = gc.input("x", shape, dtype)
    y = gc.conv(x, w, stride, padding, dilation, groups)
    expected = np_conv_full(xv, w.value, stride, padding, dilation, groups)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(gc.evaluate(y, {x: xv}), expected, rtol=tol, atol=tol)
    weights = gc.const(rng.standard_normal(y.shape).astype(dtype))
    loss = (y * y * weights).sum()
    gx, gw = gc.grad(loss, [x, w])
    step = gc.compile(inputs=[x], outputs=[y, gx, gw])
    for compiled, interpreted in zip(step(xv), gc.evaluate([y, gx, gw], {x: xv})):
        scale = np.abs(interpreted).max()
        np.testing.assert_allclose(compiled, interpreted, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("case", CONVS[:4] + CONVS[5:], ids=lambda c: f"{c[0]}*{c[1]}")
def test_conv_gradients_match_finite_differences(case):
    shape, wshape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    small = (1, *shape[1:])
    xv = rng.standard_normal(small)
    w = gc.param("w", rng.standard_normal(wshape))
    x = gc.input("x", small, "float64")
    y = gc.conv(x, w, stride, padding, dilation, groups)
    loss = (gc.tanh(y) * gc.const(rng.standard_normal(y.shape))).sum()
    gc.check_grad(loss, [x, w], {x: xv})
    tangent = rng.standard_normal(small)
    (jvp,) = gc.evaluate([gc.jvp(loss, {x: gc.const(tangent)})], {x: xv})
    eps = 1e-6
    shifted = [gc.evaluate(loss, {x: xv + sign * eps * tangent}) for sign in (1, -1)]
    assert jvp == pytest.approx((shifted[0] - shifted[1]) / (2 * eps), rel=1e-6)


@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"{c[0]}*{c[1]}")
def test_conv_matches_pytorch(case):
    torch = pytest.importorskip("torch", reason="PyTorch is the second oracle where installed")
    shape, wshape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(2)
    xv, wv = rng.standard_normal(shape), rng.standard_normal(wshape)
    rank = len(shape) - 2
    tx = torch.tensor(xv, requires_grad=True)
    tw = torch.tensor(wv, requires_grad=True)
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        flat = [p for pair in reversed(padding) for p in pair]
        t_in, t_pad = torch.nn.functional.pad(tx, flat), 0
    else:
        t_in, t_pad = tx, padding
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}.get(
        rank, torch.nn.functional.conv3d
    )
    ty = conv(t_in, tw, stride=stride, padding=t_pad, dilation=dilation, groups=groups)
    (ty * ty).sum().backward()
    x, w = gc.input("x", shape, "float64"), gc.param("w", wv)
    y = gc.conv(x, w, stride, padding, dilation, groups)
    gx, gw = gc.grad((y * y).sum(), [x, w])
    step = gc.compile(inputs=[x], outputs=[y, gx, gw])
    for ours, theirs in zip(step(xv), (ty.detach(), tx.grad, tw.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-10)


POOLS = [
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 2, 7, 9), 3, 2, 1),
    ((2, 2, 6, 6), (2, 3), (1, 2), 0),
    ((2, 3, 9), 3, 2, 1),  # 1-d
]


def np_pool(x, kernel, stride, padding, how):
    rank = x.ndim - 2
    kernel = _as_tuple(kernel, rank)
    stride = kernel if stride is None else _as_tuple(stride, rank)
    fill = -np.inf if how == "max" else 0.0
    pads = [(0, 0), (0, 0), *[(p, p) for p in _as_tuple(padding, rank)]]
    windows = np_window(np.pad(x, pads, constant_values=fill), kernel, stride, (1,) * rank)
    axes = tuple(range(x.ndim, windows.ndim))
    return windows.max(axis=axes) if how == "max" else windows.mean(axis=axes)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("how", ["max", "avg"])
@pytest.mark.parametrize("case", POOLS, ids=lambda c: str(c[0]))
def test_pooling_values_gradients_and_compiled(case, how, dtype):
    shape, kernel, stride, padding = case
    rng = np.random.default_rng(3)
    xv = rng.standard_normal(shape).astype(dtype)
    x = gc.input("x", shape, dtype)
    pool = gc.max_pool if how == "max" else gc.avg_pool
    y = pool(x, kernel, stride, padding)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(
        gc.evaluate(y, {x: xv}), np_pool(xv, kernel, stride, padding, how), rtol=tol, atol=tol
    )
    (gx,) = gc.grad((y * gc.const(rng.standard_normal(y.shape).astype(dtype))).sum(), [x])
    step = gc.compile(inputs=[x], outputs=[y, gx])
    for compiled, interpreted in zip(step(xv), gc.evaluate([y, gx], {x: xv})):
        np.testing.assert_allclose(compiled, interpreted, rtol=tol, atol=tol)
    if dtype == "float64":
        gc.check_grad((y * y).sum(), [x], {x: xv})


def test_max_pool_gradient_goes_to_the_first_maximum_as_pytorch():
    x = gc.input("x", (1, 1, 2, 4), "float64")
    xv = np.array([[[[0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 3.0, 2.0]]]])  # ties in both windows
    (gx,) = gc.grad(gc.max_pool(x, 2).sum(), [x])
    expected = [[[[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]]
    np.testing.assert_array_equal(gc.evaluate(gx, {x: xv}), expected)
    np.testing.assert_array_equal(gc.compile(inputs=[x], outputs=gx)(xv), expected)


@pytest.mark.parametrize("how", ["max", "avg"])
def test_pooling_matches_pytorch(how):
    torch = pytest.importorskip("torch", reason="PyTorch is the second oracle where installed")
    rng = np.random.default_rng(4)
    xv = np.maximum(rng.standard_normal((2, 3, 9, 8)), 0.0)  # relu'd: ties at zero
    tx = torch.tensor(xv, requires_grad=True)
    pool = torch.nn.functional.max_pool2d if how == "max" else torch.nn.functional.avg_pool2d
    ty = pool(tx, 3, 2, 1)
    (ty * ty).sum().backward()
    x = gc.input("x", xv.shape, "float64")
    y = (gc.max_pool if how == "max" else gc.avg_pool)(x, 3, 2, 1)
    (gx,) = gc.grad((y * y).sum(), [x])
    values, grads = gc.compile(inputs=[x], outputs=[y, gx])(xv)
    np.testing.assert_allclose(values, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def _lenet_step(batch: int):
    """LeNet-5's training step (SGD), its params created in another order than first used."""
    rng = np.random.default_rng(5)
    f1 = gc.param("f1.w", rng.standard_normal((400, 10)) * 0.05)  # created first, used last
    w1 = gc.param("c1.w", rng.standard_normal((6, 1, 5, 5)) * 0.2)
    w2 = gc.param("c2.w", rng.standard_normal((16, 6, 5, 5)) * 0.1)
    x = gc.input("x", (batch, 1, 28, 28), "float64")
    h = gc.max_pool(gc.relu(gc.conv(x, w1, padding=2)), 2)
    h = gc.max_pool(gc.relu(gc.conv(h, w2)), 2)
    loss = ((h.reshape(batch, 400) @ f1) ** 2).mean()
    params = [f1, w1, w2]
    grads = gc.grad(loss, params)
    updates = {p: p - 0.1 * g for p, g in zip(params, grads)}
    return x, loss, params, updates


def test_a_lenet_training_step_compiled_equals_interpreted_and_stores_no_windows():
    x, loss, params, updates = _lenet_step(3)
    step = gc.compile(inputs=[x], outputs=loss, updates=updates)
    xv = np.random.default_rng(6).standard_normal((3, 1, 28, 28))
    expected = gc.evaluate([loss, *updates.values()], {x: xv})
    before = [p.value.copy() for p in params]
    assert step(xv) == pytest.approx(expected[0], rel=1e-12)
    for p, new, old in zip(params, expected[1:], before):
        np.testing.assert_allclose(p.value, new, rtol=1e-10, atol=1e-12)
        assert not np.array_equal(p.value, old)
    # no buffer holds a window tensor (an im2col matrix): the largest is a padded input, an
    # activation or a spread gradient, well below the first layer's windows (3 samples x 25
    # taps x 28 x 28 positions, float64)
    plan = step.dump("memory")
    sizes = [int(line.split()[2]) for line in plan.splitlines()[1:] if line.startswith("#")]
    assert max(sizes) < 3 * 25 * 28 * 28 * 8 / 2


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda x: gc.conv(x, np.zeros((4, 3, 9, 9))), "reaches 9 elements"),
        (lambda x: gc.conv(x, np.zeros((4, 3, 3, 3)), stride=0), "must be positive"),
        (lambda x: gc.conv(x, np.zeros((4, 2, 3, 3))), "3 channels"),
        (lambda x: gc.conv(x, np.zeros((4, 1, 3, 3)), groups=2), "groups=2"),
        (lambda x: gc.conv(x, np.zeros((4, 3, 3))), "kernel axes"),
        (lambda x: gc.conv(x, np.zeros((4, 3, 3, 3)), stride=2, padding="same"), "stride 1"),
        (lambda x: gc.max_pool(x, 9), "reaches 9 elements"),
        (lambda x: gc.max_pool(x, 2, padding=2), "at most half"),
        (lambda x: gc.avg_pool(x, (2, 2, 2)), "tuple of 2 ints"),
    ],
)
def test_bad_shapes_are_shape_errors_naming_the_op_and_line(build, message):
    x = gc.input("x", (2, 3, 8, 8), "float32")
    with pytest.raises(ShapeError, match=message) as error:
        build(x)
    assert "test_conv.py" in str(error.value)


def test_a_batched_convolution_splits_its_samples_over_threads_with_equal_results(monkeypatch):
    rng = np.random.default_rng(7)
    x = gc.input("x", (16, 6, 14, 14), "float32")
    w = gc.param("w", rng.standard_normal((16, 6, 5, 5)).astype(np.float32))
    y = gc.relu(gc.conv(x, w))
    gx, gw = gc.grad((y * y).sum(), [x, w])
    xv = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2):
        monkeypatch.setenv("GRAPHC_THREADS", str(threads))
        step = gc.compile(inputs=[x], outputs=[y, gx, gw])
        results.append(step(xv))
        llvm = step.dump("llvm")
        assert (".batch8" in llvm) == (threads == 2)  # two chunks of 8 samples
        # the weight gradient sums its 16 samples in 4 parts, two parts a chunk
        assert (".batch2" in llvm) == (threads == 2)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    expected = gc.evaluate([y, gx, gw], {x: xv.astype(np.float64)})
    for got, want in zip(results[0], expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3 * np.abs(want).max())


def test_dumps_print_window_views_as_index_maps_and_parse_back():
    from graphc.ir.parser import parse_graph
    from graphc.ir.printer import print_graph

    x = gc.input("x", (1, 2, 9, 9), "float32")
    y = gc.conv(x, np.ones((3, 2, 3, 3), np.float32), stride=2, dilation=(1, 2))
    step = gc.compile(inputs=[x], outputs=y)
    fused = step.dump("fused")
    assert "= window %" in fused and "[i0, i1, 2*i2 + i4, 2*i3 + 2*i5]" in fused
    text = print_graph(step.optimized)  # with the comments
    assert "reads %" in text
    assert print_graph(parse_graph(text), locations=False) == print_graph(
        step.optimized, locations=False
    )
