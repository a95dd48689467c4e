# Over 500 lines on purpose: one table of cases for all the wave-2 functions, run through
# the same checkers, then what only some need (math routines' accuracy, fusion, errors).
"""The second wave's elementwise and shape functions, activations, layer norm and attention
(DESIGN §9): erf, floor, ceil, round, clip, % and //, stack, squeeze, expand_dims, cumsum,
Tensor.min/var/std, gelu, leaky_relu, softplus, silu, layer_norm and
scaled_dot_product_attention.

The primitives among them (erf floor ceil round remainder floor_divide) also have rows in
tests/optable.py, which runs them through the generic checkers; here: the math routines
themselves (accuracy in ulp, vectorized loops without calls, NumPy's exact % and //), and
for every function values against NumPy in float32 and float64, gradients against finite
differences in float64, compiled against the interpreter, PyTorch as a second oracle where
it is installed, the kernels the composites fuse into, and the errors bad input gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from llvmlite import binding
from targets import assert_vectorized_at_target_width
from test_mathlib import _assembly, _compiled

import graphc as gc
from graphc.errors import DTypeError, GraphcError, ShapeError

FLOATS = ("float32", "float64")
TOLERANCE = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-11, "atol": 1e-12}}
_np_erf = np.vectorize(math.erf, otypes=[np.float64])


def np_gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _np_erf(x / math.sqrt(2)))


def np_layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5):
    mean = x.mean(axis=axis, keepdims=True)
    y = (x - mean) / np.sqrt(x.var(axis=axis, keepdims=True) + eps)
    return y * (1 if weight is None else weight) + (0 if bias is None else bias)


def np_attention(q, k, v, mask=None, causal=False):
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


# (name, graphc function of the inputs, NumPy function, input shapes); inputs are uniform in
# [-2, 2], away from kinks with probability 1 (the gradient checks are at random points)
CASES = [
    ("gelu", gc.gelu, np_gelu, [(3, 4)]),
    ("gelu_tanh", lambda x: gc.gelu(x, approximate="tanh"), lambda x: np_gelu(x, True), [(5,)]),
    ("gelu_true", lambda x: gc.gelu(x, approximate=True), lambda x: np_gelu(x, True), [(5,)]),
    ("leaky_relu", gc.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), [(3, 4)]),
    ("leaky_relu_slope", lambda x: gc.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x),
     [(6,)]),
    ("softplus", gc.softplus, lambda x: np.logaddexp(0, x), [(3, 4)]),
    ("silu", gc.silu, lambda x: x / (1 + np.exp(-x)), [(3, 4)]),
    ("erf", gc.erf, _np_erf, [(3, 4)]),
    ("clip", lambda x: gc.clip(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), [(3, 4)]),
    ("clip_tensors", gc.clip, np.clip, [(3, 4), (4,), (3, 1)]),
    ("clip_lo", lambda x: gc.clip(x, lo=0.1), lambda x: np.clip(x, 0.1, None), [(5,)]),
    ("remainder", lambda a, b: a % b, np.remainder, [(3, 4), (4,)]),
    ("remainder_scalar", lambda a: a % -0.75, lambda a: np.remainder(a, -0.75), [(6,)]),
    ("rmod", lambda a: 1.25 % a, lambda a: np.remainder(1.25, a), [(6,)]),
    ("floor_divide", lambda a, b: a // b, np.floor_divide, [(3, 4), (3, 1)]),
    ("stack", lambda a, b: gc.stack([a, b], axis=1), lambda a, b: np.stack([a, b], 1),
     [(2, 3), (2, 3)]),
    ("stack_last", lambda a, b, c: gc.stack([a, b, c], axis=-1),
     lambda a, b, c: np.stack([a, b, c], -1), [(3,), (3,), (3,)]),
    ("squeeze", gc.squeeze, np.squeeze, [(1, 3, 1)]),
    ("squeeze_axis", lambda x: gc.squeeze(x, axis=-1), lambda x: np.squeeze(x, -1), [(1, 3, 1)]),
    ("expand_dims", lambda x: gc.expand_dims(x, (0, 2)), lambda x: np.expand_dims(x, (0, 2)),
     [(2, 3)]),
    ("cumsum", gc.cumsum, np.cumsum, [(2, 3)]),
    ("cumsum_axis0", lambda x: gc.cumsum(x, axis=0), lambda x: np.cumsum(x, 0), [(5, 2)]),
    ("cumsum_13", lambda x: gc.cumsum(x, axis=1), lambda x: np.cumsum(x, 1), [(2, 13, 2)]),
    ("cumsum_16", lambda x: gc.cumsum(x, axis=-1), lambda x: np.cumsum(x, -1), [(16,)]),
    ("min", lambda x: x.min(), np.min, [(3, 4)]),
    ("min_axis", lambda x: x.min(axis=0, keepdims=True), lambda x: x.min(0, keepdims=True),
     [(3, 4)]),
    ("var", lambda x: x.var(), np.var, [(3, 4)]),
    ("var_ddof", lambda x: x.var(axis=1, ddof=1), lambda x: x.var(1, ddof=1), [(3, 4)]),
    ("std", lambda x: x.std(axis=(0, 2), keepdims=True),
     lambda x: x.std((0, 2), keepdims=True), [(2, 3, 2)]),
    ("layer_norm", gc.layer_norm, np_layer_norm, [(3, 8)]),
    ("layer_norm_affine", gc.layer_norm, np_layer_norm, [(2, 3, 5), (5,), (5,)]),
    ("layer_norm_axes", lambda x, w: gc.layer_norm(x, w, axis=(1, 2), eps=1e-3),
     lambda x, w: np_layer_norm(x, w, axis=(1, 2), eps=1e-3), [(2, 3, 4), (3, 4)]),
    ("attention", gc.scaled_dot_product_attention, np_attention, [(2, 4, 3), (2, 5, 3), (2, 5, 2)]),
    ("attention_causal", lambda q, k, v: gc.scaled_dot_product_attention(q, k, v, causal=True),
     lambda q, k, v: np_attention(q, k, v, causal=True), [(2, 4, 3), (2, 4, 3), (2, 4, 3)]),
    ("attention_float_mask", lambda q, k, v, m: gc.scaled_dot_product_attention(q, k, v, m),
     np_attention, [(2, 3, 4), (2, 3, 4), (2, 3, 4), (3, 3)]),
]  # fmt: skip
CASE_IDS = [case[0] for case in CASES]


def _data(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    values = [rng.uniform(-2, 2, s).astype(dtype) for s in shapes]
    return values


def _nonzero_divisors(name, values):
    """Divisors of % and // kept away from 0 (where // jumps to infinity)."""
    if name in ("remainder", "floor_divide", "rmod"):
        last = values[-1]
        values[-1] = np.where(np.abs(last) < 0.3, np.sign(last) * 0.3 + 0.3 * (last == 0), last)
    return values


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("name", "fn", "ref", "shapes"), CASES, ids=CASE_IDS)
def test_forward_matches_numpy_and_compiled_matches_interpreter(name, fn, ref, shapes, dtype):
    values = _nonzero_divisors(name, _data(shapes, dtype, 1))
    xs = [gc.input(f"x{i}", s, dtype) for i, s in enumerate(shapes)]
    y = fn(*xs)
    assert y.dtype == dtype
    got = gc.evaluate(y, dict(zip(xs, values, strict=True)))
    want = ref(*[v.astype(np.float64) for v in values])
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, **TOLERANCE[dtype])
    compiled = gc.compile(inputs=xs, outputs=y)(*values)
    np.testing.assert_allclose(compiled, got, **TOLERANCE[dtype])


