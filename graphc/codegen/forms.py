# Over 500 lines on purpose: each kernel form's emission, thread split and after-join share the
# contraction and reduction helpers; the EMISSIONS table at the end is the one place to read.
"""The four kernel forms of DESIGN §4 as loop nests, on a `KernelEmitter` (codegen/llvm.py).

- loop: one loop nest per output shape (a horizontally fused kernel has several, run one
  after the other); all outputs of a nest are computed at an index before any is stored,
  so an output may overwrite an input that is read only at that index.
- reduction: a loop over the kept axes around a loop over the reduced ones; the input
  expression is evaluated inside (input fusion) and the epilogue after it. A sum or max
  over axes followed by kept ones (a bias gradient) runs row by row instead: a block of
  accumulators, one whole contiguous row added at a time, then the epilogue over the block.
- rowwise: one loop over rows; per row each reduction over the last axis runs in order,
  row-level values depending on it are computed once right after it, then the outputs of
  the row are stored (softmax, log-softmax + cross-entropy, layer norm: one pass).
- contraction: a generated matmul into the product's buffer — or, when the product is not
  needed elsewhere, into the buffer of the first same-size output, over which the elementwise
  epilogue is then applied in place; then any reduction stages over the product's domain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import numpy as np
from llvmlite import ir

from graphc.codegen.emitter import MEMORY_TYPES, REGISTER_TYPES
from graphc.codegen.kernel import (
    I64,
    i64,
    immediate_value,
    keep_out_of_line,
)
from graphc.codegen.loops import emit_scan
from graphc.codegen.matmul import define_matmul
from graphc.codegen.split import MATMUL_THRESHOLD_NS, Split, matmul_work, split_rows, work_of
from graphc.codegen.tiling import Operand, column_tile, takes_row_count, tile_rows
from graphc.errors import CompileError
from graphc.ir.graph import Node
from graphc.ir.ops import affine_view, checked_index, nonzero_box, opdef
from graphc.ir.views import is_simple, strides_of
from graphc.passes.kernels import (
    COLLECTIVE,
    CONTRACTION,
    LOOP,
    REDUCTION,
    ROWWISE,
    SCAN,
    SCATTER,
    form_of,
    is_alone,
    is_reduction,
    product_host,
    product_of,
    segments,
    stage_reductions,
)

SCRATCH_BYTES = 32 * 1024  # a contraction's product up to this size is kept on the stack


def emit_loop(k) -> None:
    for shape, outputs in segments(k.kernel):
        _over(k, shape, outputs)
        k.stored(outputs)  # later nests read them back


def _needs_axes(kernel) -> bool:
    """Whether a loop kernel indexes by axes (an index map other than reshape), not flat."""
    return any(opdef(n).index_map is not None and not opdef(n).flat for n in kernel.nodes)


def _over(k, shape, outputs) -> None:
    """Store `outputs` (all of `shape`'s size) over a loop nest on `shape`, split into boxes
    where its concats and pads change pieces (codegen/pieces.py)."""
    if _needs_axes(k.kernel):
        store = lambda values: k.store_outputs(k.index(shape, values=values), outputs)  # noqa: E731
        k.nest_boxes(k.boxes(shape, store), store, outer=True)
    else:
        k.outer_loop(prod(shape), lambda i: k.store_outputs(k.index(shape, flat=i), outputs))


def emit_reduction(k) -> None:
    (reduce,) = [n for n in k.kernel.nodes if is_reduction(n)]
    reduce_stage(k, reduce, list(k.kernel.outputs))


def reduce_stage(k, reduce: Node, outputs) -> None:
    """One reduction (input expression evaluated inside) and the outputs computed from it."""
    if by_rows(reduce) is not None:
        _reduce_by_rows(k, reduce, outputs)
        return
    x = reduce.inputs[0]
    axes, kept = _reduced_axes(reduce)
    reduced = [x.shape[a] for a in axes]
    rule = opdef(reduce).reduction
    b = k.b

    def per_output(out_values):
        with b.goto_entry_block():
            accumulator = b.alloca(REGISTER_TYPES[x.dtype])
            position = b.alloca(I64) if rule.positional else None
        b.store(identity(reduce, x.dtype), accumulator)
        if position is not None:
            b.store(i64(0), position)

        def full(red_values):
            values, kept_iter, red_iter = [], iter(out_values), iter(red_values)
            for i in range(x.ndim):
                values.append(next(red_iter) if i in axes else next(kept_iter))
            return values

        def combine(v, red_values):
            acc = b.load(accumulator)
            if not rule.positional:
                b.store(rule.combine(k.e, acc, v), accumulator)
            else:
                better = rule.better(k.e, v, acc)
                b.store(b.select(better, v, acc), accumulator)
                flat = k.index(reduced, values=red_values).flat
                b.store(b.select(better, flat, b.load(position)), position)

        def per_element(red_values):
            combine(k.value(x, k.index(x.shape, values=full(red_values))), red_values)

        def per_run(lead_values):  # the run of trailing reduced axes: one contiguous loop
            base = k.index(x.shape, values=full([*lead_values, *[i64(0)] * run])).flat
            at = lambda t: k.index(x.shape, flat=b.add(base, t))  # noqa: E731
            k.loop(prod(x.shape[x.ndim - run :]), lambda t: combine(k.value(x, at(t)), None), "r")

        run = 0 if rule.positional else _trailing_run(x, axes)
        if prod(reduced) <= UNROLL_REDUCED:  # the loop over the outputs becomes innermost
            for red in np.ndindex(*reduced):
                per_element([i64(v) for v in red])
        elif run > 1:  # (a conv's bias gradient: over samples and both spatial axes)
            k.nest(reduced[: len(reduced) - run], per_run)
        else:
            k.nest(reduced, per_element)
        result = b.load(position if position is not None else accumulator)
        out_index = k.index(reduce.shape, flat=k.index(kept, values=out_values).flat)
        with k.knowing({reduce: result}):
            k.store_outputs(out_index, outputs)

    k.nest(kept, per_output, outer=True)


ROW_BLOCK = 512  # kept elements accumulated at once by a row-order reduction (4 KiB of f64)
# A reduction over at most this many elements per output (a pooling window's taps) is
# unrolled, in the same order, so that the loop over the outputs is innermost and vectorizes
# (argmax over the 2x2 windows of 64x6x28x28: 0.96 -> 0.08 ms, max 0.74 -> 0.05 ms).
UNROLL_REDUCED = 16


def by_rows(reduce: Node) -> tuple[list[int], list[int], list[int]] | None:
    """(outer, reduced, inner) sizes if `reduce` is summed row by row, else None.

    A sum or max whose reduced axes are consecutive and followed by kept ones (a bias
    gradient: a sum over the batch axis of (batch, features)) is accumulated a whole
    contiguous row at a time into a block of accumulators, instead of one strided column
    at a time: the loads are contiguous and the adds vectorize across the kept elements.
    Each output still adds its inputs in order, as NumPy does over a non-last axis."""
    x = reduce.inputs[0]
    axes, _ = _reduced_axes(reduce)
    first, last = min(axes), max(axes)
    positional = opdef(reduce).reduction.positional
    if positional or last - first + 1 != len(axes) or last == x.ndim - 1:
        return None
    inner = list(x.shape[last + 1 :])
    if prod(inner) < 8:  # too narrow to vectorize across: columns are as good
        return None
    return list(x.shape[:first]), list(x.shape[first : last + 1]), inner


def _row_blocks(size: int) -> int:
    return -(-size // ROW_BLOCK)


def outer_rows(reduce: Node) -> int:
    """The trip count of a reduction's outer (split) loop: its first kept axis, or for a
    row-order one without kept axes in front, its blocks of accumulators."""
    layout = by_rows(reduce)
    if layout is None or layout[0]:
        return _reduced_axes(reduce)[1][0]
    return _row_blocks(prod(layout[2]))


def _reduce_by_rows(k, reduce: Node, outputs) -> None:
    """for each outer index: for each block of inner elements: acc = identity; for each
    reduced index: acc[j] op= x[outer, reduced, j]; then the outputs at each j."""
    x = reduce.inputs[0]
    outer, reduced, inner = by_rows(reduce)
    size = prod(inner)
    blocks = _row_blocks(size)
    width = -(-size // blocks)  # blocks of equal width, the last one shorter if need be
    b = k.b
    t = REGISTER_TYPES[x.dtype]
    with b.goto_entry_block():
        accumulators = b.alloca(ir.ArrayType(t, width))
        accumulators.align = 64
    accumulators.type = ir.PointerType()  # llvmlite types allocas; the IR's pointers are opaque

    def slot(j):
        return b.gep(accumulators, [j], inbounds=True, source_etype=t)

    def block(outer_values, start):
        if size % width == 0:
            over_block = lambda body: k.loop(width, body, "j")  # noqa: E731
        else:
            rest = b.sub(i64(size), start)
            end = b.select(b.icmp_unsigned("<", i64(width), rest), i64(width), rest)
            over_block = lambda body: k.loop_until(end, body, "j", width)  # noqa: E731

        def inner_values(j):
            return _axis_values(k, inner, b.add(start, j))

        def per_row(reduced_values):
            def per_element(j):
                full = [*outer_values, *reduced_values, *inner_values(j)]
                v = k.value(x, k.index(x.shape, values=full))
                acc = b.load(slot(j), typ=t)
                b.store(opdef(reduce).reduction.combine(k.e, acc, v), slot(j))

            over_block(per_element)

        def per_output(j):
            kept = k.index([*outer, *inner], values=[*outer_values, *inner_values(j)])
            with k.knowing({reduce: b.load(slot(j), typ=t)}):
                k.store_outputs(k.index(reduce.shape, flat=kept.flat), outputs)

        over_block(lambda j: b.store(identity(reduce, x.dtype), slot(j)))
        k.nest(reduced, per_row)
        over_block(per_output)

    def blocks_of(outer_values, loop=k.loop):
        loop(blocks, lambda i: block(outer_values, b.mul(i, i64(width))), "block")

    if outer:
        k.nest(outer, blocks_of, outer=True)
    else:  # the blocks are the loop a split divides
        blocks_of([], k.outer_loop)


def _axis_values(k, shape, flat) -> list:
    """Per-axis index values of `flat` in `shape` (no division for one axis)."""
    return [flat] if len(shape) == 1 else k.index(shape, flat=flat).values


def identity(reduce: Node, dtype: str):
    """The starting value of a reduction's accumulator (its op's `Reduction.identity`)."""
    return immediate_value(opdef(reduce).reduction.identity(dtype), dtype)


def _trailing_run(x: Node, axes) -> int:
    """How many of x's last axes are reduced (in a row-major buffer: one contiguous run)."""
    run = 0
    while run < x.ndim and x.ndim - 1 - run in axes:
        run += 1
    return run


