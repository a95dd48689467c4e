"""The four kernel forms of DESIGN §4 as loop nests, on a `KernelEmitter` (codegen/llvm.py).

- loop: one loop nest per output shape (a horizontally fused kernel has several, run one
  after the other); all outputs of a nest are computed at an index before any is stored,
  so an output may overwrite an input that is read only at that index.
- reduction: a loop over the kept axes around a loop over the reduced ones; the input
  expression is evaluated inside (input fusion) and the epilogue after it.
- rowwise: one loop over rows; per row each reduction over the last axis runs in order,
  row-level values depending on it are computed once right after it, then the outputs of
  the row are stored (softmax, log-softmax + cross-entropy, layer norm: one pass).
- contraction: a generated matmul into the product's buffer — or, when the product is not
  needed elsewhere, into the buffer of the first same-size output, over which the elementwise
  epilogue is then applied in place; then any reduction stages over the product's domain.
"""

from __future__ import annotations

from math import prod

from llvmlite import ir

from graphc.codegen.emitter import REGISTER_TYPES
from graphc.errors import CompileError
from graphc.ir.graph import Node
from graphc.passes.kernels import REDUCTIONS, product_host, segments, stage_reductions

SCRATCH_BYTES = 32 * 1024  # a contraction's product up to this size is kept on the stack


def emit_loop(k) -> None:
    for shape, outputs in segments(k.kernel):
        _over(k, shape, outputs)
        k.materialized.update(id(o) for o in outputs)  # later nests read them back


def _over(k, shape, outputs) -> None:
    """Store `outputs` (all of `shape`'s size) over a loop nest on `shape`."""
    from graphc.codegen.llvm import INDEX_MAPS

    needs_axes = any(n.op in INDEX_MAPS and n.op != "reshape" for n in k.kernel.nodes)
    if needs_axes:
        k.nest(shape, lambda values: k.store_outputs(k.index(shape, values=values), outputs))
    else:
        k.loop(prod(shape), lambda i: k.store_outputs(k.index(shape, flat=i), outputs))


def emit_reduction(k) -> None:
    (reduce,) = [n for n in k.kernel.nodes if n.op in REDUCTIONS]
    reduce_stage(k, reduce, list(k.kernel.outputs))


def reduce_stage(k, reduce: Node, outputs) -> None:
    """One reduction (input expression evaluated inside) and the outputs computed from it."""
    from graphc.codegen.llvm import I64, _argmax_better, combine_sum, i64, identity

    x = reduce.inputs[0]
    axes = tuple(reduce.attrs.get("axes", (reduce.attrs.get("axis"),)))
    kept = [d for i, d in enumerate(x.shape) if i not in axes]
    reduced = [x.shape[a] for a in axes]
    b = k.b

    def per_output(out_values):
        with b.goto_entry_block():
            accumulator = b.alloca(REGISTER_TYPES[x.dtype])
            position = b.alloca(I64) if reduce.op == "argmax" else None
        b.store(identity(reduce, x.dtype), accumulator)
        if position is not None:
            b.store(i64(0), position)

        def per_element(red_values):
            full, kept_iter, red_iter = [], iter(out_values), iter(red_values)
            for i in range(x.ndim):
                full.append(next(red_iter) if i in axes else next(kept_iter))
            v = k.value(x, k.index(x.shape, values=full))
            acc = b.load(accumulator)
            if reduce.op == "sum":
                b.store(combine_sum(b, acc, v), accumulator)
            elif reduce.op == "max":
                b.store(k.e.maximum(acc, v), accumulator)
            else:
                better = _argmax_better(k.e, v, acc)
                b.store(b.select(better, v, acc), accumulator)
                flat = k.index(reduced, values=red_values).flat
                b.store(b.select(better, flat, b.load(position)), position)

        k.nest(reduced, per_element)
        k.known[id(reduce)] = b.load(position if position is not None else accumulator)
        out_index = k.index(reduce.shape, flat=k.index(kept, values=out_values).flat)
        k.store_outputs(out_index, outputs)
        del k.known[id(reduce)]

    k.nest(kept, per_output)


