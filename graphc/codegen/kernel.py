# Over 500 lines on purpose: the loops, the boxes they are cut into, probes and values at an
# index all read and swap one emitter's state (builder, scopes, loop ranges).
"""One kernel as an LLVM function: loops, memory and values at an index.

Every kernel is a loop nest over a static domain. Values inside a kernel are computed
*at an index*: `value(node, index)` evaluates an elementwise node by its op's scalar
rule on its inputs' values at the same index, and a layout node (broadcast, transpose,
reshape, slice, pad, concat, iota) by its op's index map (ir/ops.py) — layout ops never
copy. Loads read kernel inputs from their buffers; results are stored to the kernel's
output buffers. `KernelEmitter` holds these emission primitives; the kernel forms
(codegen/forms.py) build loop nests from them, and codegen/llvm.py assembles the program.
The emitter knows each loop counter's range, so a concat or pad asks `cases` which pieces an
index can be in there; a loop kernel's nest is cut into boxes where each knows its piece
(`boxes`, `nest_boxes`: codegen/pieces.py).

Profiling: LLVM inlines every kernel of fewer than OUT_OF_LINE_FROM instructions into
`<name>_step`. With the environment variable GRAPHC_NOINLINE=1 all kernels and their
matmuls are marked `noinline`, so a sampling profiler (`perf record`) attributes time to
each kernel; the code is otherwise the same.
"""

from __future__ import annotations

import bisect
import contextlib
import os

import numpy as np
from llvmlite import ir

from graphc.codegen import mathlib, pieces
from graphc.codegen.emitter import MEMORY_TYPES, REGISTER_TYPES, Emitter
from graphc.codegen.split import Split
from graphc.codegen.target import Target, host
from graphc.errors import CompileError
from graphc.ir.graph import Kernel, Node
from graphc.ir.ops import is_const, opdef
from graphc.ir.views import strides_of
from graphc.passes.kernels import CONTRACTION, checks

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
# How many vector iterations an innermost loop runs at once (KernelEmitter._counted_loop):
# INTERLEAVE for a body calling the math library, INTERLEAVE_LONG for any other body of at
# least LONG_BODY instructions, from INTERLEAVE_FROM iterations.
INTERLEAVE, INTERLEAVE_LONG, LONG_BODY, INTERLEAVE_FROM = 2, 4, 20, 64
# LLVM's vectorizer leaves a loop of fewer than 16 iterations scalar (its
# TinyTripCountVectorThreshold), where selects become branches that random data mispredicts.
# An innermost loop of VECTORIZE_FROM to 15 iterations (a pooling window's row of outputs:
# 14 at LeNet's first layer) over constant bounds is unrolled whole, and LLVM's straight-line
# (SLP) vectorizer packs its iterations into vectors of 8, 4 and 2; marked to be vectorized
# instead, it ran 3 vectors of 4 and 2 scalar iterations. LeNet-5, one thread: max-pooling
# forward 0.21 -> 0.16 ms (layer 1), its gradients 0.106 -> 0.056 and 0.095 -> 0.085 ms; the
# training step 2.50 -> 2.33 ms. A body of more than UNROLL_BUDGET instructions once
# unrolled, one calling the math library (exp: ~40 instructions a call once inlined), a
# contraction's epilogue (LLVM took 0.45 s longer over LeNet's 84x10 Adam epilogue unrolled)
# or a loop of run-time bounds is marked to be vectorized (which had taken max-pooling's
# forward from 1.54 to 0.25 ms).
VECTORIZE_FROM, TINY_TRIP_COUNT, UNROLL_BUDGET = 4, 16, 4000
# An axis iterated as digits (codegen/pieces.py, `splits`: 28 as 14 x 2 where a reshape
# splits it) has its last digit unrolled up to this many values when it is the innermost.
UNROLL_DIGIT = 8
# A kernel of this many instructions or more stays out of line, a call from `<name>_step`:
# LLVM inlines every kernel (each is called once), and instruction selection and register
# allocation of one function take time growing faster than its size, and a call costs
# nanoseconds. Measurements: docs/performance.md, "Numbers moved out of the code:
# graphc/codegen/kernel.py".
OUT_OF_LINE_FROM = 1000


