"""The Executable: calling conventions, bad input, state, threads, dumps and the cache.

DESIGN §5/§6/§8: arguments are checked (shape exactly, dtype by `same_kind`), nothing the
caller owns is written to, outputs are fresh arrays, updates are simultaneous and in place
in storage shared by every executable of the model, and a bad call changes nothing.
"""

from __future__ import annotations

import copy
import gc as python_gc
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy as np
import pytest
from targets import assert_vectorized_at_target_width

import graphc as gc
from graphc.ir.graph import location
from graphc.runtime.executable import LARGE_BYTES, NATIVE_ENTRY_MAX_BYTES, Executable


@pytest.fixture(scope="module")
def affine():
    """y = x.sum(axis=1) * w + n, with x float64 (2, 3), n int32 (2,), w a param."""
    x = gc.input("x", (2, 3), "float64")
    n = gc.input("n", (2,), "int32")
    w = gc.param("w", np.array([2.0, 3.0]))
    step = gc.compile(inputs=[x, n], outputs=x.sum(axis=1) * w + n, updates={w: w + 1})
    return step, w


def expected(xv, nv, wv):
    return np.asarray(xv, np.float64).sum(axis=1) * wv + nv


XV = np.arange(6.0).reshape(2, 3)
NV = np.array([1, -1], np.int32)


# ---- arguments --------------------------------------------------------------------------------


def test_positional_and_keyword_calls(affine):
    step, w = affine
    before = w.value.copy()
    np.testing.assert_array_equal(step(XV, NV), expected(XV, NV, before))
    np.testing.assert_array_equal(step(n=NV, x=XV), expected(XV, NV, before + 1))
    np.testing.assert_array_equal(step(XV, n=NV), expected(XV, NV, before + 2))
    np.testing.assert_array_equal(w.value, before + 3)


def test_wrong_shape_is_an_input_error_naming_the_input(affine):
    step, _ = affine
    with pytest.raises(gc.InputError, match=r"'x'.*\(2, 3\).*\(3, 2\)"):
        step(XV.T.copy(), NV)
    with pytest.raises(gc.InputError, match="'n'"):
        step(XV, np.array([1, 2, 3], np.int32))


def test_float_array_into_an_int_input_is_a_dtype_error(affine):
    step, _ = affine
    with pytest.raises(gc.DTypeError, match="'n'"):
        step(XV, NV.astype(np.float64))


def test_integer_and_bool_arrays_into_a_float_input_convert(affine):
    step, w = affine
    before = w.value.copy()
    ints = XV.astype(np.int64)
    np.testing.assert_array_equal(step(ints, NV), expected(XV, NV, before))
    np.testing.assert_array_equal(
        step(ints > 2, NV.astype(np.int64)), expected(ints > 2, NV, before + 1)
    )
    np.testing.assert_array_equal(step(XV.tolist(), [1, -1]), expected(XV, NV, before + 2))


def test_unknown_keyword_missing_argument_and_duplicates_name_them(affine):
    step, _ = affine
    with pytest.raises(gc.InputError, match="'z'"):
        step(XV, NV, z=1)
    with pytest.raises(gc.InputError, match=r"missing.*'n'"):
        step(XV)
    with pytest.raises(gc.InputError, match=r"missing.*'x'"):
        step(n=NV)
    with pytest.raises(gc.InputError, match="'x'.*twice"):
        step(XV, NV, x=XV)
    with pytest.raises(gc.InputError, match="takes 2 inputs"):
        step(XV, NV, NV)


@pytest.mark.parametrize("size", ["small", "large"])
def test_none_for_an_input_is_an_input_error_naming_it_not_a_missing_input(size):
    """Small steps are entered natively, large ones (over NATIVE_ENTRY_MAX_BYTES) through the
    generated Python call: both hand None, by position or by name, to the checked path."""
    n = 4 if size == "small" else NATIVE_ENTRY_MAX_BYTES // 8 + 1
    x, s = gc.input("x", (n,), "float64"), gc.input("s", (), "float32")
    step = gc.compile(inputs=[x, s], outputs=x * s, name="scale")
    assert (step._native is not None) == (size == "small")
    xv, sv = np.ones(n), np.float32(2.0)
    x_none = re.escape(f"scale: input 'x' expects shape ({n},) (f64[{n}]), got None")
    calls = [((None, sv), {}), ((None,), {"s": sv}), ((), {"x": None, "s": sv})]
    for args, kwargs in [*calls, ((), {"s": sv, "x": None})]:
        with pytest.raises(gc.InputError, match=x_none):
            step(*args, **kwargs)
    with pytest.raises(gc.InputError, match=re.escape("'s' expects shape () (f32[]), got None")):
        step(xv, None)
    with pytest.raises(gc.InputError, match=r"missing inputs \['s'\]"):
        step(xv)
    np.testing.assert_array_equal(step(xv, sv), 2 * xv)