def _reduced_axes(reduce: Node) -> tuple[tuple[int, ...], list[int]]:
    """A reduction's reduced axes and the sizes of the kept ones."""
    x = reduce.inputs[0]
    axes = tuple(reduce.attrs.get("axes", (reduce.attrs.get("axis"),)))
    return axes, [d for i, d in enumerate(x.shape) if i not in axes]


def emit_rowwise(k) -> None:
    body = set(k.kernel.nodes)
    reductions = [n for n in k.kernel.nodes if is_reduction(n)]
    x0 = reductions[0].inputs[0]
    rows, length = x0.shape[:-1], x0.shape[-1]
    size = prod(rows)
    for r in reductions:
        if r.inputs[0].shape != x0.shape or tuple(r.attrs["axes"]) != (x0.ndim - 1,):
            raise CompileError(f"rowwise kernel {k.kernel.name}: {r.op} is not over the row axis")
    depends: dict[Node, set[Node]] = {}  # body node -> the reductions it is computed from
    for n in k.kernel.nodes:
        found = {n} if is_reduction(n) else set()
        for x in n.inputs:
            found |= depends.get(x, set()) if x in body else set()
        depends[n] = found
    row_level = [
        n for n in k.kernel.nodes if n.type.size == size and depends[n] and not is_reduction(n)
    ]
    full_outputs = [o for o in k.kernel.outputs if o.type.size == size * length]
    row_outputs = [o for o in k.kernel.outputs if o.type.size != size * length]
    b = k.b

    def per_row(r):
        with k.knowing():
            row(r)

    def row(r):
        row_values = k.index(rows, flat=r).values if rows else []
        done: set[Node] = set()

        def settle():
            for n in row_level:
                if not k.knows(n) and depends[n] <= done:
                    k.know(n, k.compute(n, k.index(n.shape, flat=r)))

        for reduce in reductions:
            with b.goto_entry_block():
                accumulator = b.alloca(REGISTER_TYPES[x0.dtype])
            b.store(identity(reduce, x0.dtype), accumulator)

            def per_element(j, reduce=reduce, accumulator=accumulator):
                v = k.value(reduce.inputs[0], k.index(x0.shape, values=[*row_values, j]))
                if reduce.inputs[0] in kept:
                    b.store(v, b.gep(kept[reduce.inputs[0]], [j], source_etype=v.type))
                acc = b.load(accumulator)
                b.store(opdef(reduce).reduction.combine(k.e, acc, v), accumulator)

            k.loop(length, per_element, "j")
            k.know(reduce, b.load(accumulator))
            done.add(reduce)
            settle()
        for o in row_outputs:
            k.store(o, r, k.value(o, k.index(o.shape, flat=r)))
        if full_outputs:

            def per_element(j):
                values = {
                    node: b.load(
                        b.gep(scratch, [j], source_etype=REGISTER_TYPES[node.dtype]),
                        typ=REGISTER_TYPES[node.dtype],
                    )
                    for node, scratch in kept.items()
                }
                with k.knowing(values):
                    k.store_outputs(k.index(x0.shape, values=[*row_values, j]), full_outputs)

            k.loop(length, per_element, "j")

    # A transcendental summed in a reduction's pass and read again by the outputs (softmax's
    # exp: e / sum(e)) is kept in a row of scratch instead of computed twice.
    kept = {}
    if length <= ROW_SCRATCH:
        again = _read_by(full_outputs, body)
        for r in reductions:
            e = r.inputs[0]
            if e in again and e not in kept and opdef(e).expensive and e.shape == x0.shape:
                with b.goto_entry_block():
                    scratch = b.alloca(ir.ArrayType(REGISTER_TYPES[e.dtype], length))
                scratch.type = ir.PointerType()  # llvmlite types allocas; the IR's are opaque
                kept[e] = scratch
    k.outer_loop(size, per_row, "row")