class LoopID(ir.values.MDValue):
    """A loop's `!llvm.loop` node. LLVM requires it to be distinct and to name itself as its
    first operand, which llvmlite's `Module.add_metadata` cannot express."""

    def descr(self, buf):
        operands = ", ".join([self.get_reference(), *(op.get_reference() for op in self.operands)])
        buf += (f"distinct !{{{operands}}}", "\n")


def loop_id(module: ir.Module, **hints: int) -> LoopID:
    """A loop ID carrying transformation hints: interleave_count=2 is
    `llvm.loop.interleave.count` 2 (LLVM's TransformMetadata names, `_` for `.`)."""
    properties = [
        module.add_metadata([f"llvm.loop.{key.replace('_', '.')}", ir.Constant(I32, value)])
        for key, value in hints.items()
    ]
    return LoopID(module, properties, name=str(len(module.metadata)))


def keep_out_of_line(function: ir.Function) -> None:
    """Mark a kernel function `noinline` when GRAPHC_NOINLINE is set (for profiling)."""
    if os.environ.get("GRAPHC_NOINLINE", "") not in ("", "0"):
        function.attributes.add("noinline")


def instruction_count(blocks) -> int:
    """Instructions; a call of sin or cos counts as what it becomes once linked in after
    optimization (codegen/mathlib.py `link_trig`)."""
    return sum(
        len(block.instructions) + sum(map(mathlib.linked_size, block.instructions))
        for block in blocks
    )


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, int(value))


def call_loop(b: ir.IRBuilder, count: int, body, name: str, stop=None) -> None:
    """`for k in range(count): body(k)` (count >= 1) as one block that is its own latch,
    for loops around calls (K steps, a scan's body); with `stop`, the loop also ends after
    an iteration where `stop()`, evaluated after the body, is true."""
    before = b.block
    loop = b.append_basic_block(name)
    done = b.append_basic_block(f"{name}_done")
    b.branch(loop)
    b.position_at_end(loop)
    k = b.phi(I64, name="k")
    k.add_incoming(i64(0), before)
    body(k)
    following = b.add(k, i64(1), name="k.next")
    k.add_incoming(following, b.block)
    more = b.icmp_unsigned("<", following, i64(count))
    if stop is not None:
        more = b.and_(more, b.not_(stop()))
    b.cbranch(more, loop, done)
    b.position_at_end(done)


class Index:
    """A position in a shape, as per-axis i64 values and the row-major linear offset (the
    values of a flat index are computed by `KernelEmitter.index`). Values computed at an
    index are cached by its `key`: two indexes of equal per-axis values are one position
    (a value read through a broadcast by each tap of a window is computed once)."""

    def __init__(self, b: ir.IRBuilder, shape, values, flat=None):
        self.shape = tuple(shape)
        self.key = (self.shape, tuple(_position_key(v) for v in values))
        if flat is None:
            flat = i64(0)
            for v, stride, d in zip(values, strides_of(self.shape), self.shape):
                if d > 1:
                    flat = b.add(flat, b.mul(v, i64(stride)))
        self.values = list(values)
        self.flat = flat


def _position_key(value):
    """An index value as a dictionary key: a constant by its number, else the value itself."""
    return ("constant", value.constant) if isinstance(value, ir.Constant) else value