def test_arguments_that_are_not_arrays_of_numbers_are_graphc_errors(affine):
    step, _ = affine
    with pytest.raises(gc.InputError, match="'x'"):
        step([[1.0], [2.0, 3.0]], NV)  # ragged
    for bad in [np.array([["a"] * 3] * 2), np.full((2, 3), 1j), np.full((2, 3), None)]:
        with pytest.raises(gc.DTypeError, match="'x'"):
            step(bad, NV)
    with pytest.raises(gc.DTypeError, match="'n'"):
        step(XV, np.array([True, False]).astype(np.float32))
    # what was given, whatever its shape: not "expects shape (2, 3), got ()" for a string
    with pytest.raises(gc.DTypeError, match=r"'x' is f\S+; got a str \(<U5\), not numbers"):
        step("hello", NV)
    with pytest.raises(gc.DTypeError, match=r"got an array of object, not numbers"):
        step(np.full((2, 3), None), NV)


def test_a_failed_call_leaves_parameters_untouched(affine):
    step, w = affine
    before = w.value.copy()
    for bad in [lambda: step(XV.T, NV), lambda: step(XV, NV * 1.5), lambda: step(XV, q=NV)]:
        with pytest.raises(gc.GraphcError):
            bad()
    np.testing.assert_array_equal(w.value, before)


def test_non_contiguous_inputs_are_accepted_and_never_written(affine):
    step, w = affine
    wide = np.arange(12.0).reshape(2, 6)
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    saved, n_saved = wide.copy(), NV.copy()
    before = w.value.copy()
    np.testing.assert_array_equal(step(strided, NV), expected(strided, NV, before))
    np.testing.assert_array_equal(step(XV.T.copy().T, NV[::-1]), expected(XV, NV[::-1], before + 1))
    np.testing.assert_array_equal(wide, saved)
    np.testing.assert_array_equal(NV, n_saved)


