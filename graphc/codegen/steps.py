"""K steps in one native call: a loop around `<name>_step` (DESIGN §9, `gc.compile(steps=K)`).

A program compiled with `steps=K` takes every input stacked on a new leading axis of length
K and returns every output stacked the same way. Its entry `<name>_steps(args)` reads the
same argument block as `<name>_call` (arena, params..., inputs..., outputs...) and runs

    for k in 0 .. K-1:
        <name>_step(arena, params..., input_i + k * bytes(input_i)..., output_j + k * ...)

so step k reads slice k of each input, writes slice k of each output, and its parameter
updates (written at the end of `<name>_step`) are what step k+1 reads: the same as K calls.
A program that checks indices at run time stops after the first step whose status word is
not 0 (the step that met a bad index), as K calls would stop at the one that raised.
`<name>_step` is kept out of line, so its code is optimized exactly as in the one-step
program (same instructions, same rounding: the K-step results are bit-identical to K calls)
and compile time does not grow with K. AOT's `NAME_run` (runtime/aot.py) runs the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from graphc.codegen.kernel import PTR, call_loop, i64

I8 = ir.IntType(8)


def emit_step_loop(
    b: ir.IRBuilder,
    step: ir.Function,
    fixed: Sequence[ir.Value],
    stacked: Sequence[tuple[ir.Value, int]],
    count: int,
    status: ir.Value | None = None,
) -> None:
    """At `b`, call `step(*fixed, *stacked pointers)` `count` times, each pointer of
    `stacked` (pointer, bytes per step) advanced by its bytes per step after each call;
    stop early after a call that leaves the i32 at `status` (if given) other than 0."""
    word = ir.IntType(32)

    def call(k):
        advanced = [
            b.gep(pointer, [b.mul(k, i64(nbytes))], inbounds=True, source_etype=I8)
            for pointer, nbytes in stacked
        ]
        b.call(step, [*fixed, *advanced])

    failed = None if status is None else (
        lambda: b.icmp_unsigned("!=", b.load(status, typ=word), word(0))
    )  # fmt: skip
    call_loop(b, count, call, "step", failed)


def add_steps_entry(
    module: ir.Module, name: str, graph, steps: int, status: int | None = None
) -> ir.Function:
    """Add `<name>_steps(args)` to the program `module` (codegen/llvm.py `emit_program`'s):
    `steps` runs of `<name>_step` over the stacked inputs and outputs of `graph` (stopping
    after one that sets the status word at arena offset `status`, if the program has one)."""
    step = module.get_global(f"{name}_step")
    step.attributes.add("noinline")
    entry = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"{name}_steps")
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    pointers = []
    for i in range(len(step.args)):
        slot = b.gep(entry.args[0], [i64(i)], inbounds=True, source_etype=PTR)
        pointers.append(b.load(slot, typ=PTR))
    fixed = 1 + len(graph.params)  # the arena and the parameters stay where they are
    sizes = [node.type.nbytes for node in (*graph.inputs, *graph.outputs)]
    word = None if status is None else b.gep(pointers[0], [i64(status)], source_etype=I8)
    emit_step_loop(b, step, pointers[:fixed], list(zip(pointers[fixed:], sizes)), steps, word)
    b.ret_void()
    return entry