ROW_SCRATCH = 4096  # elements of a row kept on the stack (16 KiB of float32)


def _read_by(outputs, body) -> set[Node]:
    """The body nodes the outputs are computed from at their index, up to (not through)
    reductions, whose values are known per row."""
    seen, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if n in seen or n not in body:
            continue
        seen.add(n)
        if not is_reduction(n):
            stack.extend(n.inputs)
    return seen


def _contraction(k):
    """A contraction kernel's matmul, its operands as affine views, its elementwise epilogue
    outputs and its reduction stages (reduction id -> the outputs computed from it)."""
    kernel = k.kernel
    mm = product_of(kernel)
    sources = set(kernel.inputs)
    views = [affine_view(operand, sources.__contains__) for operand in mm.inputs]
    if None in views:
        raise CompileError(f"kernel {kernel.name}: matmul operand is not an affine view")
    body = set(kernel.nodes)
    stages: dict[Node, list[Node]] = {}
    epilogue = []
    for out in kernel.outputs:
        if out is mm:
            continue
        found = stage_reductions(out, body)
        if found:
            stages.setdefault(found[0], []).append(out)
        else:
            epilogue.append(out)
    return mm, views, epilogue, stages


def _on_stack(mm: Node, kernel) -> bool:
    """Whether the product goes to a stack buffer (small and not a kernel output)."""
    return mm not in kernel.outputs and mm.type.nbytes <= SCRATCH_BYTES