@pytest.mark.parametrize(("name", "fn", "ref", "shapes"), CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(name, fn, ref, shapes):
    values = _nonzero_divisors(name, _data(shapes, "float64", 2))
    xs = [gc.input(f"x{i}", s, "float64") for i, s in enumerate(shapes)]
    y = fn(*xs)
    seed = gc.const(np.random.default_rng(3).standard_normal(y.shape))
    assert gc.check_grad((y * seed).sum(), xs, dict(zip(xs, values, strict=True))) < 1e-6


@pytest.mark.parametrize(("name", "fn", "ref", "shapes"), CASES[::2], ids=CASE_IDS[::2])
def test_tangents_match_the_gradient(name, fn, ref, shapes):
    """<seed, J t> forward equals <Jᵀ seed, t> in reverse."""
    values = _nonzero_divisors(name, _data(shapes, "float64", 4))
    rng = np.random.default_rng(5)
    xs = [gc.input(f"x{i}", s, "float64") for i, s in enumerate(shapes)]
    y = fn(*xs)
    tangents = {x: rng.standard_normal(x.shape) for x in xs}
    seed = rng.standard_normal(y.shape)
    feed = dict(zip(xs, values, strict=True))
    forward = np.sum(gc.evaluate(gc.jvp(y, tangents), feed) * seed)
    grads = gc.evaluate(gc.grad(y, xs, seed=seed), feed)
    reverse = sum(np.sum(g * tangents[x]) for x, g in zip(xs, grads, strict=True))
    np.testing.assert_allclose(forward, reverse, rtol=1e-10, atol=1e-12)


# ---- PyTorch as a second oracle --------------------------------------------------------------


def _torch_cases():
    torch = pytest.importorskip("torch", reason="PyTorch is the second oracle; not installed")
    F = torch.nn.functional
    return torch, {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "leaky_relu": F.leaky_relu,
        "softplus": F.softplus,
        "silu": F.silu,
        "erf": torch.erf,
        "remainder": torch.remainder,
        "floor_divide": lambda a, b: torch.div(a, b, rounding_mode="floor"),
        "cumsum_13": lambda x: torch.cumsum(x, 1),
        "var_ddof": lambda x: torch.var(x, 1, correction=1),
        "layer_norm_affine": lambda x, w, b: F.layer_norm(x, (5,), w, b),
        "attention": F.scaled_dot_product_attention,
        "attention_causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "attention_float_mask": lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m),
    }


TORCH_NAMES = ["gelu", "gelu_tanh", "leaky_relu", "softplus", "silu", "erf", "remainder",
               "floor_divide", "cumsum_13", "var_ddof", "layer_norm_affine", "attention",
               "attention_causal", "attention_float_mask"]  # fmt: skip


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_values_and_gradients_match_pytorch(name):
    torch, functions = _torch_cases()
    assert sorted(functions) == sorted(TORCH_NAMES)
    _, fn, _, shapes = CASES[CASE_IDS.index(name)]
    values = _nonzero_divisors(name, _data(shapes, "float64", 6))
    xs = [gc.input(f"x{i}", s, "float64") for i, s in enumerate(shapes)]
    y = fn(*xs)
    seed = np.random.default_rng(7).standard_normal(y.shape)
    feed = dict(zip(xs, values, strict=True))
    got = gc.evaluate([y, *gc.grad(y, xs, seed=seed)], feed)
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    want = functions[name](*tensors)
    want.backward(torch.tensor(seed))
    np.testing.assert_allclose(got[0], want.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, t in zip(got[1:], tensors, strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_attention_keeps_the_dtype_of_q_k_v():
    """A float64 NumPy mask is added in float32 to float32 scores (PyTorch requires it)."""
    q = gc.input("q", (3, 4))
    out = gc.scaled_dot_product_attention(q, q, q, mask=np.zeros((3, 3)))
    assert out.dtype == "float32"


def test_boolean_attention_mask_matches_pytorch():
    torch, _ = _torch_cases()
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, 3, 4, 5)) for _ in range(3))
    mask = rng.random((4, 4)) < 0.7
    mask[:, 0] = True  # every query attends somewhere
    inputs = [gc.input(n, (2, 3, 4, 5), "float64") for n in "qkv"]
    y = gc.scaled_dot_product_attention(*inputs, mask=gc.const(mask), causal=False)
    got = gc.compile(inputs=inputs, outputs=y)(q, k, v)
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), attn_mask=torch.tensor(mask)
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got, np_attention(q, k, v, mask), rtol=1e-12, atol=1e-13)


