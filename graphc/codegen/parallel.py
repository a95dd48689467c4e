"""Threads for large kernels: split the outermost loop into chunks, fork-join with pthreads.

A kernel whose estimated work pays for starting threads (`split_rows`) is emitted twice:

    K.rows(ptr args..., i64 start, i64 end)    the kernel over outer rows [start, end)
    K(ptr args...)                             fork_join: threads run K.rows on chunks 1..T-1,
                                               the caller runs chunk 0, then joins them all

    K(args) ──► ctx[t] = {args..., start_t, end_t}  (allocas in K's frame, no globals)
            ├─► pthread_create(&thread[t], NULL, K.rows.thread, &ctx[t])   t = 1 .. T-1
            │       (failure: K.rows runs that chunk right here instead)
            ├─► K.rows(args, start_0, end_0)
            └─► pthread_join(thread[t]) for every thread created

Every element is computed by the same code as in the unsplit kernel (rows are independent:
loop elements, reduction outputs, row-wise rows, matmul rows of C), so results are
bit-identical to one thread; only the loop bounds become values instead of constants. Chunk
boundaries are multiples of `unit` rows (64 elements for flat loops: whole vectors).

The thread count T is fixed at compile time (`thread_count`: the CPUs this process may run
on, at most MAX_THREADS, or $GRAPHC_THREADS; 1 turns threading off) and is part of the JIT
cache key. No thread outlives the native call, so concurrent calls (several Python threads,
or AOT callers on different memory blocks) each fork and join their own; nothing is global.
pthread_create + pthread_join cost about 20 us on this host, so a kernel is split only when
its estimated work (WORK_THRESHOLD, in units of about 0.25 ns on one core) is well above it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod

from llvmlite import ir

from graphc.errors import CompileError
from graphc.ir.graph import Kernel

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
MAX_THREADS = 8
# Estimated cost per element of each op, in units (a plain add, load or store is 1): the
# vectorized transcendentals of codegen/mathlib.py take 10-20 times as long.
OP_COST = {"exp": 12, "log": 14, "log1p": 16, "tanh": 16, "sigmoid": 12, "sin": 20, "cos": 20}
OP_COST |= {"pow": 30, "sqrt": 4, "div": 4}
FREE_OPS = {"const", "broadcast_to", "reshape", "transpose", "slice", "iota"}
# Units of work (~0.25 ns each on one core here) from which a kernel is split: 2^20 units is
# about 250 us, so the ~20 us per thread costs under a sixth of what the second core saves.
WORK_THRESHOLD = 1 << 20
# A matmul's FLOP per unit of work (its micro-kernel runs at the FMA peak: 36 GFLOP/s f32).
MATMUL_FLOPS_PER_UNIT = {"float32": 9.0, "float64": 4.5}
MATMUL_ROWS = 12  # matmul chunks are whole register tiles (6 or 12 rows) but the last


def thread_count() -> int:
    """Threads per large kernel: $GRAPHC_THREADS, else the usable CPUs (at most MAX_THREADS)."""
    value = os.environ.get("GRAPHC_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CompileError(f"GRAPHC_THREADS must be a positive integer, not {value!r}")
        return min(int(value), 64)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_THREADS))


@dataclass(frozen=True)
class Split:
    """A kernel's outer loop of `rows` iterations, cut into chunks [start, end)."""

    rows: int
    chunks: tuple[tuple[int, int], ...]


def chunks(rows: int, threads: int, unit: int = 1) -> tuple[tuple[int, int], ...]:
    """`rows` cut into at most `threads` chunks, all but the last a multiple of `unit` long."""
    size = -(-rows // threads)
    size = -(-size // unit) * unit
    return tuple((s, min(s + size, rows)) for s in range(0, rows, size))


def element_cost(kernel: Kernel) -> int:
    """Estimated units per element of a kernel's body: its ops, plus one per input and output."""
    ops = sum(OP_COST.get(n.op, 1) for n in kernel.nodes if n.op not in FREE_OPS)
    return ops + len(kernel.inputs) + len(kernel.outputs)


def split_rows(outer: int, work: float, threads: int, unit: int = 1) -> Split | None:
    """The Split of a kernel with `outer` rows and `work` units, or None if one thread is
    better: threading off, too little work, or too few rows for two chunks."""
    if threads <= 1 or work < WORK_THRESHOLD or outer < 2 * unit:
        return None
    cut = chunks(outer, threads, unit)
    return Split(outer, cut) if len(cut) > 1 else None


def work_of(kernel: Kernel, domain) -> float:
    """Units of work of a kernel evaluating its body over `domain` (a shape)."""
    return prod(domain) * element_cost(kernel)


def matmul_work(m: int, n: int, k: int, dtype: str) -> float:
    """Units of work of an m x k x n matmul: 2mnk FLOP at ~36 GFLOP/s (f32) or ~18 (f64)."""
    return 2 * m * n * k / MATMUL_FLOPS_PER_UNIT.get(dtype, 1)


# ---- emission ----


def _declare(module: ir.Module, name: str, type_: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, type_, name)


def trampoline(part: ir.Function, context: ir.Type) -> ir.Function:
    """`ptr <part>.thread(ptr ctx)`: unpack the arguments and the range, call `part`."""
    function = ir.Function(part.module, ir.FunctionType(PTR, [PTR]), f"{part.name}.thread")
    function.linkage = "internal"
    b = ir.IRBuilder(function.append_basic_block("entry"))
    values = []
    for i, arg in enumerate(part.args):
        slot = b.gep(function.args[0], [I32(0), I32(i)], inbounds=True, source_etype=context)
        values.append(b.load(slot, typ=arg.type))
    b.call(part, values)
    b.ret(ir.Constant(PTR, None))
    return function


def fork_join(b: ir.IRBuilder, part: ir.Function, pointers: list, split: Split) -> None:
    """Emit, at `b`: part(pointers..., start, end) for every chunk of `split`, chunk 0 on this
    thread and the others on new threads, all finished when the emitted code goes on."""
    module = b.module
    create = _declare(module, "pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
    join = _declare(module, "pthread_join", ir.FunctionType(I32, [I64, PTR]))
    context = ir.LiteralStructType([PTR] * len(pointers) + [I64, I64])
    thread = trampoline(part, context)
    others = split.chunks[1:]
    with b.goto_entry_block():
        handles = b.alloca(I64, len(others), name="threads")
        contexts = b.alloca(context, len(others), name="contexts")
    handles.type = contexts.type = PTR  # opaque: llvmlite would check stores against the type
    started = []
    for t, (start, end) in enumerate(others):
        ctx = b.gep(contexts, [I64(t)], inbounds=True, source_etype=context)
        for i, value in enumerate([*pointers, I64(start), I64(end)]):
            b.store(value, b.gep(ctx, [I32(0), I32(i)], inbounds=True, source_etype=context))
        handle = b.gep(handles, [I64(t)], inbounds=True, source_etype=I64)
        status = b.call(create, [handle, ir.Constant(PTR, None), thread, ctx])
        ok = b.icmp_signed("==", status, I32(0))
        with b.if_then(b.not_(ok), likely=False):  # no thread: run the chunk here
            b.call(part, [*pointers, I64(start), I64(end)])
        started.append((handle, ok))
    start, end = split.chunks[0]
    b.call(part, [*pointers, I64(start), I64(end)])
    for handle, ok in started:
        with b.if_then(ok, likely=True):
            b.call(join, [b.load(handle, typ=I64), ir.Constant(PTR, None)])