def _product_target(k, mm: Node):
    """Where the matmul writes the product (and record it as the product's pointer)."""
    kernel = k.kernel
    if mm in kernel.outputs:
        return k.pointers[mm]
    if _on_stack(mm, kernel):
        # a small product goes to the stack: the epilogue then reads it and writes its
        # outputs, instead of rewriting the product in place (where `where(mask, x, 0)` over
        # x becomes a masked store, slow on this CPU)
        with k.b.goto_entry_block():
            target = k.b.alloca(ir.ArrayType(ir.IntType(8), mm.type.nbytes))
            target.align = 64
    else:
        host = product_host(kernel)
        if host is None:
            raise CompileError(f"kernel {kernel.name}: no buffer for the matmul product")
        target = k.pointers[host]  # the epilogue then runs in place over it
    k.pointers[mm] = target
    return target


def _operands(views) -> list[Operand]:
    """How the generated matmul addresses the product's two operand views, and where their
    buffers are known to be zero (a convolution's input gradient reads a padded gradient)."""
    operands = []
    for v in views:
        box = nonzero_box(v.source)
        shape, strides = v.source.shape, strides_of(v.source.shape)
        zeros = () if box is None else tuple(
            (stride, size, lo, hi)
            for stride, size, (lo, hi) in zip(strides, shape, box)
            if (lo, hi) != (0, size)
        )  # fmt: skip
        operands.append(Operand(v.strides, v.offset, zeros))
    return operands