def test_read_only_inputs_and_inputs_returned_directly_are_not_written():
    x = gc.input("x", (2, 2), "float64")
    step = gc.compile(inputs=[x], outputs=[x, x * 2])
    value = np.array([[1.0, 2.0], [3.0, 4.0]])
    value.setflags(write=False)
    same, doubled = step(value)
    np.testing.assert_array_equal(same, value)
    assert not np.shares_memory(same, value)
    same[:] = -1
    np.testing.assert_array_equal(value, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(doubled, 2 * value)


def test_outputs_are_fresh_arrays():
    x = gc.input("x", (2,), "float64")
    p = gc.param("p", np.array([5.0, 6.0]))
    c = gc.const(np.array([7.0, 8.0]))
    step = gc.compile(inputs=[x], outputs=[x + 1, p, c])
    first = step(np.array([1.0, 2.0]))
    for array in first:
        array[:] = 99
    second = step(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(second[0], [2.0, 3.0])
    np.testing.assert_array_equal(second[1], [5.0, 6.0])
    np.testing.assert_array_equal(second[2], [7.0, 8.0])
    np.testing.assert_array_equal(p.value, [5.0, 6.0])
    assert not any(np.shares_memory(a, b) for a in first for b in second)


def test_outputs_that_are_inputs_params_or_consts_directly():
    x = gc.input("x", (2,), "float64")
    p = gc.param("p", np.array([5.0, 6.0]))
    flags = gc.const(np.array([True, False]))
    step = gc.compile(inputs=[x], outputs=[x, p, gc.const(3.0), flags, x, gc.const(np.eye(2))])
    got = step(np.array([1.0, 2.0]))
    want = [[1.0, 2.0], [5.0, 6.0], 3.0, [True, False], [1.0, 2.0], np.eye(2)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[3].dtype == np.bool_ and got[2].shape == ()


def test_scalar_inputs_and_outputs():
    s = gc.input("s", (), "float64")
    k = gc.input("k", (), "int32")
    step = gc.compile(inputs=[s, k], outputs=[s * 2 + k, (s > 1.0), k * k])
    value, flag, square = step(3.5, np.int32(4))
    assert value.shape == flag.shape == square.shape == ()
    assert value == 11.0 and flag and square == 16 and square.dtype == np.int32
    single = gc.compile(inputs=[s], outputs=s + 1)
    assert single(np.array(1.5)) == 2.5
    with pytest.raises(gc.InputError):
        single(np.array([1.5]))


# ---- state -----------------------------------------------------------------------------------


def test_updates_are_simultaneous_swap():
    a, b = gc.param("a", np.array([1.0, 2.0])), gc.param("b", np.array([3.0, 4.0]))
    step = gc.compile(inputs=[], outputs=[a * 1, b * 1], updates={a: b, b: a})
    old_a, old_b = step()
    np.testing.assert_array_equal(old_a, [1.0, 2.0])
    np.testing.assert_array_equal(old_b, [3.0, 4.0])
    np.testing.assert_array_equal(a.value, [3.0, 4.0])
    np.testing.assert_array_equal(b.value, [1.0, 2.0])
    step()
    np.testing.assert_array_equal(a.value, [1.0, 2.0])
    np.testing.assert_array_equal(b.value, [3.0, 4.0])


def test_updates_rotate_three_params_and_read_old_values():
    a, b, c = (gc.param(n, np.array([v])) for n, v in [("a", 1.0), ("b", 2.0), ("c", 3.0)])
    step = gc.compile(inputs=[], outputs=[a, c], updates={a: b, b: c * 1.0, c: a + b})
    old_a, old_c = step()
    assert (old_a[0], old_c[0]) == (1.0, 3.0)
    assert (a.value[0], b.value[0], c.value[0]) == (2.0, 3.0, 3.0)


def _update_cases():
    """(name, build) with build() -> (outputs, updates, feed by input Tensor)."""
    square = lambda name: gc.param(name, np.arange(4.0).reshape(2, 2))  # noqa: E731
    row = lambda name, v=0.0: gc.param(name, np.arange(4.0) + v)  # noqa: E731
    x = gc.input("x", (4,), "float64")
    xv = np.array([1.0, -2.0, 3.0, 0.5])

    def transpose_self():
        w = square("w")
        return [w, w.T], {w: w.T}, {}

    def from_input():
        w = row("w")
        return [w * 2], {w: x}, {x: xv}

    def value_is_an_output():
        w = row("w")
        y = w * x
        return [y], {w: y}, {x: xv}

    def from_const():
        w = row("w")
        return [w], {w: gc.const(np.array([9.0, 8.0, 7.0, 6.0]))}, {}

    def rotate_self():
        w = row("w")
        return [w.sum()], {w: gc.concat([w[1:], w[:1]]) * x}, {x: xv}

    def matmul_self():
        w = square("w")
        return [(w @ w).sum()], {w: w @ w}, {}

    def each_from_both():
        w, v = row("w"), row("v", 1.0)
        return [w + v], {w: w + v, v: w - v}, {}

    def swap_transposed():
        w, b = square("w"), gc.param("b", np.ones((2, 2)))
        return [w], {w: b.T, b: w.T}, {}

    cases = [transpose_self, from_input, value_is_an_output, from_const, rotate_self]
    cases += [matmul_self, each_from_both, swap_transposed]
    return {f.__name__: f for f in cases}


UPDATE_CASES = _update_cases()


@pytest.mark.parametrize("case", list(UPDATE_CASES))
def test_updates_equal_the_interpreter(case):
    outputs, updates, feed = UPDATE_CASES[case]()
    want_outputs = gc.evaluate(outputs, feed) if outputs else []
    want_updates = gc.evaluate(list(updates.values()), feed)
    step = gc.compile(inputs=list(feed), outputs=outputs, updates=updates)
    for _ in range(2):
        got = step(*feed.values())
        for g, w in zip(got, want_outputs):
            np.testing.assert_allclose(g, w, rtol=1e-12)
        for p, w in zip(updates, want_updates):
            np.testing.assert_allclose(p.value, w, rtol=1e-12)
        want_outputs = gc.evaluate(outputs, feed) if outputs else []
        want_updates = gc.evaluate(list(updates.values()), feed)


def test_zero_outputs_with_updates():
    q = gc.param("q", np.array([1.0, -1.0]))
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=[], updates={q: q * x})
    assert step(np.array([2.0, 3.0])) == []
    step(np.array([2.0, 3.0]))
    np.testing.assert_array_equal(q.value, [4.0, -9.0])


def test_program_compiled_twice_shares_parameter_storage():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    train = gc.compile(inputs=[x], outputs=(w * x).sum(), updates={w: w + x})
    infer = gc.compile(inputs=[x], outputs=w * x)
    train(np.array([1.0, 1.0]))
    np.testing.assert_array_equal(infer(np.array([1.0, 1.0])), [2.0, 3.0])
    w.value = np.array([10.0, 20.0])  # assigning through the Tensor keeps the storage
    np.testing.assert_array_equal(infer(np.array([1.0, 1.0])), [10.0, 20.0])
    assert train(np.array([1.0, 0.0])) == 10.0
    np.testing.assert_array_equal(infer(np.array([1.0, 1.0])), [11.0, 20.0])


def test_no_crash_after_the_program_and_tensors_are_collected():
    def build():
        x = gc.input("x", (3,), "float64")
        w = gc.param("w", np.array([1.0, 2.0, 3.0]))
        program = gc.Program([x], gc.tanh(x * w).sum(), updates={w: w * 2})
        return gc.compile(program)

    step = build()
    python_gc.collect()
    for scale in (1, 2, 4):
        np.testing.assert_allclose(
            step(np.ones(3)), np.tanh(scale * np.array([1.0, 2.0, 3.0])).sum()
        )


def run_concurrently(worker, count: int) -> None:
    """Run `worker(0)` ... `worker(count - 1)` on as many threads at once; wait for all."""
    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_eight_threads_share_one_executable():
    x = gc.input("x", (4, 3), "float64")
    w = gc.param("w", np.linspace(-1, 1, 6).reshape(3, 2))
    step = gc.compile(inputs=[x], outputs=gc.tanh(x @ w).sum(axis=0))
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(50):
            xv = rng.uniform(-1, 1, (4, 3))
            got = step(xv)
            if not np.allclose(got, np.tanh(xv @ w.value).sum(axis=0), rtol=1e-12, atol=0):
                errors.append(seed)

    run_concurrently(worker, 8)
    assert errors == []


def test_outputs_reading_an_unlisted_input_are_refused_with_its_name():
    x = gc.input("x", (2,), "float64")
    hidden = gc.input("hidden_input", (2,), "float64")
    with pytest.raises(gc.InputError, match="'hidden_input'"):
        gc.compile(inputs=[x], outputs=x + hidden)
    w = gc.param("w", np.zeros(2))
    with pytest.raises(gc.InputError, match="'hidden_input'"):
        gc.compile(inputs=[x], outputs=x, updates={w: w + hidden})


# ---- dumps and the object cache ----------------------------------------------------------------


def test_exp_tanh_kernel_vectorizes_without_libm_calls():
    x = gc.input("x", (4096,), "float32")
    step = gc.compile(inputs=[x], outputs=gc.tanh(gc.exp(x) * 0.5))
    asm = step.dump("asm")
    assert_vectorized_at_target_width(asm)
    called = set(re.findall(r"^\s*call[lq]?\s+\*?([\w.@]+)", asm, re.MULTILINE))
    libm = {"exp", "expf", "tanh", "tanhf", "__exp_finite", "__expf_finite"}
    assert not {name.split("@")[0] for name in called} & libm, called
    xv = np.linspace(-4, 4, 4096, dtype=np.float32)
    np.testing.assert_allclose(step(xv), np.tanh(np.exp(xv) * 0.5), rtol=1e-5, atol=1e-6)


def test_dump_stages_and_unknown_stage():
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=gc.exp(x).sum(), name="tiny")
    for stage in step.stages:
        assert step.dump(stage)
    assert "define" in step.dump("llvm")
    with pytest.raises(gc.InputError, match="nope"):
        step.dump("nope")


CACHE_SCRIPT = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import graphc as gc

    x = gc.input("x", (64, 8), "float32")
    w = gc.param("w", np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3))
    start = time.perf_counter()
    step = gc.compile(inputs=[x], outputs=gc.tanh(x @ w + 1.0).sum(axis=1), name="cached")
    build = time.perf_counter() - start
    result = step(np.ones((64, 8), np.float32))
    print(json.dumps({"cached": step.engine.cached, "timings": step.timings,
                      "build": build, "result": result.tolist()}))
    """
)


def test_a_new_process_compiling_the_same_program_hits_the_cache(tmp_path):
    env = {**os.environ, "GRAPHC_CACHE_DIR": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", CACHE_SCRIPT], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert not cold["cached"] and "optimize" in cold["timings"]
    assert warm["cached"] and "optimize" not in warm["timings"]
    assert warm["result"] == cold["result"]
    for label, run in [("cold", cold), ("cached", warm)]:
        stages = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in run["timings"].items())
        print(f"\n{label} build {run['build'] * 1e3:.1f} ms ({stages} ms)", end="")


# ---- the fast path of __call__ ----------------------------------------------------------------


def test_fast_and_checked_paths_agree_on_every_kind_of_argument():
    """Exact ndarrays take the fast path; views, other byte orders, subclasses, lists don't."""
    x = gc.input("x", (2, 3), "float64")
    step = gc.compile(inputs=[x], outputs=x * 2)
    base = np.arange(6.0).reshape(2, 3)
    variants = [
        base,
        np.asfortranarray(base),
        np.arange(12.0).reshape(2, 6)[:, ::2],
        base.astype(">f8"),
        base.astype(np.float32),
        base.view(np.matrix),
        base.tolist(),
    ]
    for value in variants:
        before = np.array(value, copy=True)
        np.testing.assert_array_equal(step(value), np.asarray(value, np.float64) * 2)
        np.testing.assert_array_equal(np.asarray(value), before)
    with pytest.raises(gc.InputError):
        step(base.T)


