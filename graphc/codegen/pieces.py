"""Loops split where a tensor's pieces begin and end, so concat and pad cost O(1) per element.

A value assembled from N pieces — a `concat`, or a sum of `pad`ded pieces (a backward pass
sums one per slice of the forward) — is computed by index maps at each element. Evaluated
blindly, every element loads all N pieces and selects one: O(N·size). Two parts fix that:

1. Questions with static answers. An index map asks the kernel emitter which of the
   intervals cut by `thresholds` an index value can fall in over the loops being emitted:
   `k.cases(value, thresholds)` (codegen/kernel.py). The emitter knows each loop counter's
   range and reads the value as an affine form of the counters (`affine`), so a concat
   evaluates only the pieces it can be in, a pad over its input skips the bounds test and
   the select (contiguous loads that vectorize), and a pad wholly outside is its fill
   value — in `add(x, pad)` a constant that LLVM folds where that is exact.
2. Loops cut so the answers are static (`plan`). The loop nest over a kernel's domain is
   split into boxes: the body is emitted once over a box into a throwaway function (a
   probe), each question answered with several intervals whose value is affine in one loop
   counter gives the points where its answer changes, and the box is cut along the axis
   with the most of them. Each part is probed in turn (a concat's piece, once static, may
   expose the pads inside it). The box with the largest (size x questions left) is cut
   first, until none is left, MAX_BOXES boxes exist, or the code would grow past
   CODE_GROWTH times the unsplit body (plus CODE_SLACK instructions):

       out = concat(a, b, c, axis=1)          for i in [0, 2):  out[:, i] = a[:, i]
       [ a a | b b b | c ]          ->        for i in [2, 5):  out[:, i] = b[:, i - 2]
                                              for i in [5, 6):  out[:, i] = c[:, i - 5]

   A cut that would exceed MAX_BOXES keeps evenly spaced cut points: each part then asks
   over fewer pieces. Questions the analysis cannot read (a value through a select, a flat
   index not aligned with the axes) keep their run-time selects, as before.

3. Axes iterated as digits (`splits`). A reshape reads its input at the digits of a flat
   index, divisions by constants. Where the division is exact over the loops' ranges the
   emitter writes the affine form it is (`divide`: (2*p + q) // 2 is p for q < 2); the
   others, which keep LLVM from vectorizing (the gradient of a 2x2 max-pool puts each
   window's taps back in place through a reshape of 28 into 14 x 2: 8 cycles an element),
   are recorded by the probe, and an axis whose counter they do not divide evenly is
   iterated as digits, 28 as 14 x 2 with index 2*p + q, when that leaves fewer of them.
   The last axis's innermost digit, when short, is unrolled, so that the loop around it
   (over 14) is the innermost one and vectorizes:

       for w in 28:                              for p in 14:       (vectorized)
           out[w] = m[w // 2, w % 2]       ->        out[2p] = m[p, 0]
                                                     out[2p + 1] = m[p, 1]

Every element is still computed by the same scalar operations in the same order as the
interpreter's (a piece's value, or the fill value), so results stay bit-identical.
`GRAPHC_NOPIECES=1` turns all three off (every piece at every element, divisions as
divisions, for comparison; it is part of the cache key, as every GRAPHC_ variable).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections import Counter
from dataclasses import dataclass
from math import prod

from llvmlite.ir import Constant, IntType

from graphc.ir.ops import opdef

MAX_BOXES = 256  # boxes (loop nests) one loop of a kernel may become
CODE_GROWTH, CODE_SLACK = 4, 3000  # instructions of all boxes <= growth x unsplit + slack
MAX_PROBES = 4 * MAX_BOXES  # bodies emitted to plan one loop

Box = tuple[tuple[int, int], ...]  # per axis, the loop's range [lo, hi)
I64 = IntType(64)


def enabled() -> bool:
    """Whether loops are split at pieces (GRAPHC_NOPIECES unset or 0)."""
    return os.environ.get("GRAPHC_NOPIECES", "") in ("", "0")


def chooses(node) -> bool:
    """A layout op whose value is not a strided view of one input (concat and pad choose
    a piece or the fill value by the index): a loop over it may be cut."""
    op = opdef(node)
    return op.index_map is not None and op.view is None and not op.flat


def reads_digits(node) -> bool:
    """A layout op reading its input at the digits of a flat index (reshape): a loop over it
    may be iterated as digits."""
    return opdef(node).flat


@dataclass(frozen=True)
class Affine:
    """const + sum of coefficient x counter: an index value in terms of loop counters."""

    const: int
    terms: tuple[tuple[object, int], ...] = ()  # (loop counter, nonzero coefficient)

    def bounds(self, ranges) -> tuple[int, int]:
        """The least and greatest value over the counters' (inclusive) `ranges`."""
        lo = hi = self.const
        for counter, a in self.terms:
            first, last = ranges[counter]
            lo += min(a * first, a * last)
            hi += max(a * first, a * last)
        return lo, hi

    def plus(self, other: Affine, sign: int = 1) -> Affine:
        terms = dict(self.terms)
        for counter, a in other.terms:
            terms[counter] = terms.get(counter, 0) + sign * a
        kept = tuple((c, a) for c, a in terms.items() if a)
        return Affine(self.const + sign * other.const, kept)

    def times(self, factor: int) -> Affine:
        if factor == 0:
            return Affine(0)
        return Affine(self.const * factor, tuple((c, a * factor) for c, a in self.terms))