def _matmul(
    k,
    mm: Node,
    views,
    m: int,
    suffix: str = "",
    rows=None,
    batch0: int | None = None,
    columns: int | None = None,
) -> ir.Function:
    """The generated matmul of `m` rows of the kernel's product (all of them by default);
    with `rows`, of any of those row counts, given at run time (define_matmul); with
    `batch0`, of that many entries of the first batch axis; with `columns`, of that many
    of its columns."""

    *batch, _, inner = mm.inputs[0].shape
    if batch0 is not None:
        batch[0] = batch0
    a, b = _operands(views)
    function = define_matmul(
        k.module,
        f"{k.kernel.name}.matmul{suffix}",
        m=m,
        n=mm.shape[-1] if columns is None else columns,
        k=inner,
        dtype=mm.dtype,
        a=a,
        b=b,
        c=Operand(strides_of(mm.shape), 0),
        batch=tuple(batch),
        rows=rows,
        cpu=k.cpu,
    )
    function.linkage = "internal"
    keep_out_of_line(function)
    return function


def emit_contraction(k) -> None:
    mm, views, epilogue, stages = _contraction(k)
    target = _product_target(k, mm)
    sources = [k.globals.get(v.source) or k.pointers[v.source] for v in views]
    if k.rows is None:
        k.b.call(_matmul(k, mm, views, mm.inputs[0].shape[-2]), [target, *sources])
    elif mm.ndim > 2:  # entries [start, end) of the first batch axis
        _batch_chunk(k, mm, views, target, sources)
    elif k.split.axis == 1:
        _column_chunk(k, mm, views, target, sources)
    else:  # rows [start, end) of C from the same rows of A
        b, (start, end) = k.b, k.rows
        element = MEMORY_TYPES[mm.dtype]
        row_a = b.mul(start, ir.IntType(64)(views[0].strides[0]))
        a = b.gep(sources[0], [row_a], inbounds=True, source_etype=element)
        c = b.gep(target, [b.mul(start, ir.IntType(64)(mm.shape[-1]))], source_etype=element)
        lengths = sorted({e - s for s, e in k.split.chunks}, reverse=True)
        inner = mm.inputs[0].shape[-1]
        if len(lengths) > 1 and takes_row_count(
            lengths[0], mm.shape[-1], inner, mm.dtype, *_operands(views), cpu=k.cpu
        ):
            # one function for every chunk, not one per length: it compiles faster (measurements:
            # docs/performance.md, "Numbers moved out of the code: graphc/codegen/forms.py")
            function = _matmul(k, mm, views, lengths[0], ".rows", rows=tuple(lengths))
            b.call(function, [c, a, sources[1], b.sub(end, start)])
        else:
            functions = {n: _matmul(k, mm, views, n, f".rows{n}") for n in lengths}
            _call_by_length(k, functions, lengths, [c, a, sources[1]])
    k.stored([mm])
    if epilogue:
        store = lambda values: k.store_outputs(k.index(mm.shape, values=values), epilogue)  # noqa: E731
        k.nest(mm.shape, store, outer=True)
    k.stored(epilogue)
    if k.rows is None:
        _stages(k, stages)


