"""Kernels + memory plan -> one LLVM module: one function per kernel, one entry.

The module exports `<name>_step(arena, params..., inputs..., outputs...)`, which runs
the kernels in schedule order and then writes the updates into the parameters, and
`<name>_call(args)`, the same with all pointers in one array (one native call from
Python with a single argument). Each kernel is emitted by its form (codegen/forms.py) on
a `KernelEmitter` (codegen/kernel.py):

    kernel.py (emission primitives, values at an index)  <-  forms.py  <-  llvm.py (program)

Threads: a kernel whose work pays for them runs its outer loop in chunks shared with the
worker threads of a process-wide pool (codegen/parallel.py); small kernels are emitted
exactly as without.
"""

from __future__ import annotations

import dataclasses
import itertools

from llvmlite import ir

from graphc.codegen import forms, parallel
from graphc.codegen.emitter import MEMORY_TYPES
from graphc.codegen.kernel import (
    I64,
    OUT_OF_LINE_FROM,
    PTR,
    KernelEmitter,
    constant_global,
    i64,
    immediate,
    instruction_count,
    is_immediate,
)
from graphc.codegen.target import Target, host
from graphc.ir.graph import Graph, Kernel, Node
from graphc.ir.ops import is_const
from graphc.passes.kernels import checks
from graphc.passes.memory import Location, Plan


def emit_kernel(
    module: ir.Module, kernel: Kernel, globals_, place, threads: int, cpu: Target, code: int = 0
) -> KernelEmitter:
    """Emit `kernel` as a function of `module` by its form; a kernel whose work pays for
    threads runs its outer loop in chunks on the pool, then what must follow them all. A
    kernel that checks indices reports a failed check as status `code`."""
    k = KernelEmitter(module, kernel, globals_, place, threads, cpu=cpu)
    k.emit_body = lambda graph, prefix: emit_body(module, graph, prefix, threads, cpu)
    split = forms.split_of(k)
    if split is None:
        k.hoist_scalars()
        forms.emit(k)
    else:
        chunk = KernelEmitter(module, kernel, globals_, place, threads, rows=split, cpu=cpu)
        chunk.hoist_scalars()
        forms.emit(chunk)
        report_checks(chunk, code)
        chunk.b.ret_void()  # (inlined into its one caller, which knows the chunk bounds)
        k.hoist_scalars()
        parallel.dispatch(k.b, chunk.function, k.function.args, split, threads)
        forms.after_join(k)
    report_checks(k, code)
    k.b.ret_void()
    if instruction_count(k.function.blocks) >= OUT_OF_LINE_FROM:
        k.function.attributes.add("noinline")
    return k


def report_checks(k: KernelEmitter, code: int) -> None:
    """At the end of a kernel's function: if one of its index checks failed (`k.check`),
    store `code` in the program's status word (atomically: chunks on several threads may)."""
    if k.failed is None:
        return
    b, flag = k.b, ir.IntType(8)
    failed = b.icmp_unsigned("!=", b.load(k.failed, typ=flag), flag(0))
    with b.if_then(failed, likely=False):
        b.atomic_rmw("xchg", k.status, ir.IntType(32)(code), "monotonic")


def emit_body(module: ir.Module, graph: Graph, prefix: str, threads: int, cpu: Target):
    """A loop's body (codegen/loops.py) lowered on its own and emitted into `module` as the
    internal function `<prefix>_step(arena, inputs..., outputs...)`; with its arena's size
    and the offset of its status word there (None: the body checks no index)."""
    from graphc.passes import lower

    optimized, kernels, plan = lower(graph)
    emit_program(optimized, kernels, plan, prefix, threads, cpu, module=module)
    return module.get_global(f"{prefix}_step"), plan.arena_bytes, plan.status


# ---- the program ----

# LLVM inlines every kernel into `<name>_step` (each is called once), and its optimization
# and code generation of one function take time growing faster than the function: an LSTM
# unrolled over 20 steps compiled in 2.5x the time of 10. So kernels are inlined, in schedule
# order, only while their instructions total at most this; later ones stay calls (a few ns
# each). Measurements: README, Performance, "Compile time".
STEP_INLINE_BUDGET = 4000


def keep_step_small(emitters: list[KernelEmitter]) -> None:
    """Mark `noinline` the kernels past STEP_INLINE_BUDGET instructions of inlined ones."""
    inlined = 0
    for k in emitters:
        if "noinline" not in k.function.attributes:
            inlined += instruction_count(k.function.blocks)
            if inlined > STEP_INLINE_BUDGET:
                k.function.attributes.add("noinline")