def affine(value, ranges, memo: dict) -> Affine | None:
    """`value` (an llvmlite i64) as an affine form of the loop counters in `ranges` (phi ->
    inclusive (lo, hi)), or None: constants, counters, +, -, x by a constant, and / or %
    by a positive constant where the division is exact over the ranges (a row-major index
    split into axes whose strides divide evenly, as a reshape's)."""
    if value in memo:
        return memo[value]
    form = _affine(value, ranges, memo)
    memo[value] = form
    return form


def _affine(value, ranges, memo) -> Affine | None:
    constant = getattr(value, "constant", None)
    if isinstance(constant, int) and not isinstance(constant, bool):
        return Affine(constant)
    if value in ranges:
        return Affine(0, ((value, 1),))
    opname = getattr(value, "opname", None)
    if opname not in ("add", "sub", "mul", "udiv", "sdiv", "urem", "srem"):
        return None
    x, y = (affine(v, ranges, memo) for v in value.operands)
    if x is None or y is None:
        return None
    if opname == "add":
        return x.plus(y)
    if opname == "sub":
        return x.plus(y, -1)
    if opname == "mul":
        if not y.terms:
            return x.times(y.const)
        return y.times(x.const) if not x.terms else None
    if y.terms or y.const <= 0 or x.bounds(ranges)[0] < 0:
        return None  # a non-constant or non-positive divisor, or a negative dividend
    return divide(x, y.const, ranges, remainder=opname.endswith("rem"))