def test_fast_path_rebinds_a_replaced_parameter_array():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=w * x, updates={w: w + 1})
    ones = np.ones(2)
    np.testing.assert_array_equal(step(ones), [1.0, 2.0])
    storage = w.node.attrs["storage"]
    storage.value = np.array([5.0, 7.0])  # the storage array itself replaced
    np.testing.assert_array_equal(step(ones), [5.0, 7.0])
    np.testing.assert_array_equal(storage.value, [6.0, 8.0])
    storage.value = np.array([1, 2], np.int64)  # converted and rebound, still updated in place
    np.testing.assert_array_equal(step(ones), [1.0, 2.0])
    np.testing.assert_array_equal(w.value, [2.0, 3.0])


def test_rebinding_keeps_the_class_and_reaches_calls_by_name_and_the_checked_path():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=w * x)
    cls, storage = type(step), w.node.attrs["storage"]
    storage.value = np.array([3.0, 4.0])
    np.testing.assert_array_equal(step(x=np.ones(2)), [3.0, 4.0])
    storage.value = np.array([5.0, 6.0])
    np.testing.assert_array_equal(step([1.0, 1.0]), [5.0, 6.0])  # a list: converted
    storage.value = np.array([7.0, 8.0])
    np.testing.assert_array_equal(step(np.ones(2)), [7.0, 8.0])
    assert type(step) is cls