def _batch_chunk(k, mm: Node, views, target, sources) -> None:
    """A chunk of a batched product (a convolution's samples): the operands and C from the
    chunk's first entry of the first batch axis on, one function per chunk length."""
    b, (start, _) = k.b, k.rows
    element = MEMORY_TYPES[mm.dtype]
    strides = [v.strides[0] for v in views] + [strides_of(mm.shape)[0]]
    a, bb, c = (
        b.gep(pointer, [b.mul(start, ir.IntType(64)(stride))], inbounds=True, source_etype=element)
        for pointer, stride in zip([*sources, target], strides)
    )
    lengths = sorted({e - s for s, e in k.split.chunks}, reverse=True)
    functions = {n: _matmul(k, mm, views, mm.inputs[0].shape[-2], f".batch{n}", batch0=n)
                 for n in lengths}  # fmt: skip
    _call_by_length(k, functions, lengths, [c, a, bb])


def _column_chunk(k, mm: Node, views, target, sources) -> None:
    """A chunk of a product split by its columns: columns [start, end) of C from the same
    columns of B and all of A, one function per chunk length."""
    b, (start, _) = k.b, k.rows
    element = MEMORY_TYPES[mm.dtype]
    column = b.mul(start, ir.IntType(64)(views[1].strides[1]))
    bb = b.gep(sources[1], [column], inbounds=True, source_etype=element)
    c = b.gep(target, [start], inbounds=True, source_etype=element)
    m = mm.inputs[0].shape[-2]
    lengths = sorted({e - s for s, e in k.split.chunks}, reverse=True)
    functions = {n: _matmul(k, mm, views, m, f".columns{n}", columns=n) for n in lengths}
    _call_by_length(k, functions, lengths, [c, sources[0], bb])


def _call_by_length(k, functions, lengths, arguments) -> None:
    """Call the function of this chunk's length (the longest, or the one shorter rest)."""
    b, (start, end) = k.b, k.rows
    if len(lengths) == 1:
        b.call(functions[lengths[0]], arguments)
        return
    full = b.icmp_unsigned("==", b.sub(end, start), ir.IntType(64)(lengths[0]))
    with b.if_else(full) as (then, otherwise):
        with then:
            b.call(functions[lengths[0]], arguments)
        with otherwise:
            b.call(functions[lengths[1]], arguments)


def _stages(k, stages) -> None:
    """A contraction's reduction stages, over the stored product and epilogue."""
    for n in k.kernel.nodes:
        if n in stages:
            reduce_stage(k, n, stages[n])


