"""Threads for large kernels: split the outermost loop into chunks, fork-join with pthreads.

A kernel whose estimated work pays for starting threads (`split_rows`) is emitted as:

    K.rows(ptr args..., i64 start, i64 end)   the kernel over outer rows [start, end)
    K.rows.worker(ptr ctx)                    loop: i = atomic ctx.next++; stop when
                                              i >= chunks; K.rows(args, chunk i)
    K(ptr args...)                            ctx = {args..., next = 0}  (an alloca in K's
                                              frame: no globals, no heap)
                                              pthread_create(T - 1 threads, K.rows.worker, &ctx)
                                              K.rows.worker(&ctx)       on the calling thread
                                              pthread_join every thread created

There are about four chunks per thread (two for a matmul), claimed one at a time: a thread
that starts late because another process holds the other core (common on this shared host)
or cannot start at all (pthread_create fails) just leaves its chunks to the caller.

Every element is computed by the same code as in the unsplit kernel (rows are independent:
loop elements, reduction outputs, row-wise rows, matmul rows of C), so results are
bit-identical to one thread; only the loop bounds become values instead of constants. Chunk
boundaries are multiples of `unit` rows (64 elements for flat loops: whole vectors).

The thread count T is fixed at compile time (`thread_count`: the CPUs this process may run
on, at most MAX_THREADS, or $GRAPHC_THREADS; 1 turns threading off) and is part of the JIT
cache key. No thread outlives the native call, so concurrent calls (several Python threads,
or AOT callers on different memory blocks) each fork and join their own.
A kernel is split when its estimated time on one core reaches WORK_THRESHOLD_NS (1 ms;
4 ms for a matmul): well above the ~20 us pthread_create + pthread_join cost, and above the
time slice a new thread may wait for when another process keeps the other core busy.
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
# One core's time per unit (measured on W3: 39 units per element, 3.8 ms f32 and 15 ms f64
# for 10^6 elements) and a matmul's FLOP rate (its micro-kernel runs at the FMA peak).
NS_PER_UNIT = {"float32": 0.1, "float64": 0.3}
MATMUL_GFLOPS = {"float32": 36.0, "float64": 18.0}
MATMUL_ROWS = 12  # matmul chunks are whole register tiles (6 or 12 rows) but the last
# A kernel is split from this much work on one core. Starting and joining a thread costs
# ~20 us on an idle machine, but when another process holds the other core the thread
# waits for a time slice (measured ~0.5 ms here): from 1 ms of work a split is about 2x
# faster on an idle machine and no slower on a busy one.
WORK_THRESHOLD_NS = 1_000_000
# A matmul from 4 ms: its chunks read all of B (and each packs it) into the other core's
# cache. Measured (alone, T=2 vs 1): n = 256 f64 (1.9 ms) 1.56x faster alone, but W1-B's
# 256x256x256 products 10 % slower and interleaved with NumPy's OpenBLAS (whose threads
# spin after a call) n = 256-512 5-13 % slower; n >= 512 f32/f64: 1.7-2x alone.
MATMUL_THRESHOLD_NS = 4_000_000


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
    """A kernel's outer loop of `rows` iterations, cut into chunks [start, end) of `size`
    rows (the last may be shorter)."""

    rows: int
    chunks: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return self.chunks[0][1]


def chunks(rows: int, threads: int, unit: int = 1) -> tuple[tuple[int, int], ...]:
    """`rows` cut into at most `threads` chunks, all but the last a multiple of `unit` long."""
    size = -(-rows // threads)
    size = -(-size // unit) * unit
    return tuple((s, min(s + size, rows)) for s in range(0, rows, size))


def element_cost(kernel: Kernel) -> int:
    """Estimated units per element of a kernel's body: its ops, plus one per input and output."""
    ops = sum(OP_COST.get(n.op, 1) for n in kernel.nodes if n.op not in FREE_OPS)
    return ops + len(kernel.inputs) + len(kernel.outputs)