def test_each_executable_is_an_executable_of_a_class_of_its_own():
    x = gc.input("x", (2,), "float64")
    double, triple = gc.compile(inputs=[x], outputs=x * 2), gc.compile(inputs=[x], outputs=x * 3)
    assert isinstance(double, Executable) and isinstance(triple, Executable)
    assert type(double) is not type(triple) and Executable not in (type(double), type(triple))
    assert type(double).__name__ == "Executable"
    for _ in range(2):
        np.testing.assert_array_equal(double(np.ones(2)), [2.0, 2.0])
        np.testing.assert_array_equal(triple(np.ones(2)), [3.0, 3.0])


def test_calls_by_name_take_the_fast_path_and_conversions_the_checked_one(monkeypatch):
    x, n = gc.input("x", (2, 3), "float64"), gc.input("n", (2,), "int32")
    step = gc.compile(inputs=[x, n], outputs=x.sum(axis=1) + n)
    checked = []  # the positional and named arguments _call_checked was given
    original = Executable._call_checked

    def spy(executable, args, kwargs):
        checked.append((len(args), sorted(kwargs)))
        return original(executable, args, kwargs)

    monkeypatch.setattr(Executable, "_call_checked", spy)  # not on `step`: that is a cycle
    want = expected(XV, NV, 1.0)
    for got in [step(XV, NV), step(x=XV, n=NV), step(n=NV, x=XV), step(XV, n=NV)]:
        np.testing.assert_array_equal(got, want)
    assert checked == []
    np.testing.assert_array_equal(step(n=NV, x=XV.tolist()), want)  # reordered, then converted
    np.testing.assert_array_equal(step(XV, n=NV.astype(np.int16)), want)
    assert checked == [(2, []), (2, [])]
    with pytest.raises(gc.InputError, match="'q'"):
        step(XV, q=NV)
    assert checked[-1] == (1, ["q"])


def test_wrong_arity_and_misnamed_arguments_are_input_errors_on_every_path():
    x, n = gc.input("x", (2, 3), "float64"), gc.input("n", (2,), "int32")
    step = gc.compile(inputs=[x, n], outputs=x.sum(axis=1) + n)
    with pytest.raises(gc.InputError, match="'x'.*twice"):
        step(XV, x=XV)
    with pytest.raises(gc.InputError, match=r"missing.*'n'"):
        step(x=XV)
    with pytest.raises(gc.InputError, match="takes 2 inputs, got 3"):
        step(XV, NV, NV, n=NV)
    with pytest.raises(gc.InputError, match=r"'x' expects shape \(2, 3\)"):
        step(n=NV, x=XV.T)  # by name, then refused by position with the same message
    p = gc.param("p", np.array([1.0]))
    constant = gc.compile(inputs=[], outputs=p * 2)
    np.testing.assert_array_equal(constant(), [2.0])
    with pytest.raises(gc.InputError, match="takes 0 inputs, got 1"):
        constant(1.0)
    with pytest.raises(gc.InputError, match="unknown input 'z'"):
        constant(z=1.0)


def test_a_dead_executable_drops_its_generated_call_and_buffers_at_once():
    """Its class lives until the cycle collector runs; the class's methods must not keep the
    executable's buffers alive that long."""
    x = gc.input("x", (3,), "float64")
    step = gc.compile(inputs=[x], outputs=x + 1.0)
    step(np.zeros(3))
    cls, buffer = type(step), weakref.ref(step._inputs[0])
    enabled = python_gc.isenabled()
    python_gc.disable()
    try:
        del step
        assert buffer() is None
        assert "__call__" not in vars(cls) and "_run" not in vars(cls)
    finally:
        if enabled:
            python_gc.enable()


# ---- copies (pickling: tests/test_pickle.py) ------------------------------------------------


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_copy_is_another_executable_sharing_the_parameters_and_outlives_the_original(size):
    n = 4 if size == "small" else NATIVE_ENTRY_MAX_BYTES // 8 + 1
    w = gc.param("w", np.ones(n))
    x = gc.input("x", (n,), "float64")
    step = gc.compile(inputs=[x], outputs=(w * x).sum(), updates={w: w + x})
    twin = copy.copy(step)
    assert isinstance(twin, Executable) and type(twin) is not type(step)
    ones = np.ones(n)
    assert step(ones) == n and twin(ones) == 2 * n  # the twin reads the update: one w
    del step
    python_gc.collect()
    assert twin(ones) == 3 * n
    np.testing.assert_array_equal(w.value, 4 * ones)