# ---- threads (codegen/split.py) ----


def _split_loop(k) -> Split | None:
    kernel = k.kernel
    parts = segments(kernel)
    if len(parts) != 1:
        return None  # a later nest reads back what an earlier one stored, at any index
    shape = parts[0][0]
    work = work_of(kernel, shape)
    if _needs_axes(kernel):
        return split_rows(shape[0] if shape else 1, work, k.threads)
    return split_rows(prod(shape), work, k.threads, unit=64)  # whole vectors


def _split_reduction(k) -> Split | None:
    (reduce,) = [n for n in k.kernel.nodes if is_reduction(n)]
    _, kept = _reduced_axes(reduce)
    if not kept:
        return None  # a total would need its partial sums reassociated
    work = work_of(k.kernel, reduce.inputs[0].shape)
    return split_rows(outer_rows(reduce), work, k.threads)


def _split_rowwise(k) -> Split | None:
    x = next(n for n in k.kernel.nodes if is_reduction(n)).inputs[0]
    return split_rows(prod(x.shape[:-1]), work_of(k.kernel, x.shape), k.threads)


def _split_contraction(k) -> Split | None:
    kernel = k.kernel
    mm, views, _, stages = _contraction(k)
    if (stages and _on_stack(mm, kernel)) or not is_simple(views[0].strides[0]):
        return None
    operands = {k.place(v.source) for v in views if v.source not in k.globals}
    if any(k.place(o) in operands for o in kernel.outputs):
        return None  # an operand updated in place: a chunk would read rows another wrote
    if mm.ndim > 2:  # batched (a convolution: its samples): chunks of the first batch axis
        if not is_simple(views[1].strides[0]):
            return None
        *batch, m, inner = mm.inputs[0].shape
        work = prod(batch) * matmul_work(m, mm.shape[-1], inner, mm.dtype)
        work += work_of(kernel, mm.shape)
        return split_rows(batch[0], work, k.threads, per_thread=1, threshold=MATMUL_THRESHOLD_NS)
    m, inner = mm.inputs[0].shape
    n = mm.shape[1]
    work = matmul_work(m, n, inner, mm.dtype) + work_of(kernel, mm.shape)
    # A product with few rows is cut by its columns, two chunks per thread (each reads or
    # packs only its own columns of B, so the chunks can be many). Any other is cut by its
    # rows, one chunk per thread of whole register tiles: each chunk packs its own copy of
    # B, and two per thread were slower, idle and next to a busy process alike
    # (docs/performance.md).
    a, b = _operands(views)
    unit = column_tile(m, n, inner, mm.dtype, a, b, k.threads, k.cpu)
    if unit is not None:
        return split_rows(
            n, work, k.threads, unit, per_thread=2, threshold=MATMUL_THRESHOLD_NS, axis=1
        )
    unit = tile_rows(n, mm.dtype, k.cpu)
    return split_rows(m, work, k.threads, unit, per_thread=1, threshold=MATMUL_THRESHOLD_NS)


def _after_contraction(k) -> None:
    """A split contraction's reduction stages, after its chunks."""
    mm, _, epilogue, stages = _contraction(k)
    if stages:
        _product_target(k, mm)  # not on the stack: split_of keeps those whole
        k.stored([mm, *epilogue])
        _stages(k, stages)


