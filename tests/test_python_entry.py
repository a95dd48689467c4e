"""The native entry of small steps (codegen/python_entry.py, runtime/python_entry.py).

A small executable is called through a builtin function object that checks the arguments in
machine code and runs the step; anything unusual goes to the Python call path. These tests
check that the fast path is really taken here, that every kind of unusual call still behaves
exactly as through the Python path, and that references and lifetimes are right.
"""

from __future__ import annotations

import gc as garbage
import sys
import threading
import types

import numpy as np
import pytest

import graphc as gc
from graphc.errors import DTypeError, InputError
from graphc.runtime import python_entry
from graphc.runtime.executable import NATIVE_ENTRY_MAX_BYTES, Executable


def is_native(step) -> bool:
    return isinstance(type(step).__dict__.get("__call__"), types.BuiltinFunctionType)


def affine(n=3, dtype="float64"):
    x = gc.input("x", (2, n), dtype=dtype)
    w = gc.param("w", np.arange(n * 2, dtype=dtype).reshape(n, 2) / 10)
    return x, w, gc.compile(inputs=[x], outputs=x @ w + 1.0)


def test_this_interpreter_is_supported_so_the_fast_path_is_tested():
    assert python_entry.supported()
    assert python_entry.storage_value_offset() == 16


def test_small_steps_are_native_and_large_ones_keep_the_python_path():
    _, _, small = affine()
    assert is_native(small)
    big = gc.input("big", (NATIVE_ENTRY_MAX_BYTES // 8 + 1,), "float64")
    large = gc.compile(inputs=[big], outputs=big * 2.0)
    assert not is_native(large) and isinstance(large, Executable)
    assert isinstance(small, Executable)


def test_exact_arrays_lists_keywords_and_conversions_agree():
    x, w, step = affine()
    xv = np.linspace(-1, 1, 6).reshape(2, 3)
    expected = xv @ w.value + 1.0
    np.testing.assert_array_equal(step(xv), expected)
    np.testing.assert_array_equal(step(x=xv), expected)
    np.testing.assert_array_equal(step(xv.tolist()), expected)
    narrow = xv.astype(np.float32)  # converted to float64 on the Python path
    np.testing.assert_array_equal(step(narrow), narrow.astype(np.float64) @ w.value + 1.0)
    strided = np.linspace(-1, 1, 12).reshape(2, 6)[:, ::2]
    np.testing.assert_array_equal(step(strided), strided @ w.value + 1.0)
    fortran = np.asfortranarray(xv)
    np.testing.assert_array_equal(step(fortran), expected)


def test_errors_are_those_of_the_python_path():
    _, _, step = affine()
    with pytest.raises(InputError, match=r"expects shape \(2, 3\)"):
        step(np.zeros((3, 2)))
    with pytest.raises(InputError, match="missing inputs"):
        step()
    with pytest.raises(InputError, match=r"'x' expects shape \(2, 3\) \(f64\[2,3\]\), got None"):
        step(None)
    with pytest.raises(InputError, match="takes 1 inputs, got 2"):
        step(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="unknown input 'y'"):
        step(y=np.zeros((2, 3)))
    with pytest.raises(DTypeError, match="cannot convert complex128"):
        step(np.zeros((2, 3), complex))


def test_outputs_are_fresh_and_references_balance():
    _, _, step = affine()
    xv = np.ones((2, 3))
    first, second = step(xv), step(xv)
    assert first is not second and not np.shares_memory(first, second)
    before = sys.getrefcount(xv)
    for _ in range(1000):
        out = step(xv)
    assert sys.getrefcount(xv) == before
    assert sys.getrefcount(out) == 2  # `out` and getrefcount's argument


def test_several_outputs_come_as_a_list():
    x = gc.input("x", (4,), "float32")
    step = gc.compile(inputs=[x], outputs=[x + 1.0, (x * x).sum()])
    assert is_native(step)
    result = step(np.arange(4, dtype=np.float32))
    assert isinstance(result, list) and len(result) == 2
    np.testing.assert_array_equal(result[0], [1, 2, 3, 4])
    assert result[1] == 14.0 and result[1].dtype == np.float32


def training_step():
    x = gc.input("x", (4, 2), "float64")
    y = gc.input("y", (4, 1), "float64")
    w = gc.param("w", np.array([[0.5], [-0.25]]))
    loss = ((x @ w - y) ** 2).mean()
    opt = gc.optim.SGD([w], lr=0.1)
    return x, y, w, loss, gc.compile(gc.Program([x, y], loss, opt.updates(loss)))


def reference_sgd(w, xv, yv, lr=0.1):
    grad = 2 * xv.T @ (xv @ w - yv) / len(xv)
    return w - lr * grad


def test_training_updates_parameters_and_follows_a_replaced_array():
    x, y, w, loss, step = training_step()
    assert is_native(step)
    rng = np.random.default_rng(0)
    xv, yv = rng.normal(size=(4, 2)), rng.normal(size=(4, 1))
    expected = w.value.copy()
    for _ in range(3):
        step(xv, yv)
        expected = reference_sgd(expected, xv, yv)
    np.testing.assert_allclose(w.value, expected, rtol=1e-14)
    w.value = np.array([[1.0], [2.0]])  # replaced: the next call must read the new array
    step(xv, yv)
    np.testing.assert_allclose(w.value, reference_sgd(np.array([[1.0], [2.0]]), xv, yv))
    w.value = np.array([[1, 2]], dtype=np.int64).T  # converted on the Python path
    step(xv, yv)
    assert w.value.dtype == np.float64
    np.testing.assert_allclose(w.value, reference_sgd(np.array([[1.0], [2.0]]), xv, yv))


def test_an_input_that_is_an_updated_parameter_is_read_before_the_update():
    v = gc.param("v", np.arange(4.0))
    x = gc.input("x", (4,), "float64")
    step = gc.compile(gc.Program([x], x * 1.0, {v: v + x}))
    assert is_native(step)
    before = v.value.copy()
    out = step(v.value)  # the input is the very array the step overwrites
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(v.value, 2 * before)


def test_concurrent_calls_from_threads():
    x, y, w, loss, step = training_step()
    xv, yv = np.ones((4, 2)), np.zeros((4, 1))
    _, _, plain = affine()
    feed = np.linspace(-1, 1, 6).reshape(2, 3)
    expected = plain(feed)
    failures = []

    def work():
        for _ in range(300):
            step(xv, yv)
            if not np.array_equal(plain(feed), expected):
                failures.append("wrong result")
            if not np.array_equal(plain(feed.tolist()), expected):  # the Python path
                failures.append("wrong result on the Python path")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    w_expected = np.array([[0.5], [-0.25]])
    for _ in range(1200):
        w_expected = reference_sgd(w_expected, xv, yv)
    np.testing.assert_allclose(w.value, w_expected, rtol=1e-12)


def test_the_entry_outlives_its_executable():
    _, w, step = affine()
    entry = type(step).__call__
    expected = step(np.ones((2, 3)))
    del step
    garbage.collect()
    np.testing.assert_array_equal(entry(np.ones((2, 3))), expected)


# ---- any argument: the native entry and the Python path agree ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class Sub(np.ndarray):
    pass


def variants(shape, dtype):
    """Ways to pass an argument of `shape` and `dtype`, right or wrong."""
    base = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape) - 2
    wide = np.zeros((*shape[:-1], 2 * shape[-1]), dtype)
    wide[..., ::2] = base
    readonly = base.copy()
    readonly.flags.writeable = False
    return {
        "exact": base,
        "strided": wide[..., ::2],
        "fortran": np.asfortranarray(base),
        "readonly": readonly,
        "other dtype": base.astype(np.float32 if dtype == np.float64 else np.float64),
        "int": base.astype(np.int64),
        "complex": base.astype(complex),
        "byteswapped": base.astype(base.dtype.newbyteorder()),
        "subclass": base.view(Sub),
        "list": base.tolist(),
        "scalar": 1.5,
        "none": None,
        "wrong shape": np.zeros((*shape, 1), dtype),
        "transposed": np.ascontiguousarray(base.T) if base.ndim == 2 else base,
    }


X_SHAPE, Y_SHAPE = (2, 3), (3,)


@pytest.fixture(scope="module")
def two_input_step():
    x = gc.input("x", X_SHAPE, "float64")
    y = gc.input("y", Y_SHAPE, "float32")
    w = gc.param("w", np.linspace(-1, 1, 3))
    return gc.compile(inputs=[x, y], outputs=[x * y + w, (x @ w).sum()])


@settings(max_examples=300, deadline=None)
@given(
    first=st.sampled_from(sorted(variants(X_SHAPE, np.float64))),
    second=st.sampled_from(sorted(variants(Y_SHAPE, np.float32))),
    how=st.sampled_from(["positional", "keywords", "mixed", "extra", "missing"]),
)
def test_any_arguments_give_what_the_python_path_gives(two_input_step, first, second, how):
    step = two_input_step
    assert is_native(step)
    a = variants(X_SHAPE, np.float64)[first]
    b = variants(Y_SHAPE, np.float32)[second]
    args, kwargs = {
        "positional": ((a, b), {}),
        "keywords": ((), {"y": b, "x": a}),
        "mixed": ((a,), {"y": b}),
        "extra": ((a, b, b), {}),
        "missing": ((a,), {}),
    }[how]

    def outcome(call):
        try:
            return ("ok", call(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - the two paths must fail alike
            return (type(error), str(error))

    native, python = outcome(step), outcome(lambda *a, **k: step._call_python(*a, **k))
    assert native[0] == python[0], (native, python)
    if native[0] == "ok":
        for got, want in zip(native[1], python[1]):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    else:
        assert native[1] == python[1]