def test_a_deep_copy_has_parameters_of_its_own_which_tensors_copied_with_it_name():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    y = x
    for _ in range(400):  # deeper than copy.deepcopy's own recursion reaches
        y = y + 1.0
    step = gc.compile(inputs=[x], outputs=w * y, updates={w: w + 1}, name="deep")
    w2, step2 = copy.deepcopy((w, step))
    zeros = np.zeros(2)
    np.testing.assert_array_equal(step2(zeros), [400.0, 800.0])
    np.testing.assert_array_equal(w.value, [1.0, 2.0])
    np.testing.assert_array_equal(w2.value, [2.0, 3.0])
    w2.value = np.array([10.0, 20.0])
    np.testing.assert_array_equal(step2(zeros), [4000.0, 8000.0])
    np.testing.assert_array_equal(step(zeros), [400.0, 800.0])
    np.testing.assert_array_equal(copy.deepcopy(step)(zeros), [800.0, 1200.0])
    np.testing.assert_array_equal(w.value, [2.0, 3.0])  # the lone copy updated its own w
    for stage in ("graph", "memory"):
        assert step2.dump(stage) == step.dump(stage)


def test_a_tensor_deep_copies_deep_graphs_with_parameters_of_its_own():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    y = x
    for _ in range(5000):  # Node.__deepcopy__ walks the inputs without recursion
        y = y + 1.0
    y2 = copy.deepcopy(y * w)
    w.value = np.array([3.0, 3.0])
    np.testing.assert_array_equal(gc.evaluate(y2, {"x": np.zeros(2)}), [5000.0, 10000.0])
    np.testing.assert_array_equal(gc.evaluate(y * w, {"x": np.zeros(2)}), [15000.0, 15000.0])


# ---- large arguments: passed by address, never written ------------------------------------

LARGE = 20_000  # float32 elements: 80 KB, above executable.LARGE_BYTES


def _misaligned(values: np.ndarray) -> np.ndarray:
    """A copy of `values` whose data is not aligned to its itemsize."""
    raw = np.empty(values.nbytes + 1, np.uint8)[1:]
    array = raw.view(values.dtype)
    array[...] = values
    assert array.ctypes.data % values.itemsize
    return array


def test_large_arguments_of_every_layout_give_the_same_results():
    """Exact contiguous arrays go by address; strided, misaligned, other dtypes, lists and
    read-only arrays are converted or copied; none of them is written."""
    assert LARGE * 4 >= LARGE_BYTES
    a, b = gc.input("a", (LARGE,), "float32"), gc.input("b", (LARGE,), "float32")
    step = gc.compile(inputs=[a, b], outputs=[gc.tanh(a * b) - 0.5 * a, a + 1])
    rng = np.random.default_rng(0)
    av = rng.normal(size=LARGE).astype(np.float32)
    bv = rng.normal(size=LARGE).astype(np.float32)
    want = gc.evaluate([gc.tanh(a * b) - 0.5 * a, a + 1], {a: av, b: bv})
    wide = np.repeat(av, 2)
    frozen = av.copy()
    frozen.setflags(write=False)
    variants = [av, wide[::2], _misaligned(av), av.astype(np.float64), av.astype(">f4"), frozen]
    for value in variants:
        saved = np.array(value, copy=True)
        for got, w in zip(step(value, bv), want):
            np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(value, saved)
    first, second = step(av, bv), step(av, bv)
    arrays = [*first, *second, av, bv]
    for i, x in enumerate(arrays):
        for y in arrays[i + 1 :]:
            assert not np.shares_memory(x, y)
    assert all(out.flags.owndata and out.flags.c_contiguous for out in first)


def test_a_large_input_that_is_an_updated_parameter_is_read_before_the_update():
    """step(w.value) with w updated in place: the input keeps its value for the whole step."""
    w = gc.param("w", np.linspace(0.5, 1.5, LARGE, dtype=np.float32))
    x = gc.input("x", (LARGE,), "float32")
    step = gc.compile(inputs=[x], outputs=(x * 3.0).sum(), updates={w: w * 2.0 + x})
    for _ in range(3):
        old = w.value.copy()
        loss = step(w.value)
        np.testing.assert_allclose(loss, (old * 3.0).sum(), rtol=1e-4)
        np.testing.assert_allclose(w.value, old * 3.0, rtol=1e-6)


def test_threads_with_large_arguments_get_their_own_results():
    a = gc.input("a", (LARGE,), "float32")
    step = gc.compile(inputs=[a], outputs=a * 2.0 + 1.0)
    errors = []

    def worker(seed):
        for k in range(20):
            value = np.full(LARGE, seed * 100 + k, np.float32)
            if not np.array_equal(step(value), value * 2.0 + 1.0):
                errors.append((seed, k))

    run_concurrently(worker, 4)
    assert errors == []