def emit_collective(k) -> None:
    """MPI_Allreduce(the input's buffer, the output's, count, datatype, MPI_SUM, comm): one
    call of the MPI library the process loaded (mpi4py's), its handles read from mpi4py."""
    (node,) = [n for n in k.kernel.nodes if is_alone(n)]
    (x,) = node.inputs
    if node.type.size > 2**31 - 1:
        raise CompileError(f"kernel {k.kernel.name}: allreduce of {node.type}: MPI counts are int")
    handle_bits, datatype, operation = _mpi_handles(node.dtype, k.kernel.name)
    handle = ir.IntType(handle_bits)
    function = k.module.globals.get("MPI_Allreduce") or ir.Function(
        k.module,
        ir.FunctionType(ir.IntType(32), [ir.PointerType()] * 2 + [ir.IntType(32)] + [handle] * 3),
        "MPI_Allreduce",
    )
    arguments = [k.address(x, i64(0)), k.address(node, i64(0)), ir.IntType(32)(node.type.size)]
    arguments += [handle(datatype), handle(operation), handle(node.attrs["comm"])]
    k.b.call(function, arguments)


def _mpi_handles(dtype: str, kernel: str) -> tuple[int, int, int]:
    """(bits of an MPI handle, the datatype's handle, MPI_SUM's) of the loaded MPI library."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise CompileError(
            f"kernel {kernel}: allreduce needs mpi4py (pip install .[mpi])"
        ) from None
    datatype = {"float32": MPI.FLOAT, "float64": MPI.DOUBLE}[dtype]
    return 8 * MPI._sizeof(MPI.Comm), MPI._handleof(datatype), MPI._handleof(MPI.SUM)


def emit_scatter(k) -> None:
    """scatter_add: out = a, then out[..., indices[j], ...] += updates[..., j, ...] for every
    update in row-major order (NumPy's np.add.at order, so sums round alike), each index
    checked (an index out of range adds nothing anywhere but element 0 of its row, and fails
    the kernel's check)."""
    (node,) = [n for n in k.kernel.nodes if is_alone(n)]
    a, indices, updates = node.inputs
    axis, rank = node.attrs["axis"], indices.ndim
    k.loop(node.type.size, lambda i: k.store(node, i, k.value(a, k.index(a.shape, flat=i))))

    def add_one(values):
        where = k.value(indices, k.index(indices.shape, values=values[axis : axis + rank]))
        position = checked_index(k, where, a.shape[axis])
        target = k.index(node.shape, values=[*values[:axis], position, *values[axis + rank :]])
        update = k.value(updates, k.index(updates.shape, values=values))
        k.store(node, target.flat, k.e.add(k.load(node, target.flat), update))

    k.nest(updates.shape, add_one)


@dataclass(frozen=True)
class Emission:
    """How a kernel form is emitted: its body (or one chunk's, on `k.rows`), how its outer
    loop splits between threads (None: it does not), and what runs after the chunks."""

    emit: Callable
    split: Callable
    after_join: Callable = lambda k: None


EMISSIONS = {
    LOOP: Emission(emit_loop, _split_loop),
    REDUCTION: Emission(emit_reduction, _split_reduction),
    ROWWISE: Emission(emit_rowwise, _split_rowwise),
    CONTRACTION: Emission(emit_contraction, _split_contraction, _after_contraction),
    COLLECTIVE: Emission(emit_collective, lambda k: None),
    SCATTER: Emission(emit_scatter, lambda k: None),  # updates may collide: one thread, in order
    SCAN: Emission(emit_scan, lambda k: None),  # steps in order; the body's kernels may split
}


def emit(k) -> None:
    """Emit the body of `k`'s kernel (or of one chunk of it) by its form."""
    EMISSIONS[form_of(k.kernel)].emit(k)


def split_of(k) -> Split | None:
    """How kernel `k` splits its outer loop between `k.threads` threads (None: it does not).

    The outer loop is the one whose iterations write disjoint outputs: the elements (or
    first axis) of a loop, the first kept axis of a reduction, the rows of a row-wise kernel
    or of a 2-d contraction's product (the reduction stages run after the join)."""
    if k.threads <= 1:
        return None
    return EMISSIONS[form_of(k.kernel)].split(k)


def after_join(k) -> None:
    """What a split kernel runs after its chunks (a contraction's reduction stages)."""
    EMISSIONS[form_of(k.kernel)].after_join(k)
