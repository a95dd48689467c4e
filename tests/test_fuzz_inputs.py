"""Fuzzing call-time inputs: whatever a compiled step is given, it returns the interpreter's
values or raises a GraphcError, and never writes to what the caller passed.

Arguments are drawn from what a user might pass by mistake or on purpose: arrays of every
dtype (bool, ints, floats, complex, strings, objects), wrong shapes, 0-d arrays, Python
scalars and nested lists, None, non-contiguous and reversed views, NaN and infinities,
arguments by position and by name, too few and too many. Bounded to a few seconds in CI.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.errors import GraphcError

SHAPE = (3, 4)
DTYPES = ["bool", "int8", "int32", "int64", "uint64", "float16", "float32", "float64"]


def _program():
    x = gc.input("x", SHAPE, "float32")
    n = gc.input("n", (4,), "int32")
    w = gc.param("w", np.linspace(-1, 1, 4, dtype=np.float32))
    out = gc.tanh(x * w) + gc.exp(n.astype("float32") * 0.01)
    return gc.Program([x, n], [out.sum(axis=0), out.max()], name="fuzzed"), w


PROGRAM, PARAM = _program()
STEP = gc.compile(PROGRAM)


@st.composite
def arguments(draw, shape, dtype):
    """One argument meant for an input of `shape` and `dtype`, often not quite right."""
    kind = draw(st.sampled_from(["array", "array", "wrong shape", "scalar", "list", "odd"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "odd":
        return draw(st.sampled_from([None, "text", object(), np.array(["a"] * 4), 1 + 2j, ()]))
    if kind == "scalar":
        return draw(st.sampled_from([0, 1.5, True, np.float64(2.0), np.nan]))
    if kind == "wrong shape":
        shape = draw(st.sampled_from([(), (4,), (4, 3), (3, 4, 1), (0, 4), (1,) + shape]))
    given_dtype = draw(st.sampled_from([dtype] * 3 + DTYPES + ["complex64"]))
    values = rng.normal(scale=draw(st.sampled_from([1.0, 1e3, 1e40])), size=shape)
    special = draw(st.sampled_from([None, np.nan, np.inf, -np.inf, 0.0]))
    if special is not None and values.size:
        values.flat[int(rng.integers(values.size))] = special
    with np.errstate(all="ignore"):
        array = values.astype(given_dtype)
    if kind == "list":
        return array.tolist()
    if draw(st.booleans()) and array.ndim >= 1:  # a strided view of a bigger array
        array = np.repeat(array, 2, axis=-1)[..., ::2]
    if draw(st.booleans()) and array.ndim >= 1:
        array = array[::-1]
    return array


def _snapshot(value):
    return value.copy() if isinstance(value, np.ndarray) else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_arguments_give_the_interpreters_values_or_a_graphc_error(data):
    x = data.draw(arguments(SHAPE, "float32"), label="x")
    n = data.draw(arguments((4,), "int32"), label="n")
    call = data.draw(st.sampled_from(["position", "name", "too few", "too many"]), label="call")
    before = [_snapshot(x), _snapshot(n)]
    weights = PARAM.value.copy()
    try:
        with np.errstate(all="ignore"):
            if call == "position":
                result = STEP(x, n)
            elif call == "name":
                result = STEP(n=n, x=x)
            elif call == "too few":
                result = STEP(x)
            else:
                result = STEP(x, n, x)
    except GraphcError:
        result = None
    for value, saved in zip((x, n), before):
        if saved is not None:  # the caller's arrays are never written
            np.testing.assert_array_equal(value, saved)
    np.testing.assert_array_equal(PARAM.value, weights)  # an inference step writes no state
    if result is None:
        return
    assert call in ("position", "name")
    with np.errstate(all="ignore"):
        expected = gc.evaluate(
            PROGRAM.outputs, {"x": np.asarray(x, np.float32), "n": np.asarray(n, np.int32)}
        )
    for got, want in zip(result, expected):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, equal_nan=True)
