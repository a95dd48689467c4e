"""The wave-2 losses of gc.nn: bce_with_logits, nll_loss, huber_loss and softmax_cross_entropy's
label smoothing.

Each against a NumPy re-statement (float64 oracles for float32 and float64 graphs), against
PyTorch's loss modules where torch is installed, gradients against finite differences in
float64, and compiled (values and gradients) against the reference interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(2024)
DTYPES = ["float32", "float64"]
RTOL = {"float32": 2e-6, "float64": 1e-13}


def _normal(*shape, scale=1.0):
    return scale * RNG.standard_normal(shape)


def _log_softmax(z):
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# ---- NumPy re-statements (float64) ----------------------------------------------------------


def numpy_bce_with_logits(x, y):
    """mean(-y log σ(x) - (1 - y) log(1 - σ(x))) = mean(log(1 + e^x) - x y)."""
    return np.mean(np.logaddexp(0.0, x) - x * y)


def numpy_nll(log_probs, labels):
    return -np.mean(np.take_along_axis(log_probs, labels[..., None], -1))


def numpy_huber(pred, target, delta):
    d = np.abs(pred - target)
    return np.mean(np.where(d < delta, 0.5 * d**2, delta * (d - 0.5 * delta)))


def numpy_smoothed_cross_entropy(logits, targets, smoothing):
    """targets: one-hot or probability rows; smoothed to (1 - ε) p + ε / classes."""
    smoothed = (1 - smoothing) * targets + smoothing / logits.shape[-1]
    return -np.mean(np.sum(smoothed * _log_softmax(logits), -1))


# the cases: (loss name, graphc call on (prediction, target), NumPy re-statement, data)
def _cases():
    logits = _normal(4, 3, scale=3.0)
    logits[0, 0] = 0.0  # the kink of max(x, 0) and |x|
    probs = RNG.uniform(size=(4, 3))
    log_probs = _log_softmax(_normal(5, 4))
    labels = RNG.integers(0, 4, size=5)
    pred, target = _normal(3, 4), _normal(3, 4)  # |d| on both sides of delta = 0.7
    class_logits, classes = _normal(5, 4), RNG.integers(0, 4, size=5)
    soft = RNG.dirichlet(np.ones(4), size=5)
    return [
        ("bce", gc.nn.bce_with_logits, numpy_bce_with_logits, logits, probs),
        ("nll", gc.nn.nll_loss, numpy_nll, log_probs, labels),
        (
            "huber",
            lambda p, t: gc.nn.huber_loss(p, t, delta=0.7),
            lambda p, t: numpy_huber(p, t, 0.7),
            pred,
            target,
        ),
        (
            "smoothing-int",
            lambda z, c: gc.nn.softmax_cross_entropy(z, c, label_smoothing=0.1),
            lambda z, c: numpy_smoothed_cross_entropy(z, np.eye(4)[c], 0.1),
            class_logits,
            classes,
        ),
        (
            "smoothing-probs",
            lambda z, p: gc.nn.softmax_cross_entropy(z, p, label_smoothing=0.25),
            lambda z, p: numpy_smoothed_cross_entropy(z, p, 0.25),
            class_logits,
            soft,
        ),
    ]


CASES = {case[0]: case for case in _cases()}


def _graph(name, dtype):
    """(loss, its gradient with respect to the prediction, the prediction input, feed)."""
    _, loss_fn, _, prediction, target = CASES[name]
    x = gc.input("prediction", prediction.shape, dtype)
    t_dtype = dtype if target.dtype.kind == "f" else "int64"
    t = gc.input("target", target.shape, t_dtype)
    loss = loss_fn(x, t)
    return loss, gc.grad(loss, x), x, {x: prediction.astype(dtype), t: target.astype(t_dtype)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_loss_value_matches_numpy(name, dtype):
    _, _, reference, prediction, target = CASES[name]
    loss, _, _, feed = _graph(name, dtype)
    value = gc.evaluate(loss, feed)
    assert value.dtype == dtype and value.shape == ()
    expected = reference(prediction.astype(dtype).astype("float64"), target)
    np.testing.assert_allclose(value, expected, rtol=RTOL[dtype])


@pytest.mark.parametrize("name", list(CASES))
def test_loss_gradient_matches_finite_differences(name):
    _, loss_fn, _, prediction, target = CASES[name]
    x = gc.param("prediction", prediction)
    gc.check_grad(loss_fn(x, target), [x], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_loss_and_gradient_equal_the_interpreter(name, dtype):
    loss, gradient, _, feed = _graph(name, dtype)
    inputs = list(feed)
    step = gc.compile(inputs=inputs, outputs=[loss, gradient])
    compiled = step(*feed.values())
    interpreted = gc.evaluate([loss, gradient], feed)
    for got, expected in zip(compiled, interpreted, strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=10 * RTOL[dtype], atol=1e-7)


# ---- PyTorch as a second oracle -------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed: no second oracle")


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_and_gradients_match_pytorch(dtype):
    torch = _torch()
    functional = torch.nn.functional
    torch_losses = {
        "bce": lambda x, t: functional.binary_cross_entropy_with_logits(x, t),
        "nll": lambda x, t: functional.nll_loss(x, t),
        "huber": lambda x, t: functional.huber_loss(x, t, delta=0.7),
        "smoothing-int": lambda x, t: functional.cross_entropy(x, t, label_smoothing=0.1),
        "smoothing-probs": lambda x, t: functional.cross_entropy(x, t, label_smoothing=0.25),
    }
    for name, torch_loss in torch_losses.items():
        loss, gradient, _, feed = _graph(name, dtype)
        prediction, target = feed.values()
        x = torch.tensor(prediction, requires_grad=True)
        expected = torch_loss(x, torch.tensor(target))
        expected.backward()
        value, grad = gc.evaluate([loss, gradient], feed)
        np.testing.assert_allclose(value, expected.item(), rtol=10 * RTOL[dtype], err_msg=name)
        np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


# ---- properties of each loss ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_is_stable_at_extreme_logits(dtype):
    logits = gc.param("logits", np.array([1e4, -1e4, 80.0, -80.0, 0.0], dtype))
    targets = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    loss = gc.nn.bce_with_logits(logits, targets)
    value, gradient = gc.evaluate([loss, gc.grad(loss, logits)])
    # log(1 + e^1e4) - 0 = 1e4, the same for the second; e^-80 vanishes; log 2 at 0
    np.testing.assert_allclose(value, (1e4 + 1e4 + np.log(2)) / 5, rtol=1e-6)
    # sigmoid(x) - y over 5: 1, -1, 0, 0, 0 (sigmoid(0) - 0.5) at the kink
    np.testing.assert_allclose(gradient, np.array([1.0, -1.0, 0.0, 0.0, 0.0]) / 5, atol=1e-7)


def test_bce_with_logits_accepts_integer_and_bool_targets():
    logits = gc.input("logits", (4,), "float64")
    xv = _normal(4)
    as_bool = gc.nn.bce_with_logits(logits, np.array([True, False, True, True]))
    as_int = gc.nn.bce_with_logits(logits, gc.const(np.array([1, 0, 1, 1])))
    expected = numpy_bce_with_logits(xv, np.array([1.0, 0, 1, 1]))
    np.testing.assert_allclose(gc.evaluate([as_bool, as_int], {logits: xv}), [expected] * 2)


def test_huber_is_half_the_square_inside_delta_and_linear_outside():
    pred = gc.input("pred", (4,), "float64")
    diffs = np.array([-3.0, -0.5, 0.25, 2.0])
    value = gc.evaluate(gc.nn.huber_loss(pred, np.zeros(4), delta=1.0), {pred: diffs})
    np.testing.assert_allclose(value, (2.5 + 0.125 + 0.03125 + 1.5) / 4, rtol=1e-15)
    gradient = gc.evaluate(
        gc.grad(gc.nn.huber_loss(pred, np.zeros(4), delta=2.0), pred), {pred: diffs}
    )
    np.testing.assert_allclose(gradient, np.array([-2.0, -0.5, 0.25, 2.0]) / 4)  # clipped at ±δ


def test_nll_loss_of_log_softmax_is_softmax_cross_entropy():
    logits = gc.input("logits", (3, 2, 5), "float64")
    labels = RNG.integers(0, 5, size=(3, 2))
    feed = {logits: _normal(3, 2, 5)}
    nll = gc.nn.nll_loss(gc.log_softmax(logits), labels)
    np.testing.assert_allclose(
        *gc.evaluate([nll, gc.nn.softmax_cross_entropy(logits, labels)], feed), rtol=1e-14
    )


def test_label_smoothing_zero_builds_the_unsmoothed_loss_and_one_the_uniform_target():
    logits = gc.input("logits", (4, 3), "float64")
    labels = np.array([0, 2, 1, 1])
    loss = gc.nn.softmax_cross_entropy
    smoothed, plain = loss(logits, labels, label_smoothing=0.0), loss(logits, labels)  # one line
    assert str(gc.Program([logits], smoothed)) == str(gc.Program([logits], plain))
    lv = _normal(4, 3)
    uniform = gc.evaluate(gc.nn.softmax_cross_entropy(logits, labels, 1.0), {logits: lv})
    np.testing.assert_allclose(uniform, -np.mean(_log_softmax(lv)), rtol=1e-14)


# ---- errors ---------------------------------------------------------------------------------


def test_loss_errors_name_the_loss_and_the_shapes():
    logits = gc.input("logits", (4, 3))
    with pytest.raises(gc.ShapeError, match=r"bce_with_logits: .*f32\[4,3\].*f32\[4\]"):
        gc.nn.bce_with_logits(logits, gc.input("t", (4,)))
    with pytest.raises(gc.DTypeError, match="bce_with_logits: the prediction must be float"):
        gc.nn.bce_with_logits(gc.input("i", (4,), "int32"), np.zeros(4))
    with pytest.raises(gc.ShapeError, match=r"nll_loss: integer labels .* shape \(4,\)"):
        gc.nn.nll_loss(logits, np.zeros(3, "int64"))
    with pytest.raises(gc.DTypeError, match="nll_loss: labels must be integer classes"):
        gc.nn.nll_loss(logits, np.zeros((4, 3)))
    with pytest.raises(gc.DTypeError, match="nll_loss: log_probs must be float"):
        gc.nn.nll_loss(gc.input("i", (4, 3), "int32"), np.zeros(4, "int64"))
    with pytest.raises(gc.ShapeError, match="outside"):
        gc.nn.nll_loss(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(gc.ShapeError, match="huber_loss: prediction"):
        gc.nn.huber_loss(logits, np.zeros((3, 4)))
    for delta in (0.0, -1.0, True, "1"):
        with pytest.raises(gc.GraphcError, match="huber_loss: delta must be > 0"):
            gc.nn.huber_loss(logits, np.zeros((4, 3)), delta=delta)
    for smoothing in (-0.1, 1.5, None):
        with pytest.raises(gc.GraphcError, match="label_smoothing must be in"):
            gc.nn.softmax_cross_entropy(logits, np.zeros(4, "int64"), label_smoothing=smoothing)


def test_a_fed_label_out_of_range_contributes_zero_to_nll():
    log_probs = gc.input("log_probs", (2, 3), "float64")
    labels = gc.input("labels", (2,), "int64")
    lv = _log_softmax(_normal(2, 3))
    value = gc.evaluate(gc.nn.nll_loss(log_probs, labels), {log_probs: lv, labels: [1, 7]})
    np.testing.assert_allclose(value, -lv[0, 1] / 2, rtol=1e-15)
