"""gc.optim's second wave: AdamW, SGD with weight decay and Nesterov, clip_norm, learning-rate
schedules (cosine_decay) and gradients the caller transformed (updates(loss, grads=...)).

Every configuration runs step by step against a NumPy re-statement (always) and PyTorch's
torch.optim with clip_grad_norm_ and LambdaLR (where torch is installed), interpreted and
compiled, in float32 and float64, on the MLP problem of tests/test_optim.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_optim import (
    apply_updates,
    batches,
    build_problem,
    numpy_adam,
    numpy_loss_and_grads,
    numpy_sgd,
)

import graphc as gc

# ---- optimizers step by step ---------------------------------------------------------------
# STEPS steps: past the schedules' end, where lr is 0

STEPS = 12
CONFIGS = {
    "sgd-weight-decay": dict(kind="sgd", lr=0.1, weight_decay=0.05),
    "sgd-momentum-weight-decay": dict(kind="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov": dict(kind="sgd", lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "sgd-nesterov-cosine-clip": dict(
        kind="sgd", lr=(0.2, 10, 3), momentum=0.8, nesterov=True, clip_norm=0.7
    ),
    "adamw": dict(kind="adamw", lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
    "adamw-cosine-clip": dict(kind="adamw", lr=(0.05, 10, 4), clip_norm=0.8),
    "adam-clip": dict(kind="adam", lr=0.05, clip_norm=0.6),
}


# float32 steps against float64 references: 12 Adam steps of ~lr each, whose direction
# m / sqrt(v) amplifies rounding where the gradient is small, drift by up to ~3e-6
FLOAT32_TOLERANCE = (2e-4, 1e-5)


def numpy_cosine(lr, steps, warmup, t):
    """cosine_decay's docstring, re-stated: the learning rate after t steps."""
    if t >= steps:
        return 0.0
    if t < warmup:
        return lr * t / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(steps - warmup, 1)))


