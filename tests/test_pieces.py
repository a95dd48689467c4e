"""Concat and pad cost O(1) per element: loops split at the pieces (codegen/pieces.py).

Values: each program's compiled outputs equal the interpreter's bit for bit (a piece's value
is read or the fill value used, and the same adds run in the same order), in float32 and
float64, on one thread and on two (a split outer loop whose chunks cut across the boxes).
Work: counted on the LLVM IR after optimization, per element stored: a kernel assembling a
tensor from 40 pieces loads, adds and selects no more per element than one from 5 pieces,
while with GRAPHC_NOPIECES=1 (every piece at every element) the same count grows with N.
"""

from __future__ import annotations

from collections import Counter

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

import graphc as gc
from graphc.codegen import pieces
from graphc.frontend.tensor import Tensor
from graphc.ir.ops import apply

FLOATS = ("float32", "float64")


def pad(t: Tensor, widths, value=0.0) -> Tensor:
    """t padded by (low, high, interior) per axis."""
    return Tensor(apply("pad", t.node, widths=tuple(widths), value=value))


def check_exact(inputs, outputs, rng, threads=1, monkeypatch=None, approx=()):
    """Compile, run on random inputs, compare with the interpreter bit for bit (the outputs
    numbered in `approx`, which sum reassociated or call exp, to 1e-6)."""
    if monkeypatch is not None:
        monkeypatch.setenv("GRAPHC_THREADS", str(threads))
    feed = {x.name: rng.uniform(-2, 2, x.shape).astype(x.dtype) for x in inputs}
    step = gc.compile(gc.Program(inputs, list(outputs)))
    got = step(**feed)
    want = gc.evaluate(list(outputs), feed)
    for i, (g, w) in enumerate(zip(got, want)):
        if i in approx:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}")
    return step


# ---- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat_along_each_axis(axis, dtype):
    x = gc.input("x", (5, 6, 7), dtype)
    y = gc.input("y", (5, 6, 7), dtype)
    cut = [slice(None)] * 3
    parts = []
    for start, stop in [(0, 1), (1, 4), (4, 4), (2, 7)]:  # sizes 1, 3, 0 (empty), rest
        cut[axis] = slice(start, min(stop, x.shape[axis]))
        parts.append(x[tuple(cut)])
    outputs = [gc.concat([*parts, y], axis=axis), gc.exp(gc.concat([y, 2.0 * x], axis=axis))]
    check_exact([x, y], outputs, np.random.default_rng(axis), approx={1})


@pytest.mark.parametrize("dtype", FLOATS)
def test_sums_of_pads_with_low_high_and_interior_widths(dtype):
    """Backward passes of slices: overlapping, disjoint and strided (interior) pieces."""
    xs = [gc.input(f"x{i}", (3, 4), dtype) for i in range(4)]
    s = gc.input("s", (2, 4), dtype)
    outputs = [
        # disjoint along axis 0 (a GRU's per-step gradients)
        sum(pad(x, [(4 * i, 12 - 4 * i, 0), (0, 0, 0)]) for i, x in enumerate(xs)),
        # overlapping on both axes (col2im), fill values other than 0
        sum(pad(x, [(i, 3 - i, 0), (3 - i, i, 0)], value=0.5 * i) for i, x in enumerate(xs)),
        # strided: the gradient of x[::2] and x[1::3], plus low/high on the other axis
        pad(s, [(0, 1, 1), (1, 0, 0)]) + pad(s, [(1, 0, 2), (0, 1, 0)])[:4] * 3.0,
        pad(xs[0], [(1, 2, 1), (2, 1, 3)]) - pad(xs[1], [(2, 1, 1), (0, 3, 3)]),
    ]
    check_exact([*xs, s], outputs, np.random.default_rng(5))