class KernelEmitter:
    """Emits one kernel as an LLVM function over pointers to its inputs and outputs."""

    def __init__(
        self,
        module: ir.Module,
        kernel: Kernel,
        globals_: dict[Node, ir.GlobalVariable],
        place=lambda node: node,
        threads: int = 1,
        rows: Split | None = None,
        cpu: Target | None = None,
    ):
        """`place(node)` says where a value lives: values in the same place (an output
        written in place over an input) share one pointer argument, so every argument is
        `noalias` and LLVM vectorizes without run-time overlap checks.

        `threads` > 1 lets a large kernel split its outer loop (codegen/parallel.py); the
        emitter of one chunk is made with `rows`, the split, and takes (start, end) after
        its pointers. `cpu` is the target the code is for (default: the JIT's)."""
        self.module = module
        self.cpu = cpu or host()
        self.kernel = kernel
        self.globals = globals_
        self.place = place
        self.threads = threads
        self.split = rows
        self.external = [n for n in kernel.inputs if not is_immediate(n) and n not in globals_]
        self.places: list = []  # one argument per place, inputs first
        for node in (*self.external, *kernel.outputs):
            if place(node) not in self.places:
                self.places.append(place(node))
        # a kernel whose ops check indices (OpDef.checked) takes the status word's address
        self.checked = checks(kernel)
        arg_types = [PTR] * (len(self.places) + self.checked) + [I64, I64] * (rows is not None)
        name = kernel.name if rows is None else f"{kernel.name}.rows"
        self.function = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name)
        self.function.linkage = "internal"
        keep_out_of_line(self.function)
        for arg in self.function.args[: len(self.places)]:
            arg.add_attribute("noalias")
        # the outer loop's range in a chunk's function, else None (the whole loop)
        self.rows = tuple(self.function.args[-2:]) if rows is not None else None
        self.chunk_axis = 0 if rows is None else rows.axis  # the axis `outer` loops cut
        self.status = self.function.args[len(self.places)] if self.checked else None
        self.failures: dict = {}  # function -> an i8 alloca: whether a check failed in it
        self.pointers: dict[Node, ir.Value] = {}
        for node in (*self.external, *kernel.outputs):
            self.pointers[node] = self.function.args[self.places.index(place(node))]
        self.inside = set(kernel.nodes)
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        self.e = Emitter(self.b)
        self.scopes: list[dict] = [{}]
        self.contains_loop = False  # whether the loop being emitted has an inner loop
        self.materialized: set[Node] = set()  # body nodes stored to memory and read back
        self.known: dict[Node, ir.Value] = {}  # reduced / row values valid in the current loop
        self.invariant: dict[Node, ir.Value] = {}  # one-element values computed at the entry
        self.ranges: dict[ir.Value, tuple[int, int]] = {}  # loop counter -> its values, lo..hi
        self.forms: dict = {}  # index value -> its affine form (pieces.affine)
        self.axes: dict[ir.Value, int] = {}  # counter of a box's loop -> its axis (nest_boxes)
        self.questions: list | None = None  # in a probe: the `cases` with several answers
        self.divisions: list | None = None  # in a probe: (affine form, divisor) not exact
        self.pieces = pieces.enabled()

    # ---- loops ----
    def loop(self, count: int, body, name="i"):
        """for i in range(count): body(i) — a canonical counted loop."""
        if count == 0:  # a zero-size axis: no iterations
            return
        if count == 1:
            body(i64(0))
            return
        self._counted_loop(i64(0), i64(count), body, name, count, may_be_empty=False)

    def loop_until(self, end: ir.Value, body, name="i", at_most: int = 1):
        """for i in range(end): body(i), for a run-time `end` in [1, at_most]."""
        self._counted_loop(i64(0), end, body, name, at_most, may_be_empty=False)

    def outer_loop(self, count: int, body, name="i"):
        """The loop a kernel splits between threads: over [start, end) in a chunk's function,
        else over range(count)."""
        if self.rows is None:
            return self.loop(count, body, name)
        self._counted_loop(*self.rows, body, name, count, may_be_empty=True)

    def _counted_loop(self, start, end, body, name, count, may_be_empty, within=None):
        """for i in range(start, end): body(i), as a header block that is also the latch; i
        takes values in `within` (inclusive), by default start .. start + count - 1 (from 0
        for a run-time start).

        LLVM's vectorizer interleaves a loop only while its body is small (below 20
        instructions) or when it has a reduction, so a long elementwise body ran one vector
        at a time, along its dependency chains. An innermost loop that calls the math
        library is marked to be interleaved twice: such a body is ~100 ymm operations per
        vector, too long for the out-of-order window to overlap iterations by itself. Any
        other body of LONG_BODY instructions or more is interleaved four times: chains of
        multiplies and adds wait on the FMA latency (5 cycles, one issue per cycle). Only
        from INTERLEAVE_FROM iterations: two 8-wide vectors per iteration would leave a
        shorter loop scalar. Measurements: docs/performance.md, "Numbers moved out of the
        code: graphc/codegen/kernel.py"."""
        b = self.b
        before = b.block
        first_block = len(self.function.blocks)  # this loop's blocks are appended from here
        header = b.append_basic_block(f"{name}.loop")
        after = b.append_basic_block(f"{name}.done")
        if may_be_empty:
            b.cbranch(b.icmp_unsigned("<", start, end), header, after)
        else:
            b.branch(header)
        b.position_at_end(header)
        phi = b.phi(I64, name=name)
        phi.add_incoming(start, before)
        first = start.constant if isinstance(start, ir.Constant) else 0
        self.ranges[phi] = within or (first, first + count - 1)
        self.scopes.append({})
        math_calls, self.contains_loop = self.e.math_calls, False
        body(phi)
        innermost, self.contains_loop = not self.contains_loop, True
        self.scopes.pop()
        following = b.add(phi, i64(1), flags=("nuw", "nsw"))
        phi.add_incoming(following, b.block)
        latch = b.cbranch(b.icmp_unsigned("<", following, end), header, after)
        if innermost and count >= INTERLEAVE_FROM:
            blocks = self.function.blocks[first_block:]
            if self.e.math_calls > math_calls:
                interleave = INTERLEAVE
            elif instruction_count(blocks) >= LONG_BODY:
                interleave = INTERLEAVE_LONG
            else:
                interleave = None  # LLVM's own choice
            if interleave is not None:
                latch.set_metadata("llvm.loop", loop_id(self.module, interleave_count=interleave))

        if innermost and VECTORIZE_FROM <= count < TINY_TRIP_COUNT:
            size = count * pieces.code_size(self.function.blocks[first_block:])
            constant = isinstance(start, ir.Constant) and isinstance(end, ir.Constant)
            whole = constant and size <= UNROLL_BUDGET and self.e.math_calls == math_calls
            whole = whole and self.kernel.form != CONTRACTION.name
            hints = {"unroll_count": count} if whole else {"vectorize_enable": 1}
            latch.set_metadata("llvm.loop", loop_id(self.module, **hints))
        b.position_at_end(after)

    def nest(self, shape, body, depth=0, values=(), outer=False):
        """Nested loops over `shape` (row-major), calling body(list of index values); with
        `outer`, the loop over the axis a chunk cuts (`chunk_axis`) is the `outer_loop`."""
        if depth == len(shape):
            body(list(values))
            return
        loop = self.outer_loop if outer and depth == self.chunk_axis else self.loop
        loop(
            shape[depth],
            lambda v: self.nest(shape, body, depth + 1, (*values, v), outer),
            f"i{depth}",
        )

    def nest_boxes(self, boxes, body, outer=False, depth=0, values=()):
        """Nested loops over each box of `boxes` (per axis a range [lo, hi), together a
        partition of the domain: pieces.plan; or (lo, hi, factors), the range iterated as
        digits: pieces.digits), calling body(list of index values). Boxes with the same range
        on an axis share its loop; where their ranges overlap without being equal, each box
        gets loops of its own from there. With `outer`, the loops over the axis a chunk cuts
        are the `outer_loop` (each box's part of a thread's chunk)."""
        if depth == len(boxes[0]):
            body(list(values))
            return
        groups: dict[tuple[int, int], list] = {}
        for box in boxes:
            groups.setdefault(box[depth], []).append(box)
        edges = sorted(groups)
        if any(a[1] > b[0] for a, b in zip(edges, edges[1:])):
            for box in boxes:
                self.nest_boxes([box], body, outer, depth, values)
            return
        for span, members in groups.items():

            def inner(v, members=members):
                if not isinstance(v, ir.Constant):
                    self.axes[v] = depth
                self.nest_boxes(members, body, outer, depth + 1, (*values, v))

            last = depth == len(boxes[0]) - 1
            if len(span) == 3:
                self._digits(*span, body=inner, name=f"i{depth}", unroll=last)
            else:
                self._span(*span, inner, f"i{depth}", outer and depth == self.chunk_axis)

    def _digits(self, lo: int, hi: int, factors, body, name, unroll: bool) -> None:
        """for i in range(lo, hi): body(i), as loops over the digits of i - lo (pieces.digits);
        with `unroll`, a last digit of at most UNROLL_DIGIT values is unrolled, so that the
        loop around it is innermost (and vectorizes)."""
        sizes, weights = pieces.digits(hi - lo, factors)
        b = self.b

        def level(j, value):
            if j == len(sizes):
                body(value)
                return

            def at(digit):
                level(j + 1, b.add(value, b.mul(digit, i64(weights[j]))))

            if unroll and j == len(sizes) - 1 and sizes[j] <= UNROLL_DIGIT:
                for digit in range(sizes[j]):
                    at(i64(digit))
            else:
                self.loop(sizes[j], at, f"{name}.{j}")

        level(0, i64(lo))

    def _span(self, lo: int, hi: int, body, name, outer: bool) -> None:
        """for i in range(lo, hi): body(i) (a constant i when there is one); the outer loop
        over only the part of [lo, hi) in a thread's chunk."""
        if outer and self.rows is not None:
            b, (start, end) = self.b, self.rows
            start = b.select(b.icmp_unsigned("<", start, i64(lo)), i64(lo), start)
            end = b.select(b.icmp_unsigned(">", end, i64(hi)), i64(hi), end)
            self._counted_loop(start, end, body, name, hi - lo, True, within=(lo, hi - 1))
        elif hi - lo == 1:
            body(i64(lo))
        elif hi > lo:
            self._counted_loop(i64(lo), i64(hi), body, name, hi - lo, may_be_empty=False)

    # ---- which piece: concat and pad ask (codegen/pieces.py) ----
    def cases(self, value, thresholds) -> range:
        """Which of the intervals cut by the sorted `thresholds` an i64 index `value` may
        fall in at any iteration of the loops around the code being emitted: case j is
        [thresholds[j-1], thresholds[j]) (unbounded at the ends). An op's index map emits
        only the cases in the range; one with several is a question `pieces.plan` cuts
        loops by."""
        every = range(len(thresholds) + 1)
        if not self.pieces:
            return every
        form = pieces.affine(value, self.ranges, self.forms)
        if form is None:
            return every
        lo, hi = form.bounds(self.ranges)
        first, last = bisect.bisect_right(thresholds, lo), bisect.bisect_right(thresholds, hi)
        if first < last and self.questions is not None:
            self.questions.append((form, tuple(thresholds)))
        return range(first, last + 1)

    def boxes(self, shape, body) -> list:
        """The boxes a loop nest over `shape` calling body(index values) is split into, so
        that its concats and pads know their pieces (pieces.plan, probing the body), each with
        the axes iterated as digits that make its divisions exact (pieces.splits)."""
        whole = [tuple((0, d) for d in shape)]
        nodes = self.kernel.nodes
        cut, split = any(map(pieces.chooses, nodes)), any(map(pieces.reads_digits, nodes))
        if not self.pieces or not (cut or split) or 0 in shape:
            return whole
        probes: dict = {}

        def probe(box):
            if box not in probes:
                probes[box] = self._probe(box, body)
            return probes[box]

        planned = pieces.plan(shape, lambda box: probe(box)[:2]) if cut else whole
        return [self._refined(box, probe(box), body) if split else box for box in planned]

    def _refined(self, box, probed, body):
        """`box` with the axes pieces.splits names iterated as digits, if its body then
        divides less often (per element) than `probed` found, in code of the size pieces.plan
        allows; else `box`."""
        size, _, chains, divisions = probed
        if not chains or not divisions:
            return box
        refined = tuple((*span, chains[a]) if a in chains else span for a, span in enumerate(box))
        refined_size, _, _, left = self._probe(refined, body)
        small = refined_size <= pieces.CODE_GROWTH * size + pieces.CODE_SLACK
        return refined if left < divisions and small else box

    def _probe(self, box, body):
        """Emit the loops over `box` into a throwaway function: (its instruction count, the
        points where the answers of its questions change: pieces.cut_points, the axes to
        iterate as digits: pieces.splits, and the divisions left per element stored)."""
        saved = self.module, self.function, self.b, self.e, self.scopes, self.contains_loop
        saved_maps = self.ranges, self.forms, self.axes
        self.module = ir.Module()
        self.function = ir.Function(self.module, ir.FunctionType(ir.VoidType(), []), "probe")
        self.b = ir.IRBuilder(self.function.append_basic_block("entry"))
        self.e, self.scopes, self.questions, self.divisions = Emitter(self.b), [{}], [], []
        self.ranges, self.forms, self.axes = dict(self.ranges), {}, {}
        calls = []

        def counted(values):
            calls.append(None)
            body(values)

        try:
            self.nest_boxes([box], counted, outer=True)
            points = pieces.cut_points(self.questions, self.axes, box)
            chains = pieces.splits(self.divisions, self.axes, box)
            per_call = len(self.divisions) / max(len(calls), 1)
            return pieces.code_size(self.function.blocks), points, chains, per_call
        finally:
            self.module, self.function, self.b, self.e, self.scopes, self.contains_loop = saved
            self.ranges, self.forms, self.axes = saved_maps
            self.questions = self.divisions = None

    # ---- memory ----
    def address(self, node: Node, flat) -> ir.Value:
        if node in self.globals:
            base = self.globals[node]
        else:
            base = self.pointers[node]
        return self.b.gep(base, [flat], inbounds=True, source_etype=MEMORY_TYPES[node.dtype])

    def load(self, node: Node, flat):
        value = self.b.load(self.address(node, flat), typ=MEMORY_TYPES[node.dtype])
        if node.dtype == "bool":
            return self.b.trunc(value, REGISTER_TYPES["bool"])
        return value

    def store(self, node: Node, flat, value):
        if node.dtype == "bool":
            value = self.b.zext(value, MEMORY_TYPES["bool"])
        self.b.store(value, self.address(node, flat))

    # ---- values at an index ----
    def value(self, node: Node, index: Index):
        cached = self._cached(node, index)
        if cached is not None:
            return cached
        # Elementwise inputs at the same index first, deepest first, with an explicit stack:
        # a fused chain may be thousands of ops long, deeper than Python's recursion limit.
        pending = [node]
        while pending:
            top = pending[-1]
            if self._cached(top, index) is not None:
                pending.pop()
                continue
            waiting = (
                [
                    x
                    for x in top.inputs
                    if self._elementwise_here(x) and self._cached(x, index) is None
                ]
                if self._elementwise_here(top)
                else []
            )
            if waiting:
                pending.extend(waiting)
                continue
            pending.pop()
            self.scopes[-1][top, index.key] = self.compute(top, index)
        return self._cached(node, index)

    def _cached(self, node: Node, index: Index):
        for scope in reversed(self.scopes):
            if (node, index.key) in scope:
                return scope[node, index.key]
        return None

    def _elementwise_here(self, node: Node) -> bool:
        """Whether `node` is computed in this kernel from its inputs at the same index."""
        return (
            node in self.inside
            and node not in self.materialized
            and node not in self.known
            and node not in self.invariant
            and opdef(node).index_map is None
            and not is_immediate(node)
        )

    def compute(self, node: Node, index: Index):
        """`node`'s value at `index` from its inputs' values (or its known or stored value)."""
        if is_immediate(node):
            return immediate(node)
        if node in self.known:
            return self.known[node]
        if node in self.invariant:
            return self.invariant[node]
        if node not in self.inside or node in self.materialized:
            return self.load(node, index.flat)
        op = opdef(node)
        if op.index_map is not None:
            return op.index_map(self, node, index)
        if op.scalar is None:
            raise CompileError(f"no scalar emitter for {node.op} in kernel {self.kernel.name}")
        args = [self.value(x, index) for x in node.inputs]
        return op.scalar(self.e, *args, **node.attrs)

    def hoist_scalars(self) -> None:
        """Compute the one-element values that depend only on kernel inputs once, before any
        loop (Adam's bias corrections `1 - beta**t`): a loop that writes in place could not
        prove them invariant, and a row-wise loop would recompute them per row."""
        hoisted: set[Node] = set()
        for node in self.kernel.nodes:
            if node.type.size != 1 or opdef(node).anchor:
                continue
            if is_immediate(node) or node in self.globals:
                continue
            inputs_ready = all(
                x not in self.inside or x in hoisted or is_immediate(x) for x in node.inputs
            )
            if inputs_ready:
                self.invariant[node] = self.compute(node, self.index(node.shape, flat=i64(0)))
                hoisted.add(node)

    def index(self, shape, values=None, flat=None) -> Index:
        """The position in `shape` at per-axis `values`, or at the row-major `flat` index."""
        if values is None:
            values = [
                self._divided(self._divided(flat, stride, False), d, True) if d > 1 else i64(0)
                for d, stride in zip(shape, strides_of(shape))
            ]
        return Index(self.b, shape, values, flat)

    def _divided(self, x, d: int, remainder: bool):
        """x // d, or x % d, for an index x >= 0: where that is an affine form of the loop
        counters over their ranges (pieces.divide), that form's arithmetic, which vectorizes;
        else a division, which a probe records (pieces.splits)."""
        if d == 1:
            return i64(0) if remainder else x
        form = pieces.affine(x, self.ranges, self.forms) if self.pieces else None
        if form is not None and form.bounds(self.ranges)[0] >= 0:
            exact = pieces.divide(form, d, self.ranges, remainder)
            if exact is not None:
                return self._affine_value(exact)
            if self.divisions is not None:
                self.divisions.append((form, d))
        return (self.b.urem if remainder else self.b.udiv)(x, i64(d))

    def _affine_value(self, form):
        """An i64 computing the affine `form` of the loop counters."""
        value = None
        for counter, a in form.terms:
            term = counter if a == 1 else self.b.mul(counter, i64(a))
            value = term if value is None else self.b.add(value, term)
        if value is None:
            return i64(form.const)
        if form.const:
            value = self.b.add(value, i64(form.const))
        self.forms[value] = form
        return value

    # ---- for the ops' index maps (ir/ops.py) ----
    def i64(self, value: int) -> ir.Constant:
        """An i64 index constant."""
        return i64(value)

    def immediate(self, value, dtype: str):
        """A constant of `dtype` in registers."""
        return immediate_value(value, dtype)

    def check(self, ok) -> None:
        """Where the i1 `ok` is false, the kernel fails its run-time check: or-ed into one
        flag (a reduction LLVM vectorizes), reported once the loops are done (codegen/llvm.py
        `report_checks`)."""
        b, flag = self.b, ir.IntType(8)
        if self.failed is None:
            with b.goto_entry_block():
                self.failures[self.function] = b.alloca(flag, name="failed")
                b.store(flag(0), self.failed)
        bad = b.zext(b.xor(ok, ok.type(1)), flag)
        b.store(b.or_(b.load(self.failed, typ=flag), bad), self.failed)

    @property
    def failed(self):
        """The flag of a failed check in the function being emitted (None: no checks yet)."""
        return self.failures.get(self.function)

    # ---- what the forms tell the emitter ----
    def stored(self, nodes) -> None:
        """From here on these body values are read back from their buffers, not computed."""
        self.materialized.update(nodes)

    @contextlib.contextmanager
    def knowing(self, values=()):
        """A scope in which body values have known LLVM values (`values`, then `know`): a
        reduction's result in its epilogue, a row's values in a row-wise kernel."""
        saved = dict(self.known)
        self.known.update(values)
        try:
            yield
        finally:
            self.known = saved

    def know(self, node: Node, value) -> None:
        """`node` is `value` until the enclosing `knowing` scope ends."""
        self.known[node] = value

    def knows(self, node: Node) -> bool:
        return node in self.known

    def store_outputs(self, index: Index, outputs=None):
        """Compute every output at `index`, then store them (an output may overwrite an input)."""
        outputs = outputs or self.kernel.outputs
        values = [
            self.value(
                out, index if out.shape == index.shape else self.index(out.shape, flat=index.flat)
            )
            for out in outputs
        ]
        for out, value in zip(outputs, values):
            self.store(out, index.flat, value)


# ---- constants ----


def is_immediate(node: Node) -> bool:
    return is_const(node) and node.type.size == 1


def immediate_value(value, dtype: str):
    t = REGISTER_TYPES[dtype]
    if dtype == "bool":
        return t(int(bool(value)))
    if dtype in ("float32", "float64"):
        return t(float(np.asarray(value, dtype=dtype)))
    return t(int(value))


def immediate(node: Node):
    return immediate_value(node.attrs["value"].reshape(()).item(), node.dtype)


def constant_global(module: ir.Module, node: Node, name: str) -> ir.GlobalVariable:
    array = np.ascontiguousarray(node.attrs["value"]).reshape(-1)
    if node.dtype == "bool":
        array = array.astype(np.uint8)
    # the raw bytes as an i8 array: llvmlite prints a bytearray initializer as c"..." (i8s);
    # kernels address the global through typed GEPs, so its declared type is only its size
    array_type = ir.ArrayType(ir.IntType(8), array.nbytes)
    initializer = ir.Constant(array_type, bytearray(array.tobytes()))
    variable = ir.GlobalVariable(module, array_type, name)
    variable.global_constant = True
    variable.linkage = "private"
    variable.unnamed_addr = True
    variable.align = 64
    variable.initializer = initializer
    return variable