# ---- erf: the math routine -------------------------------------------------------------------

ERF_ULP = {np.float64: 1.6, np.float32: 1.0}  # the rows of mathlib's accuracy table


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_erf_within_its_documented_ulp(dtype):
    """f64 against mpmath (113 bits) at the 2000 worst of 400000 arguments by Python's
    math.erf and 2000 random ones; f32 against math.erf (float64) at all of them."""
    mpmath = pytest.importorskip("mpmath", reason="the f64 reference needs mpmath")
    rng = np.random.default_rng(9)
    x = np.concatenate(
        [rng.uniform(-6.5, 6.5, 200_000), rng.uniform(-1.1, 1.1, 100_000),
         rng.choice([-1, 1], 100_000) * 10.0 ** rng.uniform(-300, 0, 100_000)]
    ).astype(dtype)  # fmt: skip
    got = _compiled("erf", dtype)(x)
    screen = _np_erf(x.astype(np.float64))
    if dtype == np.float32:
        ulp = np.abs(got - screen) / np.spacing(np.abs(screen).astype(np.float32))
        assert ulp.max() <= ERF_ULP[dtype], f"erf({x[np.argmax(ulp)]!r}): {ulp.max()} ulp"
        return
    rough = np.abs(got - screen) / np.spacing(np.abs(screen))
    picked = np.concatenate([np.argsort(rough)[-2000:], rng.integers(0, x.size, 2000)])
    with mpmath.workprec(113):
        exact = [mpmath.erf(mpmath.mpf(float(x[i]))) for i in picked]
        ulp = [float(abs(got[i] - e) / np.spacing(abs(float(e)))) for i, e in zip(picked, exact)]
    worst = int(np.argmax(ulp))
    assert ulp[worst] <= ERF_ULP[dtype], f"erf({x[picked[worst]]!r}): {ulp[worst]} ulp"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_erf_special_values(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.0, -6.5, 1e-30, -1e-30, 1.0], dtype)
    got = _compiled("erf", dtype)(x)
    assert np.signbit(got[:2]).tolist() == [False, True] and (got[:2] == 0).all()
    assert got[2:4].tolist() == [1, -1] and np.isnan(got[4])
    assert got[5:7].tolist() == [1, -1]
    np.testing.assert_allclose(got[7:], _np_erf(x[7:].astype(np.float64)), rtol=2e-7)