def split_rows(
    outer: int,
    work: float,
    threads: int,
    unit: int = 1,
    per_thread: int = 4,
    threshold: float = WORK_THRESHOLD_NS,
) -> Split | None:
    """The Split of a kernel with `outer` rows and `work` (ns on one core) into about
    `per_thread` chunks per thread, or None if one thread is better: threading off, less
    work than `threshold`, or too few rows for two chunks."""
    if threads <= 1 or work < threshold or outer < 2 * unit:
        return None
    cut = chunks(outer, threads * per_thread, unit)
    return Split(outer, cut) if len(cut) > 1 else None


def work_of(kernel: Kernel, domain) -> float:
    """Estimated ns on one core of a kernel evaluating its body over `domain` (a shape)."""
    wide = any(n.dtype in ("float64", "int64") for n in kernel.nodes)
    return prod(domain) * element_cost(kernel) * NS_PER_UNIT["float64" if wide else "float32"]


def matmul_work(m: int, n: int, k: int, dtype: str) -> float:
    """Estimated ns on one core of an m x k x n matmul: 2mnk FLOP at the FMA peak."""
    return 2 * m * n * k / MATMUL_GFLOPS.get(dtype, 4.0)


# ---- emission ----


def _declare(module: ir.Module, name: str, type_: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, type_, name)


def worker(part: ir.Function, split: Split, context: ir.Type) -> ir.Function:
    """`ptr <part>.worker(ptr ctx)`: claim the next chunk from ctx's counter and run `part` on
    it, until none is left. The caller and every thread run this loop on one shared ctx."""
    function = ir.Function(part.module, ir.FunctionType(PTR, [PTR]), f"{part.name}.worker")
    function.linkage = "internal"
    ctx = function.args[0]
    b = ir.IRBuilder(function.append_basic_block("entry"))

    def field(i):
        return b.gep(ctx, [I32(0), I32(i)], inbounds=True, source_etype=context)

    pointers = [b.load(field(i), typ=PTR) for i in range(len(part.args) - 2)]
    counter = field(len(pointers))
    claim = function.append_basic_block("claim")
    run = function.append_basic_block("run")
    done = function.append_basic_block("done")
    b.branch(claim)
    b.position_at_end(claim)
    index = b.atomic_rmw("add", counter, I64(1), "monotonic")
    b.cbranch(b.icmp_unsigned("<", index, I64(len(split.chunks))), run, done)
    b.position_at_end(run)
    start = b.mul(index, I64(split.size))
    end = b.add(start, I64(split.size))
    end = b.select(b.icmp_unsigned("<", end, I64(split.rows)), end, I64(split.rows))
    b.call(part, [*pointers, start, end])
    b.branch(claim)
    b.position_at_end(done)
    b.ret(ir.Constant(PTR, None))
    return function


def fork_join(b: ir.IRBuilder, part: ir.Function, pointers: list, split: Split, threads: int):
    """Emit, at `b`: part(pointers..., start, end) for every chunk of `split`, on this thread
    and `threads` - 1 new ones, all finished when the emitted code goes on. Chunks are claimed
    one at a time, so a thread that starts late (or not at all) leaves its share to the others."""
    module = b.module
    create = _declare(module, "pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
    join = _declare(module, "pthread_join", ir.FunctionType(I32, [I64, PTR]))
    context = ir.LiteralStructType([PTR] * len(pointers) + [I64])
    loop = worker(part, split, context)
    helpers = min(threads, len(split.chunks)) - 1
    with b.goto_entry_block():
        handles = b.alloca(I64, helpers, name="threads")
        ctx = b.alloca(context, name="context")
    handles.type = ctx.type = PTR  # opaque: llvmlite would check stores against the type
    for i, value in enumerate([*pointers, I64(0)]):
        b.store(value, b.gep(ctx, [I32(0), I32(i)], inbounds=True, source_etype=context))
    started = []
    for t in range(helpers):
        handle = b.gep(handles, [I64(t)], inbounds=True, source_etype=I64)
        status = b.call(create, [handle, ir.Constant(PTR, None), loop, ctx])
        started.append((handle, b.icmp_signed("==", status, I32(0))))
    b.call(loop, [ctx])
    for handle, ok in started:  # a thread that did not start took no chunk
        with b.if_then(ok, likely=True):
            b.call(join, [b.load(handle, typ=I64), ir.Constant(PTR, None)])