def test_replacing_a_parameter_array_rebinds_the_fast_path():
    w = gc.param("w", np.ones(LARGE, np.float32))
    x = gc.input("x", (LARGE,), "float32")
    step = gc.compile(inputs=[x], outputs=x * w, updates={w: w + 1.0})
    ones = np.ones(LARGE, np.float32)
    np.testing.assert_array_equal(step(ones), ones)
    w.value = np.full(LARGE, 5.0, np.float32)
    np.testing.assert_array_equal(step(ones), 5.0 * ones)
    np.testing.assert_array_equal(step(w.value), 36.0 * ones)  # 6 * 6, read before the update
    np.testing.assert_array_equal(w.value, 7.0 * ones)


def test_an_executable_is_freed_by_reference_counting_alone():
    """No reference cycle: the cycle collector would finalize its LLVM objects in any order."""
    x = gc.input("x", (LARGE,), "float32")
    step = gc.compile(inputs=[x], outputs=x + 1.0)
    step(np.zeros(LARGE, np.float32))
    alive, engine = weakref.ref(step), weakref.ref(step.engine)
    enabled = python_gc.isenabled()
    python_gc.disable()
    try:
        del step
        assert alive() is None and engine() is None
    finally:
        if enabled:
            python_gc.enable()


# ---- the compile cache, keyed on the printed graph -------------------------------------------


def _scaled_program(scale: float, name: str = "scaled"):
    x = gc.input("x", (3, 4), "float64")
    w = gc.param("w", np.linspace(-1, 1, 8).reshape(4, 2))
    return gc.Program([x], gc.tanh(x @ w * scale).sum(axis=0), {w: w * 0.5}, name=name), x, w


def test_a_cache_hit_skips_passes_and_emission_and_dumps_stay_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    program, x, w = _scaled_program(2.0)
    fresh = gc.compile(program)
    cached = gc.compile(program)
    assert not fresh.engine.cached and cached.engine.cached
    assert "passes" in fresh.timings and "passes" not in cached.timings
    assert "emit" not in cached.timings and "key" in cached.timings
    assert cached.kernels == fresh.kernels
    assert cached.memory.arena_bytes == fresh.memory.arena_bytes
    for stage in fresh.stages:
        assert cached.dump(stage) == fresh.dump(stage), stage
    xv = np.linspace(0, 1, 12).reshape(3, 4)
    for step in (fresh, cached, fresh):  # they share w, which each call halves
        want = gc.evaluate(program.outputs, {x: xv})[0]
        np.testing.assert_allclose(step(xv), want, rtol=1e-12)