@pytest.mark.parametrize("name", ["erf", "remainder", "floor_divide"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_loops_vectorize_without_calls(name, dtype):
    """No libm call (not even fmod) in the loops: the routines are straight-line code."""
    if name == "erf":
        assembly = _assembly(name, dtype)
    else:  # a two-input loop
        from test_mathlib import _optimized, _target_machine

        from graphc.codegen import mathlib

        module = mathlib.loop_module(
            name, {np.float64: mathlib.ir.DoubleType(), np.float32: mathlib.ir.FloatType()}[dtype],
            2, getattr(mathlib, name),
        )  # fmt: skip
        module.triple = binding.get_process_triple()
        machine = _target_machine()
        assembly = machine.emit_assembly(_optimized(module, machine))
    body = assembly[assembly.index("kernel:") :]
    assert_vectorized_at_target_width(body)
    assert "call" not in body


# ---- % and //: NumPy's exact results ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_float_remainder_and_floor_divide_equal_numpy_bit_for_bit(dtype):
    """Signs of zero, infinities, NaN and 200000 random pairs over 60 decades: identical
    wherever |x / y| < 2^52; past it remainder is NaN and floor_divide x / y."""
    rng = np.random.default_rng(10)
    special = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0, 0.5, np.inf, -np.inf,
                        np.nan, 1e-30, 7.0, -7.0, 1e20], dtype)  # fmt: skip
    a, b = (v.ravel() for v in np.meshgrid(special, special))
    spread = rng.standard_normal((2, 100_000)) * 10.0 ** rng.uniform(-30, 30, (2, 100_000))
    a = np.concatenate([a, rng.uniform(-100, 100, 100_000), spread[0]]).astype(dtype)
    b = np.concatenate([b, rng.uniform(-10, 10, 100_000), spread[1]]).astype(dtype)
    with np.errstate(all="ignore"):
        inside = ~(np.abs(a.astype(np.float64) / b.astype(np.float64)) >= 2.0**52)
        inside |= ~np.isfinite(a)
        for name, ref in (("remainder", np.remainder), ("floor_divide", np.floor_divide)):
            want = ref(a, b)
            got = _compiled(name, dtype, 2)(a, b)
            same = (got == want) & (np.signbit(got) == np.signbit(want))
            same |= np.isnan(got) & np.isnan(want)
            bad = ~same & inside
            assert not bad.any(), f"{name}({a[bad][:3]!r}, {b[bad][:3]!r}) = {got[bad][:3]!r}"
        beyond = ~inside & (b != 0)
        assert beyond.sum() > 100
        assert np.isnan(_compiled("remainder", dtype, 2)(a[beyond], b[beyond])).all()
        quotient = _compiled("floor_divide", dtype, 2)(a[beyond], b[beyond])
        np.testing.assert_array_equal(quotient, (a[beyond] / b[beyond]).astype(dtype))


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_remainder_and_floor_divide(dtype):
    """Python's floor rules; x // 0 and x % 0 are 0 (NumPy's value); INT_MIN // -1 wraps."""
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    rng = np.random.default_rng(11)
    a = np.concatenate([rng.integers(-20, 21, 200), [low, low, high, 0, 5, -5, low, high]])
    b = np.concatenate([rng.integers(-6, 7, 200), [-1, 1, -1, 0, 0, -3, 7, -7]])
    a, b = a.astype(dtype), b.astype(dtype)
    x, y = gc.input("a", a.shape, dtype), gc.input("b", b.shape, dtype)
    outputs = [x % y, x // y, np.remainder(x, 3), 7 // y]
    step = gc.compile(inputs=[x, y], outputs=outputs)
    interpreted = gc.evaluate(outputs, {x: a, y: b})
    with np.errstate(all="ignore"):
        want = [np.remainder(a, b), np.floor_divide(a, b), np.remainder(a, 3),
                np.floor_divide(np.asarray(7, dtype), b)]  # fmt: skip
    for got, interp, ref in zip(step(a, b), interpreted, want, strict=True):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(interp, ref)


def test_remainder_gradient_is_the_fmod_identity():
    """d(a % b) = da - floor(a / b) db, and // has gradient 0, as PyTorch."""
    a, b = gc.input("a", (4,), "float64"), gc.input("b", (4,), "float64")
    av, bv = np.array([5.5, -5.5, 5.5, -0.25]), np.array([2.0, 2.0, -2.0, 0.75])
    ga, gb = gc.evaluate(gc.grad((a % b).sum(), [a, b]), {a: av, b: bv})
    np.testing.assert_array_equal(ga, np.ones(4))
    np.testing.assert_array_equal(gb, -np.floor(av / bv))
    zeros = gc.evaluate(gc.grad((a // b).sum(), [a, b]), {a: av, b: bv})
    assert all((z == 0).all() for z in zeros)


# ---- floor, ceil, round ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_rounding_halves_to_even_and_keeps_special_values(dtype):
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.0, np.inf, -np.inf,
                       np.nan, 1e20, 2.675, -7.2], dtype)  # fmt: skip
    x = gc.input("x", values.shape, dtype)
    outputs = [gc.floor(x), gc.ceil(x), gc.round(x), gc.round(x, 2), gc.round(x, -1)]
    compiled = gc.compile(inputs=[x], outputs=outputs)(values)
    want = [np.floor(values), np.ceil(values), np.round(values), np.round(values, 2),
            np.round(values, -1)]  # fmt: skip
    for got, ref in zip(compiled, want, strict=True):
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(ref))
    interpreted = gc.evaluate(outputs, {x: values})
    for got, ref in zip(interpreted, want, strict=True):
        np.testing.assert_array_equal(got, ref)


def test_rounding_integers_returns_them_as_numpy_does():
    x = gc.input("x", (5,), "int64")
    values = np.array([15, 25, -15, 14, 7])
    got = gc.evaluate([gc.floor(x), gc.ceil(x), gc.round(x), gc.round(x, -1)], {x: values})
    for g, want in zip(got, [values, values, values, np.round(values, -1)], strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, want)
    assert gc.floor(x) is x


def test_numpy_ufuncs_on_tensors_build_the_new_ops():
    x = gc.input("x", (4,), "float64")
    values = np.array([-1.5, 0.5, 2.5, 3.7])
    outputs = [np.floor(x), np.ceil(x), np.rint(x), np.remainder(x, 2), np.floor_divide(x, 2),
               np.mod(x, -2)]  # fmt: skip
    got = gc.evaluate(outputs, {x: values})
    want = [np.floor(values), np.ceil(values), np.rint(values), values % 2, values // 2,
            values % -2]  # fmt: skip
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# ---- cumsum, min, var, std -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33, 1000])
def test_cumsum_lengths_compiled_and_interpreted(n):
    x = gc.input("x", (3, n), "float64")
    values = np.random.default_rng(n).standard_normal((3, n))
    y = gc.cumsum(x, axis=1)
    step = gc.compile(inputs=[x], outputs=y)
    np.testing.assert_allclose(step(values), np.cumsum(values, axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gc.evaluate(y, {x: values}), np.cumsum(values, 1), atol=1e-12)


def test_cumsum_work_grows_as_n_log_n():
    """The scan's graph has O(log n) nodes and its compiled form O(log n) kernels: a
    reduction per level and one loop (no O(n) chain, no n x n triangle)."""
    sizes = {}
    for n in (16, 256, 4096):
        x = gc.input("x", (n,), "float32")
        program = gc.Program([x], gc.cumsum(x))
        kernels = gc.compile(program).kernels
        sizes[n] = len(program.graph.nodes)
        assert len(kernels) <= math.log2(n)
    assert sizes[4096] - sizes[256] == sizes[256] - sizes[16]  # a fixed number per level


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_cumsum_and_min_of_integers_and_bools(dtype):
    rng = np.random.default_rng(12)
    values = rng.integers(-5, 6, (3, 5)).astype(dtype)
    if dtype != "bool":
        values[0, 0] = np.iinfo(dtype).min  # ~x = -x - 1 has no overflow
    x = gc.input("x", values.shape, dtype)
    outputs = [gc.cumsum(x, axis=1), gc.cumsum(x), x.min(axis=1), x.min()]
    want_dtype = "int64" if dtype == "bool" else dtype
    with np.errstate(over="ignore"):
        want = [np.cumsum(values, 1, dtype=want_dtype), np.cumsum(values, dtype=want_dtype),
                values.min(1), values.min()]  # fmt: skip
    compiled = gc.compile(inputs=[x], outputs=outputs)(values)
    for got, interp, ref in zip(compiled, gc.evaluate(outputs, {x: values}), want, strict=True):
        assert got.dtype == np.asarray(ref).dtype
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(interp, ref)


def test_numpy_functions_of_tensors_call_the_new_methods():
    x = gc.input("x", (3, 4), "float64")
    values = np.random.default_rng(13).standard_normal((3, 4))
    outputs = [np.min(x), np.min(x, axis=1), np.var(x, axis=0), np.std(x, ddof=1),
               x.var(dtype="float32"), np.cumsum(x, axis=1), np.clip(x, -0.5, 0.5),
               np.round(x, 1), np.squeeze(x[:1])]  # fmt: skip
    got = gc.evaluate(outputs, {x: values})
    want = [values.min(), values.min(1), values.var(0), values.std(ddof=1), values.var(),
            np.cumsum(values, 1), np.clip(values, -0.5, 0.5), np.round(values, 1),
            values[0]]  # fmt: skip
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert got[4].dtype == np.float32
    for call in (lambda: np.cumsum(x, out=values), lambda: np.min(x, out=values)):
        with pytest.raises(GraphcError, match="out= is not supported"):
            call()


# ---- fusion: what the composites compile into -----------------------------------------------


def test_layer_norm_is_one_row_wise_kernel_forward_and_backward():
    x = gc.input("x", (16, 64), "float32")
    y = gc.layer_norm(x)
    seed = gc.const(np.random.default_rng(14).standard_normal((16, 64)).astype(np.float32))
    forward = gc.compile(inputs=[x], outputs=y)
    backward = gc.compile(inputs=[x], outputs=gc.grad((y * seed).sum(), x))
    assert len(forward.kernels) == 1 and "(rowwise)" in forward.dump("fused")
    assert len(backward.kernels) == 1 and "(rowwise)" in backward.dump("fused")


def test_layer_norm_with_weight_and_bias_adds_only_their_column_sums():
    x = gc.input("x", (16, 64), "float32")
    w = gc.param("ln.w", np.ones(64, np.float32))
    b = gc.param("ln.b", np.zeros(64, np.float32))
    y = gc.layer_norm(x, w, b)
    assert len(gc.compile(inputs=[x], outputs=y).kernels) == 1
    grads = gc.grad((y * y).sum(), [x, w, b])
    kernels = gc.compile(inputs=[x], outputs=grads).kernels
    # one row pass for grad(x); grad(w) and grad(b) sum over rows, another axis: reductions
    assert len(kernels) == 3, kernels


def test_attention_fuses_scale_and_mask_into_the_product_and_softmax_into_one_pass():
    q, k, v = (gc.input(n, (2, 4, 16, 8)) for n in "qkv")
    step = gc.compile(
        inputs=[q, k, v], outputs=gc.scaled_dot_product_attention(q, k, v, causal=True)
    )
    fused = step.dump("fused")
    assert len(step.kernels) == 3, step.kernels  # q kᵀ (+ scale, mask) | softmax | p v
    blocks = fused.split("kernel ")[1:]
    assert "matmul" in blocks[0] and "where" in blocks[0] and "mul" in blocks[0]
    assert "(rowwise)" in blocks[1] and all(op in blocks[1] for op in ("max", "exp", "div"))
    assert "matmul" in blocks[2]


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_names_the_function_the_shapes_and_the_line():
    x = gc.input("x", (2, 3))
    cases = [
        (ShapeError, lambda: gc.squeeze(x, axis=1), "squeeze"),
        (ShapeError, lambda: gc.stack([x, gc.input("z", (3, 2))]), "stack"),
        (ShapeError, lambda: gc.expand_dims(x, (0, 0)), "expand_dims"),
        (ShapeError, lambda: gc.expand_dims(x, 5), "expand_dims"),
        (ShapeError, lambda: gc.cumsum(x, axis=2), "cumsum"),
        (ShapeError, lambda: gc.layer_norm(x, gc.input("w", (2,))), "layer_norm"),
        (DTypeError, lambda: gc.layer_norm(gc.input("i", (2, 3), "int32")), "layer_norm"),
        (ShapeError, lambda: gc.scaled_dot_product_attention(x, gc.input("k", (2, 4)), x),
         "scaled_dot_product_attention"),
        (ShapeError, lambda: gc.scaled_dot_product_attention(x, x, x, gc.input("m", (3, 3))),
         "scaled_dot_product_attention"),
        (DTypeError, lambda: gc.scaled_dot_product_attention(x, x, x, np.zeros((2, 2), int)),
         "scaled_dot_product_attention"),
        (GraphcError, lambda: gc.gelu(x, approximate="erf"), "gelu"),
        (GraphcError, lambda: gc.clip(x), "clip"),
        (GraphcError, lambda: gc.round(x, 1.5), "round"),
        (ShapeError, lambda: x % gc.input("y", (4,)), "remainder"),
        (DTypeError, lambda: gc.input("p", (2,), "bool") // gc.input("q", (2,), "bool"),
         "floor_divide"),
    ]  # fmt: skip
    for error, build, name in cases:
        with pytest.raises(error) as info:
            build()
        message = str(info.value)
        assert name in message and "test_functions_wave2.py" in message, message