def numpy_clip(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s arithmetic on a list of arrays."""
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    return [g * min(1.0, max_norm / (norm + 1e-6)) for g in grads]


def weight_decay(config):
    """The configuration's weight decay: AdamW's default is 0.01, the others' 0."""
    return config.get("weight_decay", 0.01 if config["kind"] == "adamw" else 0.0)


def make_optimizer(config, params):
    """The graphc optimizer of a configuration."""
    options = {k: v for k, v in config.items() if k not in ("kind", "lr")}
    lr = config["lr"]
    lr = gc.optim.cosine_decay(*lr) if isinstance(lr, tuple) else lr
    if config["kind"] == "sgd":
        return gc.optim.SGD(params, lr, **options)
    if config["kind"] == "adam":
        return gc.optim.Adam(params, lr, eps=1e-7, **options)
    return gc.optim.AdamW(params, lr, **options)


def numpy_trajectory(config, params, steps=STEPS):
    """The params after each of `steps` steps of a configuration, in float64 NumPy."""
    params = [np.array(p, np.float64) for p in params]
    buffers = [np.zeros_like(p) for p in params]
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    trajectory = []
    for t, (xv, yv) in enumerate(batches(steps)):
        _, grads = numpy_loss_and_grads(params, xv, yv)
        if config.get("clip_norm"):
            grads = numpy_clip(grads, config["clip_norm"])
        lr = config["lr"]
        lr = numpy_cosine(*lr, t) if isinstance(lr, tuple) else lr
        decay = weight_decay(config)
        if config["kind"] == "sgd":
            momentum, nesterov = config.get("momentum", 0.0), config.get("nesterov", False)
            params, buffers = numpy_sgd(params, grads, buffers, lr, momentum, decay, nesterov)
        else:
            b1, b2 = config.get("betas", (0.9, 0.999))
            eps = 1e-7 if config["kind"] == "adam" else 1e-8
            params, m, v = numpy_adam(params, grads, m, v, t + 1, lr, b1, b2, eps, decay)
        trajectory.append(params)
    return trajectory


def torch_trajectory(config, params, dtype, steps=STEPS):
    """The params after each step with torch.optim, clip_grad_norm_ and LambdaLR."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: no second oracle")
    weights = [torch.tensor(np.array(p, dtype), requires_grad=True) for p in params]
    lr = config["lr"]
    base_lr = lr[0] if isinstance(lr, tuple) else lr
    decay = weight_decay(config)
    if config["kind"] == "sgd":
        momentum, nesterov = config.get("momentum", 0.0), config.get("nesterov", False)
        opt = torch.optim.SGD(weights, base_lr, momentum, weight_decay=decay, nesterov=nesterov)
    elif config["kind"] == "adam":
        opt = torch.optim.Adam(weights, base_lr, eps=1e-7)
    else:
        opt = torch.optim.AdamW(weights, base_lr, config.get("betas", (0.9, 0.999)), 1e-8, decay)
    schedule = None
    if isinstance(lr, tuple):
        factor = lambda t: numpy_cosine(1.0, lr[1], lr[2], t)  # noqa: E731
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    trajectory = []
    for xv, yv in batches(steps):
        w1, b1, w2, b2 = weights
        pred = torch.tanh(torch.tensor(xv, dtype=w1.dtype) @ w1 + b1) @ w2 + b2
        loss = ((pred - torch.tensor(yv, dtype=w1.dtype)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if config.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(weights, config["clip_norm"])
        opt.step()
        if schedule is not None:
            schedule.step()
        trajectory.append([w.detach().numpy().copy() for w in weights])
    return trajectory


def interpreted_trajectory(config, dtype, steps=STEPS):
    """(initial params, params after each step) of graphc on the reference interpreter."""
    x, y, params, loss = build_problem(dtype)
    initial = [p.value.copy() for p in params]
    updates = make_optimizer(config, params).updates(loss)
    trajectory = []
    for xv, yv in batches(steps):
        apply_updates(updates, {x: xv, y: yv})
        trajectory.append([p.value.copy() for p in params])
    return initial, trajectory


def assert_trajectories_close(got, expected, rtol, atol):
    for step, (got_params, expected_params) in enumerate(zip(got, expected, strict=True)):
        for p, e in zip(got_params, expected_params, strict=True):
            np.testing.assert_allclose(p, e, rtol=rtol, atol=atol, err_msg=f"step {step + 1}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_matches_numpy_step_by_step(name, dtype):
    initial, trajectory = interpreted_trajectory(CONFIGS[name], dtype)
    reference = numpy_trajectory(CONFIGS[name], initial)
    tolerance = (1e-10, 1e-13) if dtype == "float64" else FLOAT32_TOLERANCE
    assert_trajectories_close(trajectory, reference, *tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimizer_matches_pytorch_step_by_step(name, dtype):
    initial, trajectory = interpreted_trajectory(CONFIGS[name], dtype)
    reference = torch_trajectory(CONFIGS[name], initial, dtype)
    tolerance = (1e-10, 1e-13) if dtype == "float64" else FLOAT32_TOLERANCE
    assert_trajectories_close(trajectory, reference, *tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiled_optimizer_step_equals_the_interpreter(name, dtype):
    x, y, params, loss = build_problem(dtype)
    opt = make_optimizer(CONFIGS[name], params)
    step = gc.compile(inputs=[x, y], outputs=loss, updates=opt.updates(loss))
    _, interpreted = interpreted_trajectory(CONFIGS[name], dtype)
    compiled = []
    for xv, yv in batches(STEPS):
        step(xv.astype(dtype), yv.astype(dtype))
        compiled.append([p.value.copy() for p in params])
    tolerance = (1e-11, 1e-14) if dtype == "float64" else (1e-4, 1e-6)
    assert_trajectories_close(compiled, interpreted, *tolerance)
    if opt.t is not None:
        assert opt.t.value == STEPS and opt.t.dtype == dtype


# ---- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cosine_decay_at_the_warmup_boundary_and_the_end(dtype):
    schedule = gc.optim.cosine_decay(0.1, steps=10, warmup=4)
    ts = [0, 1, 3, 4, 5, 7, 9, 10, 11, 1000]
    values = gc.evaluate([schedule(gc.const(np.array(t, dtype))) for t in ts])
    assert all(v.dtype == dtype and v.shape == () for v in values)
    expected = [numpy_cosine(0.1, 10, 4, t) for t in ts]
    np.testing.assert_allclose(values, expected, rtol=1e-6 if dtype == "float32" else 1e-14)
    assert values[0] == 0 and values[3] == np.array(0.1, dtype)  # from 0, the peak at warmup
    assert values[-3] == values[-2] == values[-1] == 0  # 0 from `steps` on, exactly
    assert 0.0066 < values[-4] < 0.0067  # the last step before the end: 0.1 ½(1 + cos(5π/6))


def test_cosine_decay_without_warmup_starts_at_lr_and_with_warmup_equal_steps_ramps():
    plain = gc.optim.cosine_decay(2.0, steps=4)
    ramp = gc.optim.cosine_decay(2.0, steps=4, warmup=4)
    values = gc.evaluate([f(gc.const(float(t))) for f in (plain, ramp) for t in range(6)])
    np.testing.assert_allclose(values[:6], [2.0, 1 + 2**-0.5, 1.0, 1 - 2**-0.5, 0, 0], atol=1e-15)
    np.testing.assert_allclose(values[6:], [0.0, 0.5, 1.0, 1.5, 0, 0])
    assert repr(ramp) == "cosine_decay(2.0, steps=4, warmup=4)"


def test_cosine_decay_matches_pytorch_cosine_annealing():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: no second oracle")
    weight = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=0.3)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    expected = []
    for _ in range(7):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        annealing.step()
    schedule = gc.optim.cosine_decay(0.3, steps=7)
    values = gc.evaluate([schedule(gc.const(float(t))) for t in range(7)])
    np.testing.assert_allclose(values, expected, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_schedule_runs_inside_the_compiled_step_from_the_counter(dtype):
    # loss = sum(c w): the gradient is c, so w moves by lr * c and reveals each step's lr
    c = np.array([1.0, -2.0, 0.5], dtype)
    w = gc.param("w", np.zeros(3, dtype))
    peak = gc.param("peak", np.array(0.5, dtype))  # a Tensor lr inside the schedule
    opt = gc.optim.SGD([w], lr=gc.optim.cosine_decay(peak, steps=6, warmup=2))
    assert [s.name for s in opt.state()] == ["sgd.t"] and opt.t.dtype == dtype
    step = gc.compile(outputs=[], updates=opt.updates((w * c).sum()))
    seen = []
    for _ in range(8):
        before = w.value.copy()
        step()
        seen.append(float(np.mean((before - w.value) / c)))
    expected = [numpy_cosine(0.5, 6, 2, t) for t in range(8)]
    np.testing.assert_allclose(seen, expected, rtol=2e-6 if dtype == "float32" else 1e-12)
    assert opt.t.value == 8
    peak.value[...] = 1.0  # the peak is state: a running schedule can be rescaled
    opt.t.value[...] = 2
    before = w.value.copy()
    step()
    np.testing.assert_allclose((before - w.value) / c, 1.0, rtol=1e-6)


# ---- clip_norm ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip_norm", [10.0, 2.0])  # the gradient's norm is 5: above, below
def test_clip_norm_scales_all_gradients_together(clip_norm, dtype):
    a, b = gc.param("a", np.zeros((2, 2), dtype)), gc.param("b", np.zeros(1, dtype))
    ca, cb = np.array([[2.0, -2.0], [2.0, 2.0]], dtype), np.array([-3.0], dtype)  # norm 5
    loss = (a * ca).sum() + (b * cb).sum()
    step = gc.compile(
        outputs=[], updates=gc.optim.SGD([a, b], 1.0, clip_norm=clip_norm).updates(loss)
    )
    step()
    moved = [-a.value, -b.value]
    expected = numpy_clip([ca.astype("float64"), cb.astype("float64")], clip_norm)
    for got, want in zip(moved, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 1e-15)
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in moved))
    assert norm == pytest.approx(min(5.0, clip_norm), rel=1e-6)


def test_clip_by_global_norm_matches_pytorch_on_mixed_shapes():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: no second oracle")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape) for shape in [(3, 2), (4,), ()]]
    for max_norm in (0.5, 100.0):
        clipped = gc.evaluate(gc.optim.clip_by_global_norm([gc.const(g) for g in grads], max_norm))
        tensors = [torch.tensor(g).requires_grad_() for g in grads]
        for t, g in zip(tensors, grads, strict=True):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tensors, max_norm)
        for got, t in zip(clipped, tensors, strict=True):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-14)


# ---- gradients the caller transformed -------------------------------------------------------


def test_updates_takes_transformed_gradients_as_a_list_or_a_dict():
    x, y, params, loss = build_problem()
    feed = dict(zip((x, y), next(batches(1)), strict=True))
    opt = gc.optim.SGD(params, lr=0.1)
    doubled = [2 * g for g in gc.grad(loss, params)]
    as_list = opt.updates(loss, grads=doubled)
    as_dict = opt.updates(None, grads=dict(zip(reversed(params), reversed(doubled))))
    plain = gc.optim.SGD(params, lr=0.2).updates(loss)
    values = gc.evaluate([*as_list.values(), *as_dict.values(), *plain.values()], feed)
    n = len(params)
    for i in range(n):
        np.testing.assert_allclose(values[i], values[2 * n + i], rtol=1e-15)
        np.testing.assert_allclose(values[n + i], values[2 * n + i], rtol=1e-15)


def test_given_gradients_are_still_clipped_and_cast_to_the_param_dtype():
    w = gc.param("w", np.zeros(2, "float32"))
    opt = gc.optim.Adam([w], lr=1.0, clip_norm=1.0)
    updates = opt.updates(None, grads=[gc.const(np.array([30.0, 40.0]))])  # float64, norm 50
    assert updates[w].dtype == "float32"
    gc.evaluate(list(updates.values()))  # the first Adam step moves each entry by ~lr
    (m,) = gc.evaluate([updates[opt.m[0]]])
    np.testing.assert_allclose(m, 0.1 * np.array([0.6, 0.8]), rtol=1e-6)  # (1 - b1) * clipped


def test_wave2_optimizer_and_schedule_errors():
    x, y, params, loss = build_problem()
    with pytest.raises(gc.GraphcError, match="nesterov=True needs momentum > 0"):
        gc.optim.SGD(params, 0.1, nesterov=True)
    for bad in ({"lr": -0.1}, {"lr": "fast"}, {"weight_decay": -1.0}, {"momentum": True}):
        with pytest.raises(gc.GraphcError, match="sgd: "):
            gc.optim.SGD(params, **{"lr": 0.1, **bad})
    for clip_norm in (0.0, -1.0, "1"):
        with pytest.raises(gc.GraphcError, match="adamw: clip_norm must be"):
            gc.optim.AdamW(params, clip_norm=clip_norm)
    with pytest.raises(gc.GraphcError, match=r"adamw: betas must be \[0, 1\)"):
        gc.optim.AdamW(params, betas=(0.9, 1.0))
    for steps, warmup in ((0, 0), (5, 6), (5, -1), (5.0, 1), (5, True)):
        with pytest.raises(gc.GraphcError, match="cosine_decay: "):
            gc.optim.cosine_decay(0.1, steps, warmup)
    with pytest.raises(gc.ShapeError, match="cosine_decay: lr must be a float scalar"):
        gc.optim.cosine_decay(gc.param("peak", np.ones(2)), 10)
    vector_schedule = gc.optim.SGD(params, lr=lambda t: gc.const(np.ones(2)) * t)
    with pytest.raises(gc.ShapeError, match="sgd: the lr schedule .* must return a float scalar"):
        vector_schedule.updates(loss)
    opt = gc.optim.SGD(params, 0.1)
    with pytest.raises(gc.GraphcError, match="needs a loss or grads="):
        opt.updates(None)
    with pytest.raises(gc.GraphcError, match="grads= has 1 entries for 4 params"):
        opt.updates(loss, grads=[params[0]])
    with pytest.raises(gc.GraphcError, match=r"missing \['dense2.b'\]"):
        opt.updates(loss, grads={p: p for p in params[:3]})
    with pytest.raises(gc.ShapeError, match=r"gradient of dense1.b f64\[4\] is f64\[3\]"):
        opt.updates(loss, grads=[params[0], np.zeros(3), params[2], params[3]])
    with pytest.raises(gc.DTypeError, match="gradient of dense1.w must be float"):
        opt.updates(loss, grads=[np.zeros((3, 4), "int32"), *params[1:]])


def test_wave2_state_names_and_defaults():
    _, _, params, loss = build_problem("float32")
    adamw = gc.optim.AdamW(params)
    assert (adamw.betas, adamw.eps, adamw.weight_decay, adamw.clip_norm) == (
        (0.9, 0.999),
        1e-8,
        0.01,
        None,
    )
    names = [s.name for s in adamw.state()]
    assert names[0] == "adamw.m[dense1.w]" and names[-1] == "adamw.t"
    assert [t.name for t in adamw.updates(loss)] == [p.name for p in params] + names
    sgd = gc.optim.SGD(params, gc.optim.cosine_decay(0.1, 100), 0.9, nesterov=True)
    assert [s.name for s in sgd.state()][-2:] == ["sgd.momentum[dense2.b]", "sgd.t"]
    assert sgd.t.dtype == "float32" and gc.optim.SGD(params, 0.1).t is None
    assert gc.optim.SGD(params, np.array(0.5)).lr == 0.5  # a 0-d array is a float lr
