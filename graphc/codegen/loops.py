"""A scan kernel (ir/scan.py) as one native loop around its body, compiled once.

The body graph goes through the whole pipeline on its own (simplify, fusion, memory plan)
and becomes a program of the same module, `<kernel>.body_step(arena, inputs..., outputs...)`
(codegen/llvm.py `emit_program`, every symbol prefixed, all internal). The kernel runs

    A = init                                  carries: two buffers, A and B, swapped each step
    for k in 0 .. length-1:                   t = k, or length-1-k with reverse=True
        body_step(arena', A..., xs + t*slice..., captured..., B..., ys + t*slice...)
        A, B = B, A
    final carries = A

so the slices of xs and ys are pointers advanced over the stacked buffers, never copies,
and the code (and LLVM's time) does not depend on the length. The body's arena, the carry
buffers and the one-step slice of a y no node reads are module globals of the kernel (the
outer memory plan holds the stacked xs, ys and residuals; a body is small), so a program
with loops is not re-entrant beyond the executable's own lock.
"""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen.kernel import I64, PTR, call_loop, i64
from graphc.errors import CompileError
from graphc.ir.graph import Graph
from graphc.ir.ops import opdef
from graphc.ir.scan import parts
from graphc.passes.memory import aligned

I8 = ir.IntType(8)


def _scratch(module: ir.Module, name: str, nbytes: int) -> ir.GlobalVariable:
    """A zeroed internal global of `nbytes` (at least 1), 64-byte aligned."""
    array = ir.ArrayType(I8, max(nbytes, 1))
    variable = ir.GlobalVariable(module, array, name)
    variable.linkage = "internal"
    variable.initializer = ir.Constant(array, None)
    variable.align = 64
    return variable


def loop_nodes(kernel):
    """(the scan node with the widest body, output index -> the kernel outputs holding it)."""
    nodes = [n for n in kernel.nodes if opdef(n).together is not None]
    widest = max(nodes, key=lambda n: len(n.attrs["body"].outputs))
    results: dict[int, list] = {}
    for n in kernel.outputs:
        results.setdefault(n.attrs["output"], []).append(n)
    return widest, results


def emit_scan(k) -> None:
    """The loop of a scan kernel on its emitter `k` (`k.emit_body` compiles a body graph
    into `k.module`: codegen/llvm.py sets it)."""
    node, results = loop_nodes(k.kernel)
    attrs = node.attrs
    body: Graph = attrs["body"]
    c, length = attrs["carries"], attrs["length"]
    ys_kept = sorted(i for i in results if i >= c)
    kept = Graph(
        [*body.outputs[:c], *(body.outputs[i] for i in ys_kept)], inputs=body.inputs, name=body.name
    )
    prefix = f"{k.kernel.name}.body"
    step, arena_bytes, status = k.emit_body(kept, prefix)
    b = k.b

    def pointer(x):
        if x in k.pointers:
            return k.pointers[x]
        if x in k.globals:
            return k.globals[x]
        raise CompileError(f"kernel {k.kernel.name}: no address for scan input {x}")

    init, xs, captured = parts(node, node.inputs)
    _, x_in, _ = parts(node, body.inputs)
    carry_bytes = [aligned(x.type.nbytes) for x in init]
    total = sum(carry_bytes)
    buffers = _scratch(k.module, f"{prefix}.carries", 2 * total)
    arena = _scratch(k.module, f"{prefix}.arena", arena_bytes)
    offsets = [sum(carry_bytes[:i]) for i in range(c)]

    def at(base, offset):
        return b.gep(base, [i64(offset)], inbounds=True, source_etype=I8)

    copy = k.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    false = ir.IntType(1)(0)
    first = [at(buffers, o) for o in offsets]
    for x, where in zip(init, first):
        b.call(copy, [where, pointer(x), i64(x.type.nbytes), false])
    y_scratch = {}
    for i in ys_kept:
        if not results.get(i):
            y_scratch[i] = _scratch(k.module, f"{prefix}.y{i}", body.outputs[i].type.nbytes)

    word = ir.IntType(32)
    if status is not None:  # the body's index checks: its status word, 0 while all is well
        status_word = b.bitcast(at(arena, status), word.as_pointer())
        b.store(word(0), status_word)

    def run(step_index):
        side = b.and_(step_index, i64(1))  # 0: carries in the first half, 1: in the second
        t = b.sub(i64(length - 1), step_index) if attrs["reverse"] else step_index
        here = b.mul(side, i64(total))
        there = b.mul(b.sub(i64(1), side), i64(total))
        current = [b.gep(buffers, [b.add(here, i64(o))], source_etype=I8) for o in offsets]
        following = [b.gep(buffers, [b.add(there, i64(o))], source_etype=I8) for o in offsets]
        slices = [
            b.gep(pointer(x), [b.mul(t, i64(x_t.type.nbytes))], inbounds=True, source_etype=I8)
            for x, x_t in zip(xs, x_in)
        ]
        outs = []
        for i in ys_kept:
            if i in y_scratch:
                outs.append(at(y_scratch[i], 0))
            else:
                size = body.outputs[i].type.nbytes
                target = pointer(results[i][0])
                outs.append(b.gep(target, [b.mul(t, i64(size))], inbounds=True, source_etype=I8))
        b.call(step, [at(arena, 0), *current, *slices, *map(pointer, captured), *following, *outs])

    call_loop(b, length, run, "scan")
    if status is not None:  # a step whose check failed fails the loop's kernel
        k.check(b.icmp_unsigned("==", b.load(status_word, typ=word), word(0)))

    for i in range(c):
        for out in results.get(i, []):
            source = b.gep(buffers, [i64(length % 2 * total + offsets[i])], source_etype=I8)
            b.call(copy, [pointer(out), source, i64(out.type.nbytes), false])
    for i in ys_kept:  # the same ys held by several nodes (a body and its extension)
        for out in results.get(i, [])[1:]:
            b.call(copy, [pointer(out), pointer(results[i][0]), i64(out.type.nbytes), false])