def divide(x: Affine, d: int, ranges, remainder: bool) -> Affine | None:
    """x // d or x % d for x >= 0, where the terms whose coefficients d does not divide stay
    within one multiple of d (then x // d is affine, and so is x % d)."""
    whole = [(c, a // d) for c, a in x.terms if a % d == 0]
    rest = Affine(x.const % d, tuple((c, a) for c, a in x.terms if a % d))
    lo, hi = rest.bounds(ranges)
    if lo // d != hi // d:
        return None
    quotient = lo // d
    if remainder:
        return rest.plus(Affine(quotient * d), -1)
    return Affine(x.const // d + quotient, tuple(whole))


FOLDABLE = {"add", "sub", "mul", "udiv", "sdiv", "urem", "srem", "and", "or", "xor", "icmp",
            "select", "fadd", "fsub", "fmul", "fneg", "fcmp"}  # fmt: skip
ADDRESSING = {"add", "sub", "mul", "getelementptr", "phi", "br"}  # folded into addresses, loops


def code_size(blocks) -> int:
    """The operations of `blocks` a box's code costs: loads, stores, arithmetic, tests and
    selects, not those LLVM folds into constants (index arithmetic on constant indices, a
    fill value added to a fill value) or into addressing (affine index arithmetic)."""
    folded: set = set()
    size = 0
    for block in blocks:
        for instruction in block.instructions:
            opname = instruction.opname.split()[0]
            constant = all(isinstance(v, Constant) or v in folded for v in instruction.operands)
            if constant and opname in FOLDABLE:
                folded.add(instruction)
            elif opname not in ADDRESSING or instruction.type != I64:
                size += 1
    return size


def cut_points(questions, axes: dict, box: Box) -> dict[int, Counter]:
    """Per axis of `box`, the points inside it where a question's answer changes, counted
    (a question is an affine form and its sorted thresholds; `axes` maps a loop counter to
    its axis)."""
    found: dict[int, Counter] = {}
    for form, thresholds in questions:
        if len(form.terms) != 1 or form.terms[0][0] not in axes:
            continue
        ((counter, a),) = form.terms
        axis = axes[counter]
        lo, hi = box[axis][:2]
        for t in thresholds:
            # a * i + const >= t from i = point on (a > 0), until i = point - 1 (a < 0)
            point = -((form.const - t) // a) if a > 0 else (t - form.const) // a + 1
            if lo < point < hi:
                found.setdefault(axis, Counter())[point] += 1
    return found


def splits(divisions, axes: dict, box: Box) -> dict[int, tuple[int, ...]]:
    """Per axis of `box`, the factors to iterate it by (as digits: `digits`) so that the
    divisions by constants a probe found inexact (each an affine form and its divisor) become
    exact: for x // d with a term a * i, i's axis split by d / gcd(a, d) makes the term a
    multiple of d plus a rest below it. An axis keeps the factors that divide its length, its
    start and each other; the first axis (the one split between threads) has none."""
    wanted: dict[int, set[int]] = {}
    for form, d in divisions:
        for counter, a in form.terms:
            axis = axes.get(counter)
            if not axis:
                continue
            lo, hi = box[axis][:2]
            factor = d // math.gcd(a, d)
            if 1 < factor < hi - lo and (hi - lo) % factor == 0 and lo % factor == 0:
                wanted.setdefault(axis, set()).add(factor)
    chains = {}
    for axis, factors in sorted(wanted.items()):
        chain: list[int] = []
        for factor in sorted(factors):
            if all(factor % f == 0 for f in chain):
                chain.append(factor)
        chains[axis] = tuple(chain)
    return chains


def digits(length: int, chain) -> tuple[list[int], list[int]]:
    """(sizes, weights) of the digits an axis of `length` split by `chain` (factors dividing
    each other, ascending) is iterated as, outermost first: 28 by (2,) is 14 x 2, index
    2*p + q; by (2, 4), 7 x 2 x 2, index 4*p + 2*q + r."""
    bounds = [length, *reversed(chain), 1]
    return [a // b for a, b in zip(bounds, bounds[1:])], bounds[1:]


def _parts(box: Box, points: dict[int, Counter], room: int) -> list[Box] | None:
    """`box` cut along the axis with the most cut points (the outer one on a tie) into at
    most `room` parts; None if it has none or there is no room."""
    if not points or room < 2:
        return None
    axis = max(sorted(points), key=lambda a: sum(points[a].values()))
    cuts = sorted(points[axis])
    if len(cuts) + 1 > room:  # evenly spaced cut points: each part holds fewer pieces
        cuts = [cuts[(i * len(cuts)) // (room - 1)] for i in range(room - 1)]
    lo, hi = box[axis]
    edges = [lo, *cuts, hi]
    return [(*box[:axis], (start, end), *box[axis + 1 :]) for start, end in zip(edges, edges[1:])]


def plan(shape, probe) -> list[Box]:
    """The boxes a loop nest over `shape` is emitted as, in row-major order of their first
    element. `probe(box)` emits the body over `box` into a throwaway function and returns
    (its instruction count, its cut points: `cut_points`)."""
    root: Box = tuple((0, d) for d in shape)
    size, points = probe(root)
    budget = CODE_GROWTH * size + CODE_SLACK
    code, boxes, probes = size, 1, 1
    leaves: list[Box] = []
    order = itertools.count()  # ties: the earlier box first
    queue = [(_priority(root, points), next(order), root, size, points)]
    while queue:
        _, _, box, size, points = heapq.heappop(queue)
        parts = _parts(box, points, MAX_BOXES - boxes + 1)
        if parts is None or probes + len(parts) > MAX_PROBES:
            leaves.append(box)
            continue
        probed = [(part, *probe(part)) for part in parts]
        probes += len(parts)
        grown = code - size + sum(s for _, s, _ in probed)
        if grown > budget:
            leaves.append(box)
            continue
        code, boxes = grown, boxes + len(parts) - 1
        for part, s, p in probed:
            heapq.heappush(queue, (_priority(part, p), next(order), part, s, p))
    return sorted(leaves)


def _priority(box: Box, points: dict[int, Counter]) -> int:
    """Heap key: the box with the most elements times questions left is cut first."""
    return -prod(hi - lo for lo, hi in box) * sum(sum(c.values()) for c in points.values())
