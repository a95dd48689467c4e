"""Pooling's kernels: loops iterated as the digits a reshape splits an axis into.

The gradient of a pooling whose windows tile the input puts each window's taps back in place
through reshapes (28 -> 14 x 2) and a transpose (ir/ops.py `_window_vjp`). Its loop kernel
iterates such an axis as its digits (codegen/pieces.py `splits`), so every index is affine
in the loop counters and the innermost loop vectorizes with no division. Values: compiled ==
interpreter in float32 and float64, for 1-, 2- and 3-d pooling, sizes the windows do not
divide (a padded rest), padding, and windows that overlap (no split); on one thread and two.
Code: the backward kernel's loop is vectorized at the target's width and divides nothing,
where with GRAPHC_NOPIECES=1 (divisions as divisions) it divides.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from targets import assert_vectorized_at_target_width

import graphc as gc
from graphc.codegen import pieces
from graphc.frontend.convolution import ELEMENTWISE_TAPS
from graphc.passes import optimize
from graphc.passes.fusion import fuse

FLOATS = ("float32", "float64")

CASES = [  # (input shape, kernel, stride, padding)
    ((2, 3, 28, 28), 2, None, 0),  # LeNet's first pooling: 28 as 14 x 2
    ((2, 3, 10, 10), 2, None, 0),  # its second: 10 as 5 x 2
    ((2, 2, 29, 27), 2, None, 0),  # a rest the windows leave out, on each axis
    ((2, 2, 12, 9), 3, None, 0),  # 12 as 4 x 3 and 9 as 3 x 3
    ((2, 2, 12, 10), (3, 2), None, 0),  # different splits per axis
    ((2, 3, 9, 9), 2, None, 1),  # padding: 11 padded, 5 windows, a rest of 1
    ((2, 2, 9, 9), 3, 2, 0),  # overlapping windows: no reshape, nothing split
    ((2, 2, 11, 10), 5, None, 0),  # 25 taps: max-pool's arg-max by a reduction
    ((2, 3, 22), 4, None, 0),  # 1-d, 22 as 5 x 4 and a rest of 2
    ((2, 3, 20), 2, None, 0),  # 1-d
    ((2, 2, 6, 8, 4), 2, None, 0),  # 3-d
]


def _case_id(case) -> str:
    shape, kernel, stride, padding = case
    return f"{'x'.join(map(str, shape))}-k{kernel}-s{stride}-p{padding}"


def _pooling_step(shape, kernel, stride, padding, dtype, pool=gc.max_pool):
    """The pooling of relu(x) (LeNet's order: the ReLU mask is read in the gradient too)
    weighted by g, and its gradient: (program outputs, inputs)."""
    x = gc.input("x", shape, dtype)
    pooled = pool(gc.relu(x), kernel, stride, padding)
    g = gc.input("g", pooled.shape, dtype)
    loss = (pooled * g).sum()
    (grad_x,) = gc.grad(loss, [x])
    return [pooled, grad_x], [x, g]


def _feed(inputs, rng):
    return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in inputs}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("pool", [gc.max_pool, gc.avg_pool], ids=["max", "avg"])
def test_pooling_and_its_gradient_compiled_equal_interpreted(case, dtype, pool):
    outputs, inputs = _pooling_step(*case, dtype, pool)
    feed = _feed(inputs, np.random.default_rng(len(case[0])))
    step = gc.compile(gc.Program(inputs, outputs))
    got, want = step(**feed), gc.evaluate(outputs, feed)
    # an average sums its taps in any order, and overlapping windows' gradients may be
    # added with fused multiply-adds (reassociation and contraction are allowed); max-pool's
    # gradient is exact: the value put in place, or zero
    rtol = {"float32": 1e-6, "float64": 1e-14}[dtype]
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=rtol)
    if pool is gc.max_pool:
        np.testing.assert_array_equal(got[1], want[1])
    else:
        np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("case", CASES[:3], ids=_case_id)
def test_two_threads_compute_the_same_gradient(case, monkeypatch):
    """The outer loop split between threads is never one iterated as digits."""
    shape = (16, *case[0][1:])  # rows enough for the split
    outputs, inputs = _pooling_step(shape, *case[1:], "float32")
    feed = _feed(inputs, np.random.default_rng(0))
    want = gc.evaluate(outputs, feed)
    monkeypatch.setenv("GRAPHC_THREADS", "2")
    got = gc.compile(gc.Program(inputs, outputs))(**feed)
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("kernel", [2, 5], ids=["elementwise", "reduction"])
def test_max_pool_first_maximum_as_numpy_argmax_with_nan_and_infinities(kernel):
    """The value and the gradient's tap are those of NumPy's argmax over each window: the
    first maximum, the first NaN over everything; -inf windows pick their first tap."""
    rng = np.random.default_rng(7)
    shape = (2, 2, 2 * kernel, 2 * kernel)
    xv = rng.integers(-2, 3, shape).astype(np.float64)  # many ties
    xv.flat[rng.choice(xv.size, 12, replace=False)] = np.nan
    xv[0, 0, :kernel, :kernel] = -np.inf
    xv[1, 1, :kernel, kernel:] = np.inf
    x = gc.input("x", shape, "float64")
    pooled = gc.max_pool(x, kernel)
    (grad_x,) = gc.grad(pooled.sum(), [x])
    windows = xv.reshape(2, 2, 2, kernel, 2, kernel).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(2, 2, 2, 2, kernel * kernel)
    first = np.argmax(windows, axis=-1)
    want_value = np.take_along_axis(windows, first[..., None], -1)[..., 0]
    want_grad = (np.arange(kernel * kernel) == first[..., None]).astype(np.float64)
    want_grad = want_grad.reshape(2, 2, 2, 2, kernel, kernel).transpose(0, 1, 2, 4, 3, 5)
    want_grad = want_grad.reshape(shape)
    step = gc.compile(gc.Program([x], [pooled, grad_x]))
    for got in (step(xv), gc.evaluate([pooled, grad_x], {x: xv})):
        np.testing.assert_array_equal(got[0], want_value)
        np.testing.assert_array_equal(got[1], want_grad)


def _function(text: str, start: str, end: str) -> str:
    """The part of a dump from `start` to the next `end`."""
    i = text.index(start)
    return text[i : text.index(end, i)]


def _gradient_kernel(monkeypatch, shape, **env):
    """(emitted LLVM IR, assembly) of the loop kernel writing max_pool's input gradient
    (each kernel a function of its own, on one thread: the loop is in that function)."""
    monkeypatch.setenv("GRAPHC_NOINLINE", "1")
    monkeypatch.setenv("GRAPHC_THREADS", "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    x = gc.input("x", shape)
    g = gc.input("g", (shape[0], shape[1], shape[2] // 2, shape[3] // 2))
    (grad_x,) = gc.grad((gc.max_pool(x, 2) * g).sum(), [x])
    step = gc.compile(gc.Program([x, g], [grad_x]))
    (name,) = [k for k in step.kernels if "grad(x)" in k]
    llvm = _function(step.dump("llvm"), f'define internal void @"{name}"(', "\n}\n")
    assembly = _function(step.dump("asm"), f'"{name}":', ".Lfunc_end")
    return llvm, assembly


@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (4, 16, 10, 10)])
def test_max_pool_gradient_loop_is_vectorized_without_division(monkeypatch, shape):
    llvm, assembly = _gradient_kernel(monkeypatch, shape)
    assert not re.search(r"\b[us](div|rem)\b", llvm)
    assert_vectorized_at_target_width(assembly)
    # without the digits the same kernel divides its indices at each element
    llvm, _ = _gradient_kernel(monkeypatch, shape, GRAPHC_NOPIECES="1")
    assert re.search(r"\budiv\b", llvm)


# ---- the planning functions ------------------------------------------------------------------


def test_splits_name_the_factors_that_make_divisions_exact():
    h, w = object(), object()  # two loop counters, of axes 2 and 3
    axes = {h: 2, w: 3}
    box = ((0, 4), (0, 6), (0, 28), (0, 28))
    local = pieces.Affine(0, ((h, 28), (w, 1)))  # the flat index of (h, w)
    # digits of a [14, 2, 14, 2] reshape: // 56, // 28, // 2
    divisions = [(local, 56), (local, 28), (local, 2)]
    assert pieces.splits(divisions, axes, box) == {2: (2,), 3: (2,)}
    # a factor that does not divide the axis, or its start, is left out
    assert pieces.splits([(local, 3)], axes, ((0, 4), (0, 6), (0, 28), (1, 28))) == {}
    # factors that divide each other nest; others are dropped
    assert pieces.splits([(local, 2), (local, 4), (local, 6)], axes, box)[3] == (2, 4)


def test_digits_and_exact_division_of_their_sum():
    assert pieces.digits(28, (2,)) == ([14, 2], [2, 1])
    assert pieces.digits(28, (2, 4)) == ([7, 2, 2], [4, 2, 1])
    p, q = object(), object()
    ranges = {p: (0, 13), q: (0, 1)}
    index = pieces.Affine(0, ((p, 2), (q, 1)))  # 2p + q
    assert pieces.divide(index, 2, ranges, remainder=False) == pieces.Affine(0, ((p, 1),))
    assert pieces.divide(index, 2, ranges, remainder=True) == pieces.Affine(0, ((q, 1),))
    assert pieces.divide(index, 4, ranges, remainder=False) is None  # p's parity


# ---- what max-pool stores ----------------------------------------------------------------------


def test_max_pool_stores_the_arg_max_and_recomputes_the_tap_mask():
    """LeNet's layer: the arg-max of each window is stored (int32, one per window) and read
    by the forward value and by the gradient, which compare it with the tap index
    themselves; no kernel writes the mask of taps (`taps == argmax`, one bool per tap)."""
    x = gc.input("x", (4, 1, 12, 12))
    w = gc.param("w", np.full((3, 1, 3, 3), 0.1, np.float32))
    pooled = gc.max_pool(gc.relu(gc.conv(x, w, padding=1)), 2)
    loss = (pooled * pooled).sum()
    (grad_w,) = gc.grad(loss, [w])
    kernels = fuse(optimize(gc.Program([x], [loss, grad_w]).graph))
    written = [out for k in kernels for out in k.outputs]
    indices = [n for n in written if n.dtype in ("int32", "int64")]
    assert [(n.dtype, n.type.size) for n in indices] == [("int32", 4 * 3 * 6 * 6)]
    assert not [n for n in written if n.dtype == "bool" and n.shape[-1] == 4]
    readers = [k for k in kernels if any(n.op == "eq" and n.shape[-1] == 4 for n in k.nodes)]
    assert len(readers) == 2  # the forward value and the gradient
    # one pass over the taps: the kernel writing the arg-max writes the pooled values too
    (forward,) = [k for k in kernels if indices[0] in k.outputs]
    assert forward.form == "reduction"
    assert [n.shape for n in forward.outputs if n.dtype == "float32"] == [(4, 3, 6, 6)]


def test_a_loop_read_at_the_reduced_index_does_not_join_the_sum():
    """A stored value of the sum's size that the sum reads along its reduced axis (each
    element at every output) stays in its own kernel: beside the sum it would be computed
    once per output element read."""
    a = gc.input("a", (8,))
    b = gc.input("b", (8, 8))
    q = gc.exp(a)  # stored: a program output
    by_column = (q.reshape(1, 8) * b).sum(axis=1)  # q[j] for each output i: reduced index
    by_row = (q.reshape(8, 1) * b).sum(axis=1)  # q[i]: the output index
    kernels = fuse(optimize(gc.Program([a, b], [q, by_column, by_row]).graph))
    with_q = [k for k in kernels if q.node in k.outputs]
    assert len(with_q) == 1 and with_q[0].form == "reduction"
    assert by_row.node in with_q[0].outputs and by_column.node not in with_q[0].outputs


@pytest.mark.parametrize("kernel", [2, 5])
def test_max_pool_in_inference_reads_its_input_once(kernel):
    """Without a gradient nothing is stored between the convolution and the pooled values:
    the first maximum of a window (elementwise over its taps for a small window, an arg-max
    reduction for a large one) is found in the kernel that sums the taps it picks."""
    x = gc.input("x", (4, 1, 12, 12))
    w = gc.param("w", np.full((3, 1, 3, 3), 0.1, np.float32))
    pooled = gc.max_pool(gc.relu(gc.conv(x, w, padding=1)), kernel)
    kernels = fuse(optimize(gc.Program([x], [pooled]).graph))
    pooling = [
        k for k in kernels if any(n.op == "window" and n.shape[-1] == kernel for n in k.nodes)
    ]
    written = [out for k in kernels for out in k.outputs]
    if kernel**2 <= ELEMENTWISE_TAPS:
        assert len(pooling) == 1 and not [n for n in written if n.dtype == "int32"]
    else:  # the reduction is a kernel of its own
        assert len(pooling) == 2


def test_short_rows_are_unrolled_whole_except_in_a_contraction_epilogue(monkeypatch):
    """A pooling row of 14 windows is unrolled (LLVM's straight-line vectorizer packs it into
    vectors of 8, 4 and 2; the loop vectorizer ran 3 vectors of 4 and 2 scalar iterations);
    a product's epilogue row of 10 keeps the loop vectorizer's hint."""
    monkeypatch.setenv("GRAPHC_THREADS", "1")
    x = gc.input("x", (4, 3, 28, 28))
    w = gc.param("w", np.full((588, 10), 0.01, np.float32))
    pooled = gc.max_pool(x, 2)
    out = gc.relu(pooled.reshape(4, 588) @ w)
    llvm = gc.compile(gc.Program([x], [pooled, out])).dump("llvm")
    hints = re.findall(r'!"llvm\.loop\.([a-z.]+)", i32 (\d+)', llvm)
    assert ("unroll.count", "14") in hints
    assert ("vectorize.enable", "1") in hints