def emit_rowwise(k) -> None:
    from graphc.codegen.llvm import combine_sum, identity

    body = {id(n): n for n in k.kernel.nodes}
    reductions = [n for n in k.kernel.nodes if n.op in REDUCTIONS]
    x0 = reductions[0].inputs[0]
    rows, length = x0.shape[:-1], x0.shape[-1]
    size = prod(rows)
    for r in reductions:
        if r.inputs[0].shape != x0.shape or tuple(r.attrs["axes"]) != (x0.ndim - 1,):
            raise CompileError(f"rowwise kernel {k.kernel.name}: {r.op} is not over the row axis")
    depends: dict[int, set[int]] = {}  # body node -> the reductions it is computed from
    for n in k.kernel.nodes:
        found = {id(n)} if n.op in REDUCTIONS else set()
        for x in n.inputs:
            found |= depends.get(id(x), set()) if id(x) in body else set()
        depends[id(n)] = found
    row_level = [
        n
        for n in k.kernel.nodes
        if n.type.size == size and depends[id(n)] and n.op not in REDUCTIONS
    ]
    full_outputs = [o for o in k.kernel.outputs if o.type.size == size * length]
    row_outputs = [o for o in k.kernel.outputs if o.type.size != size * length]
    b = k.b

    def per_row(r):
        k.known = {}
        row_values = k.index(rows, flat=r).values if rows else []
        done: set[int] = set()

        def settle():
            for n in row_level:
                if id(n) not in k.known and depends[id(n)] <= done:
                    k.known[id(n)] = k._compute(n, k.index(n.shape, flat=r))

        for reduce in reductions:
            with b.goto_entry_block():
                accumulator = b.alloca(REGISTER_TYPES[x0.dtype])
            b.store(identity(reduce, x0.dtype), accumulator)

            def per_element(j, reduce=reduce, accumulator=accumulator):
                v = k.value(reduce.inputs[0], k.index(x0.shape, values=[*row_values, j]))
                acc = b.load(accumulator)
                combined = combine_sum(b, acc, v) if reduce.op == "sum" else k.e.maximum(acc, v)
                b.store(combined, accumulator)

            k.loop(length, per_element, "j")
            k.known[id(reduce)] = b.load(accumulator)
            done.add(id(reduce))
            settle()
        for o in row_outputs:
            k.store(o, r, k.value(o, k.index(o.shape, flat=r)))
        if full_outputs:
            k.loop(
                length,
                lambda j: k.store_outputs(k.index(x0.shape, values=[*row_values, j]), full_outputs),
                "j",
            )
        k.known = {}

    k.loop(size, per_row, "row")


def emit_contraction(k) -> None:
    from graphc.codegen.llvm import affine_view, keep_out_of_line, strides_of
    from graphc.codegen.matmul import Operand, define_matmul

    kernel = k.kernel
    (mm,) = [n for n in kernel.nodes if n.op == "matmul"]
    sources = {id(n) for n in kernel.inputs}
    views = [affine_view(operand, sources) for operand in mm.inputs]
    if None in views:
        raise CompileError(f"kernel {kernel.name}: matmul operand is not an affine view")
    body = {id(n): n for n in kernel.nodes}
    stages: dict[int, list[Node]] = {}
    epilogue = []
    for out in kernel.outputs:
        if out is mm:
            continue
        found = stage_reductions(out, body)
        if found:
            stages.setdefault(id(found[0]), []).append(out)
        else:
            epilogue.append(out)
    if mm in kernel.outputs:
        target = k.pointers[id(mm)]
    elif mm.type.nbytes <= SCRATCH_BYTES:
        # a small product goes to the stack: the epilogue then reads it and writes its
        # outputs, instead of rewriting the product in place (where `where(mask, x, 0)` over
        # x becomes a masked store, slow on this CPU)
        with k.b.goto_entry_block():
            target = k.b.alloca(ir.ArrayType(ir.IntType(8), mm.type.nbytes))
            target.align = 64
        k.pointers[id(mm)] = target
    else:
        host = product_host(kernel)
        if host is None:
            raise CompileError(f"kernel {kernel.name}: no buffer for the matmul product")
        target = k.pointers[id(host)]  # the epilogue then runs in place over it
        k.pointers[id(mm)] = target
    *batch, m, inner = mm.inputs[0].shape
    function = define_matmul(
        k.module,
        f"{kernel.name}.matmul",
        m=m,
        n=mm.shape[-1],
        k=inner,
        dtype=mm.dtype,
        a=Operand(views[0].strides, views[0].offset),
        b=Operand(views[1].strides, views[1].offset),
        c=Operand(strides_of(mm.shape), 0),
        batch=tuple(batch),
    )
    function.linkage = "internal"
    keep_out_of_line(function)
    pointers = [target]
    pointers += [k.globals.get(id(v.source)) or k.pointers[id(v.source)] for v in views]
    k.b.call(function, pointers)
    k.materialized.add(id(mm))
    if epilogue:
        k.nest(mm.shape, lambda values: k.store_outputs(k.index(mm.shape, values=values), epilogue))
    k.materialized.update(id(o) for o in epilogue)
    for n in kernel.nodes:
        if id(n) in stages:
            reduce_stage(k, n, stages[id(n)])