@pytest.mark.parametrize("dtype", FLOATS)
def test_nested_pieces(dtype):
    """Concats of pads, pads of concats, concats of concats, slices and reshapes of them."""
    x = gc.input("x", (4, 6), dtype)
    y = gc.input("y", (4, 3), dtype)
    inner = gc.concat([x, y], axis=1)  # (4, 9)
    padded = pad(x, [(1, 2, 0), (2, 0, 1)])  # (7, 13)
    outputs = [
        gc.concat([pad(x, [(0, 0, 0), (1, 1, 0)]), pad(y, [(1, 0, 0), (0, 0, 2)])[1:]], axis=1),
        pad(inner, [(2, 1, 0), (1, 3, 1)], value=-1.0),
        gc.concat([gc.concat([inner, inner[:, 2::3]], axis=1), gc.concat([y, x, y], axis=1)]),
        gc.concat([padded[::2, 1:], padded[1::2, :-1]], axis=0)[:, 2:11:3],
        gc.concat([inner, x[:, :3] * 2.0], axis=1).reshape(6, 8),
        (gc.concat([x, pad(y, [(0, 0, 0), (0, 3, 0)])]) * 2.0).sum(axis=0),
    ]
    check_exact([x, y], outputs, np.random.default_rng(6), approx={5})


def test_im2col_and_col2im_on_two_threads(monkeypatch, dtype="float32"):
    """A 25-piece concat and its gradient (a sum of 25 pads), large enough to be split
    between 2 threads; chunks of rows begin inside boxes (float64: the tests above)."""
    x = gc.input("x", (13, 2, 20, 20), dtype)
    padded = pad(x, [(0, 0, 0), (0, 0, 0), (2, 2, 0), (2, 2, 0)])
    patches = gc.concat(
        [padded[:, :, i : i + 20, j : j + 20] for i in range(5) for j in range(5)], axis=1
    )
    g = gc.input("g", patches.shape, dtype)
    (grad,) = gc.grad((patches * g).sum(), [x])
    rows = gc.concat([x[:5] * 2.0, x[5:6], x[6:]], axis=0)  # pieces along the split axis
    rng = np.random.default_rng(7)
    for inputs, outputs in (([x], [patches]), ([x, g], [grad, rows])):  # one loop each
        step = check_exact(inputs, outputs, rng, 2, monkeypatch)
        assert ".rows" in step.dump("llvm")  # the loop was split between threads


def test_the_old_loops_give_the_same_values(monkeypatch):
    """GRAPHC_NOPIECES=1 (every piece at every element) computes the same bits."""
    x = gc.input("x", (6, 5), "float64")
    outputs = [gc.concat([x[:, :2], -x, x[:, 3:]], axis=1), pad(x, [(2, 1, 1), (0, 2, 0)]) + 1.0]
    feed = {"x": np.random.default_rng(8).normal(size=(6, 5))}
    split = gc.compile(gc.Program([x], outputs))(**feed)
    monkeypatch.setenv("GRAPHC_NOPIECES", "1")
    whole = gc.compile(gc.Program([x], outputs))(**feed)
    for a, b in zip(split, whole):
        np.testing.assert_array_equal(a, b)


# ---- work per element --------------------------------------------------------------------------


def work_per_store(step, optimized=True) -> Counter:
    """The most loads, float adds and selects any block of the program (after LLVM's
    optimizations, or as emitted) runs per value it stores (a loop body, vectorized or
    not, with the pieces it evaluates)."""
    module = llvm.parse_assembly(step.engine.optimized_ir if optimized else step.dump("llvm"))
    worst: Counter = Counter()
    for function in module.functions:
        for block in function.blocks:
            ops = Counter(i.opcode for i in block.instructions)
            for op in ("load", "fadd", "select"):
                if ops["store"]:
                    worst[op] = max(worst[op], ops[op] / ops["store"])
    return worst


def concat_of(n: int) -> gc.Program:
    x = gc.input("x", (8, n, 3, 16), "float32")
    return gc.Program([x], gc.concat([x[:, i] for i in range(n)], axis=1))


def last_axis_concat_of(n: int) -> gc.Program:
    x = gc.input("x", (64, 2 * n), "float32")
    return gc.Program([x], gc.concat([x[:, 2 * i : 2 * i + 2] for i in range(n)], axis=1))