def emit_program(
    graph: Graph,
    kernels: list[Kernel],
    plan: Plan,
    name: str,
    threads: int | None = None,
    cpu: Target | None = None,
    module: ir.Module | None = None,
) -> ir.Module:
    """The LLVM module of a compiled program: kernels, constants and the exported entries.
    Large kernels run on `threads` threads (default: `parallel.thread_count()`); the code is
    tuned for `cpu` (default: the JIT's target, `target.host()`). Given a `module`, the
    program is added to it with every symbol prefixed by `name.` and only an internal
    `<name>_step` (a loop's body, codegen/loops.py)."""
    cpu = cpu or host()
    threads = parallel.thread_count(cpu) if threads is None else threads
    inner = module is not None
    prefix = f"{name}." if inner else ""
    if inner:
        kernels = [dataclasses.replace(k, name=prefix + k.name) for k in kernels]
    module = module if inner else ir.Module(name=name)
    globals_: dict[Node, ir.GlobalVariable] = {}
    for node in graph.nodes:
        # scalars too: loops use them as immediates, but a matmul reads a broadcast scalar
        # through memory (unused globals are dropped by the optimizer)
        if is_const(node):
            globals_[node] = constant_global(module, node, f"{prefix}const.{len(globals_)}")

    def place(node: Node):
        return plan.locations.get(node) or node

    # kernels that check indices number their failures from 1, in schedule order
    codes = itertools.count(1)
    functions = [
        emit_kernel(module, k, globals_, place, threads, cpu, next(codes) if checks(k) else 0)
        for k in kernels
    ]
    keep_step_small(functions)

    params, inputs, outputs = graph.params, graph.inputs, graph.outputs
    arg_count = 1 + len(params) + len(inputs) + len(outputs)
    step = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * arg_count), f"{name}_step")
    arena, *args = step.args
    b = ir.IRBuilder(step.append_basic_block("entry"))
    bases = {"param": args[: len(params)], "input": args[len(params) : len(params) + len(inputs)]}
    bases["output"] = args[len(params) + len(inputs) :]

    def pointer(node: Node) -> ir.Value:
        if node in globals_:
            return globals_[node]
        where = plan.location(node)
        if where.kind == "arena":
            return b.gep(arena, [i64(where.index)], inbounds=True, source_etype=ir.IntType(8))
        return bases[where.kind][where.index]

    status = None  # the status word: a failed check ends the step right after its kernel
    if plan.status is not None:
        status = b.gep(arena, [i64(plan.status)], inbounds=True, source_etype=ir.IntType(8))
    for emitter in functions:
        by_place = {}
        for n in (*emitter.external, *emitter.kernel.outputs):
            by_place.setdefault(place(n), n)
        arguments = [pointer(by_place[where]) for where in emitter.places]
        b.call(emitter.function, arguments + [status] * emitter.checked)
        if emitter.checked:
            word = ir.IntType(32)
            with b.if_then(b.icmp_unsigned("!=", b.load(status, typ=word), word(0)), likely=False):
                b.ret_void()

    copy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    false = ir.IntType(1)(0)

    def copy_value(destination, node):
        if is_immediate(node):
            b.store(
                b.zext(immediate(node), MEMORY_TYPES["bool"])
                if node.dtype == "bool"
                else immediate(node),
                destination,
            )
        else:
            b.call(copy, [destination, pointer(node), i64(node.type.nbytes), false])

    for i, node in enumerate(outputs):
        where = plan.locations.get(node)
        if where is None or where.kind != "output" or where.index != i:
            copy_value(bases["output"][i], node)
    param_index = {p: i for i, p in enumerate(params)}
    # updates are simultaneous: a parameter read by another's update is copied aside first
    staged = {}
    for _, value in graph.updates:
        if value in plan.staging and value not in staged:
            offset = i64(plan.staging[value])
            staged[value] = b.gep(arena, [offset], inbounds=True, source_etype=ir.IntType(8))
            copy_value(staged[value], value)
    for target, value in graph.updates:
        if value is target or plan.locations.get(value) == Location("param", param_index[target]):
            continue  # computed straight into the parameter
        destination = bases["param"][param_index[target]]
        if value in staged:
            b.call(copy, [destination, staged[value], i64(value.type.nbytes), false])
        else:
            copy_value(destination, value)
    b.ret_void()
    if inner:
        step.linkage = "internal"
        return module

    call = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"{name}_call")
    b = ir.IRBuilder(call.append_basic_block("entry"))
    loaded = []
    for i in range(arg_count):
        slot = b.gep(call.args[0], [i64(i)], inbounds=True, source_etype=PTR)
        loaded.append(b.load(slot, typ=PTR))
    b.call(step, loaded)
    b.ret_void()
    return module