def test_the_same_model_from_other_source_lines_hits_the_cache(tmp_path, monkeypatch):
    """Locations are not part of the cache key (no code depends on them): a model built on
    other lines, as after an edit above it, loads the cached object; its dumps still show
    its own lines."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    first, _, _ = _scaled_program(2.0)
    with location("model.py:10"):
        moved, _, _ = _scaled_program(2.0)
    assert "model.py:10" in str(moved.graph) and "model.py:10" not in str(first.graph)
    fresh, cached = gc.compile(first), gc.compile(moved)
    assert not fresh.engine.cached and cached.engine.cached
    assert "model.py:10" in cached.dump("graph") and "model.py:10" in cached.dump("fused")
    assert "model.py:10" not in fresh.dump("fused")
    renamed, _, _ = _scaled_program(2.0, name="renamed")  # names do reach the code
    assert not gc.compile(renamed).engine.cached


def test_a_build_that_fails_part_way_leaves_no_error_behind(monkeypatch):
    """An executable whose build raises after its class was made is collected quietly."""
    x = gc.input("x", (3,), "float64")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def broken(self):
        raise RuntimeError("native entry unavailable")

    monkeypatch.setattr(Executable, "_native_entry", broken)
    with pytest.raises(RuntimeError, match="native entry unavailable"):
        gc.compile([x], gc.exp(x), cache=False)
    python_gc.collect()
    assert unraisable == []


def test_a_cached_executable_exports_ahead_of_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    program, _, _ = _scaled_program(3.0, name="aot_cached")
    gc.compile(program)
    cached = gc.compile(program)
    assert cached.engine.cached
    paths = gc.aot.export(cached, tmp_path / "out", name="aot_cached")
    assert all(os.path.exists(p) for p in paths)


def test_programs_differing_only_in_a_constant_or_a_type_do_not_share_an_entry(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    xv = np.linspace(0, 1, 12).reshape(3, 4)
    results = []
    for scale in (2.0, 2.0000000000000004, 3.0):  # the middle one is the next float after 2.0
        program, x, _ = _scaled_program(scale)
        step = gc.compile(program)
        assert not step.engine.cached
        want = gc.evaluate(program.outputs, {x: xv})[0]
        results.append(step(xv).tolist())
        np.testing.assert_allclose(results[-1], want, rtol=1e-12)
    assert results[0] != results[2]
    for dtype in ("float32", "float64"):
        x = gc.input("x", (4,), dtype)
        step = gc.compile(inputs=[x], outputs=x * 2, name="typed")
        assert not step.engine.cached and step(np.ones(4, dtype)).dtype == dtype


def test_cache_key_covers_compiler_sources_and_code_changing_environment(monkeypatch):
    from graphc.runtime import jit

    monkeypatch.delenv("GRAPHC_NOINLINE", raising=False)
    base = jit.cache_key("graph", 2)
    monkeypatch.setenv("GRAPHC_VERIFY", "0")
    assert jit.cache_key("graph", 2) == base
    monkeypatch.setenv("GRAPHC_NOINLINE", "1")
    assert jit.cache_key("graph", 2) != base
    monkeypatch.delenv("GRAPHC_NOINLINE")
    monkeypatch.setattr(jit, "source_fingerprint", lambda: "an edited compiler")
    jit._host_key.cache_clear()
    try:
        assert jit.cache_key("graph", 2) != base
    finally:
        monkeypatch.undo()
        jit._host_key.cache_clear()
    assert jit.cache_key("graph", 2) == base
    assert len(jit.source_fingerprint()) == 64


# ---- rough edges (issue 19) ----------------------------------------------------------------


def test_a_non_ascii_program_name_becomes_an_ascii_symbol():
    x = gc.input("x", (3,), "float64")
    w = gc.param("poidsé", np.ones(3))
    step = gc.compile(inputs=[x], outputs=x * w, updates={w: w + 1}, name="modèle")
    assert step.name.isascii() and step.name.isidentifier()
    np.testing.assert_array_equal(step(np.ones(3)), np.ones(3))
    np.testing.assert_array_equal(w.value, [2.0, 2.0, 2.0])


def test_executables_updating_the_same_params_share_one_lock():
    """Copies and a second compile of one model serialise their updates (large steps release
    the GIL, so two threads could otherwise interleave a read and a write of the state)."""
    x = gc.input("x", (3,), "float64")
    w = gc.param("w", np.zeros(3))
    step = gc.compile(inputs=[x], outputs=x * w, updates={w: w + 1})
    again = gc.compile(inputs=[x], outputs=x * w, updates={w: w + 1})
    assert copy.copy(step)._lock is step._lock is again._lock
    other = gc.param("other", np.zeros(3))
    independent = gc.compile(inputs=[x], outputs=x * other, updates={other: other + 1})
    assert independent._lock is not step._lock


def test_an_updated_param_bound_to_a_read_only_array_is_refused():
    x = gc.input("x", (3,), "float64")
    w = gc.param("w", np.zeros(3))
    step = gc.compile(inputs=[x], outputs=x * w, updates={w: w + 1})
    frozen = np.ones(3)
    frozen.setflags(write=False)
    w.node.attrs["storage"].value = frozen  # the array itself, not a copy
    with pytest.raises(gc.InputError, match="'w' is updated in place.*read-only"):
        step(np.ones(3))
    np.testing.assert_array_equal(frozen, np.ones(3))
    w.node.attrs["storage"].value = frozen.copy()  # writeable again: the step runs
    step(np.ones(3))
    np.testing.assert_array_equal(w.value, [2.0, 2.0, 2.0])


def test_an_integer_argument_that_does_not_fit_the_input_is_refused():
    x = gc.input("x", (3,), "int32")
    step = gc.compile(inputs=[x], outputs=x * 2)
    np.testing.assert_array_equal(step(np.array([1, 2, 3], np.int64)), [2, 4, 6])
    with pytest.raises(gc.InputError, match="int64 argument do not fit"):
        step(np.array([1, 2**40, 3], np.int64))


def test_an_executable_shows_what_it_computes():
    x = gc.input("x", (2, 3), "float32")
    w = gc.param("w", np.ones(3, np.float32))
    step = gc.compile(inputs=[x], outputs=(x * w).sum(), updates={w: w * 2}, name="show")
    assert step.inputs == step.graph.inputs and step.outputs == step.graph.outputs
    text = repr(step)
    assert text.startswith("<Executable show(x: f32[2,3]) -> (") and "kernels" in text
    assert "updates 1 params" in text and "0x" not in text


def test_native_outputs_are_made_by_numpy_and_dtype_references_balance():
    """The native entry makes its outputs with NumPy's PyArray_NewFromDescr, which steals a
    reference to the dtype: every rank and dtype comes out fresh, owned and writeable, and
    the dtype singletons' reference counts do not drift over many calls."""
    x = gc.input("x", (2, 3), "float32")
    outputs = [x * 2.0, x.sum(), (x > 0.0), x.astype("int64").reshape(3, 2)]
    step = gc.compile(inputs=[x], outputs=outputs)
    assert step._native is not None
    xv = np.arange(-3.0, 3.0, dtype=np.float32).reshape(2, 3)
    dtypes = [np.dtype(d) for d in ("float32", "bool", "int64")]
    results = step(xv)  # the arrays it holds reference the dtypes
    before = [sys.getrefcount(d) for d in dtypes]
    for _ in range(1000):
        results = step(xv)
    assert [sys.getrefcount(d) for d in dtypes] == before
    expected = [xv * 2, xv.sum(), xv > 0, xv.astype(np.int64).reshape(3, 2)]
    for got, want in zip(results, expected, strict=True):
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.owndata and got.flags.writeable and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(results[0], step(xv)[0])