def pad_sum_of(n: int) -> gc.Program:
    """The gradient of n slices of a sequence: n disjoint pads summed."""
    xs = [gc.input(f"x{i}", (8, 2, 16), "float32") for i in range(n)]
    total = sum(
        pad(x, [(0, 0, 0), (2 * i, 2 * (n - 1 - i), 0), (0, 0, 0)]) for i, x in enumerate(xs)
    )
    return gc.Program(xs, total)


@pytest.mark.parametrize("program", [concat_of, last_axis_concat_of, pad_sum_of])
def test_work_per_element_does_not_grow_with_pieces(program, monkeypatch):
    monkeypatch.setenv("GRAPHC_THREADS", "1")
    few, many = (work_per_store(gc.compile(program(n))) for n in (5, 40))
    assert many == few, (few, many)
    assert many["load"] <= 1 and many["select"] == 0
    monkeypatch.setenv("GRAPHC_NOPIECES", "1")  # the count sees O(N) where it is
    old_few, old_many = (work_per_store(gc.compile(program(n))) for n in (5, 40))
    assert old_many["load"] + old_many["select"] >= 5 * (old_few["load"] + old_few["select"])


def test_more_pieces_than_boxes_fall_back_to_fewer_per_box(monkeypatch):
    """60 pieces along one axis and room for 8 boxes: each box reads among a few pieces."""
    monkeypatch.setenv("GRAPHC_THREADS", "1")
    monkeypatch.setattr(pieces, "MAX_BOXES", 8)
    x = gc.input("x", (3, 60, 5), "float32")
    out = gc.concat([x[:, i : i + 1] * 2.0 for i in range(60)], axis=1)
    step = check_exact([x], [out], np.random.default_rng(9))
    assert work_per_store(step, optimized=False)["load"] <= 60 / 7 + 1


# ---- the analysis ------------------------------------------------------------------------------


def test_affine_forms_of_index_arithmetic():
    """Counters, +, -, x and exact / and % by constants (a reshape's axes), else None."""
    i64 = ir.IntType(64)
    function = ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), [i64]), "f")
    b = ir.IRBuilder(function.append_basic_block())
    i = b.phi(i64)
    j = b.phi(i64)
    ranges = {i: (0, 4), j: (0, 6)}
    flat = b.add(b.mul(i, i64(7)), j)  # (5, 7) row-major
    form = lambda v: pieces.affine(v, ranges, {})  # noqa: E731
    assert form(b.sub(flat, i64(3))) == pieces.Affine(-3, ((i, 7), (j, 1)))
    assert form(b.udiv(flat, i64(7))) == pieces.Affine(0, ((i, 1),))
    assert form(b.urem(flat, i64(7))) == pieces.Affine(0, ((j, 1),))
    assert form(b.udiv(flat, i64(2))) is None  # j's values straddle an even boundary
    assert form(b.sdiv(b.sub(j, i64(1)), i64(2))) is None  # negative dividend
    assert form(b.mul(i, j)) is None
    assert form(function.args[0]) is None
    assert pieces.Affine(2, ((i, -3),)).bounds(ranges) == (-10, 2)


def test_plan_tiles_the_domain():
    """Boxes cover every element once, however the probe answers; at most MAX_BOXES."""
    rng = np.random.default_rng(10)
    shape = (7, 50, 9)
    points = {a: sorted(set(rng.integers(1, shape[a], 30).tolist())) for a in range(3)}

    def probe(box):
        found = {}
        for axis, cuts in points.items():
            inside = [c for c in cuts if box[axis][0] < c < box[axis][1]]
            if inside:
                found[axis] = Counter(inside)
        return 10, found

    boxes = pieces.plan(shape, probe)
    assert 1 < len(boxes) <= pieces.MAX_BOXES
    covered = np.zeros(shape, int)
    for box in boxes:
        covered[tuple(slice(lo, hi) for lo, hi in box)] += 1
    assert (covered == 1).all()
