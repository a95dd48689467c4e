"""Threads for large kernels: split the outermost loop into chunks, run them on pthreads.

A kernel whose estimated work pays for starting threads (`split_rows`) is emitted as:

    K.rows(ptr args..., i64 start, i64 end)   the kernel over outer rows [start, end)
    K.rows.worker(ptr team)                   loop: i = atomic team.next++; stop when
                                              i >= chunks; K.rows(args, chunk i);
                                              atomic team.done++
    K(ptr args..., ptr team)                  team = {args..., next = 0, done = 0}
                                              pthread_create(T - 1 threads, K.rows.worker, team)
                                              K.rows.worker(team)       on the calling thread
                                              wait (sched_yield) until team.done == chunks
    <name>_step                               a team per split kernel in its frame (no
                                              globals, no heap); at the end, pthread_join
                                              every thread any kernel created

There are about four chunks per thread (two for a matmul), claimed one at a time: a thread
that starts late because another process holds the other core (common on this shared host)
or cannot start at all (pthread_create fails) just leaves its chunks to the caller. A kernel
waits for its chunks, not for its threads: a thread that has not started yet, or is on its
way out, is joined once at the end of the step, when everything it might still read (its
team, in the step's frame) is done with. (Joining in each kernel made every split kernel wait
for a time slice whenever a neighbour held the other core: W1-B on two threads went from
3.8 ms to 6.1 ms next to one busy process; waiting for chunks instead, 4.1 ms.)

Every element is computed by the same code as in the unsplit kernel (rows are independent:
loop elements, reduction outputs, row-wise rows, matmul rows of C), so results are
bit-identical to one thread; only the loop bounds become values instead of constants. Chunk
boundaries are multiples of `unit` rows (64 elements for flat loops: whole vectors).

The thread count T is fixed at compile time (`thread_count`: the CPUs this process may run
on, at most MAX_THREADS, or $GRAPHC_THREADS; 1 turns threading off) and is part of the JIT
cache key. No thread outlives the native call, so concurrent calls (several Python threads,
or AOT callers on different memory blocks) each start and join their own.
A kernel is split when its estimated time on one core reaches WORK_THRESHOLD_NS (1 ms;
MATMUL_THRESHOLD_NS for a matmul): well above the ~20 us pthread_create cost.
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
# A matmul from 400 us. Measured on two threads, with the step joining threads at its end
# (graphc alone, medians): W1-B f32 3.59 -> 2.51 ms and W4 n = 256 f64 1.80 -> 1.10 ms on an
# idle machine, 3.55 -> 3.83 ms and 1.76 -> 1.98 ms next to one busy process. (With a join in
# every kernel, the busy case was 6.1 ms and 2.0-2.4 ms, hence a 4 ms threshold before.)
MATMUL_THRESHOLD_NS = 400_000


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


def team_type(split: Split, pointers: int, threads: int) -> ir.LiteralStructType:
    """A split kernel's team: its pointer arguments, the chunk counters `next` and `done`, and
    per helper thread its handle and whether it started."""
    helpers = helper_count(split, threads)
    return ir.LiteralStructType([PTR] * pointers + [I64, I64] + [I64] * (2 * helpers))


def helper_count(split: Split, threads: int) -> int:
    return min(threads, len(split.chunks)) - 1


def _field(b: ir.IRBuilder, team, team_t: ir.LiteralStructType, i: int) -> ir.Value:
    return b.gep(team, [I32(0), I32(i)], inbounds=True, source_etype=team_t)


def worker(part: ir.Function, split: Split, team_t: ir.LiteralStructType) -> ir.Function:
    """`ptr <part>.worker(ptr team)`: claim the next chunk from the team's counter and run
    `part` on it, counting it done, until none is left. The caller and every thread run this
    loop on one shared team."""
    function = ir.Function(part.module, ir.FunctionType(PTR, [PTR]), f"{part.name}.worker")
    function.linkage = "internal"
    team = function.args[0]
    b = ir.IRBuilder(function.append_basic_block("entry"))
    count = len(part.args) - 2
    pointers = [b.load(_field(b, team, team_t, i), typ=PTR) for i in range(count)]
    claim = function.append_basic_block("claim")
    run = function.append_basic_block("run")
    done = function.append_basic_block("done")
    b.branch(claim)
    b.position_at_end(claim)
    index = b.atomic_rmw("add", _field(b, team, team_t, count), I64(1), "monotonic")
    b.cbranch(b.icmp_unsigned("<", index, I64(len(split.chunks))), run, done)
    b.position_at_end(run)
    start = b.mul(index, I64(split.size))
    end = b.add(start, I64(split.size))
    end = b.select(b.icmp_unsigned("<", end, I64(split.rows)), end, I64(split.rows))
    b.call(part, [*pointers, start, end])
    # release: the chunk's stores are visible to whoever sees the count
    b.atomic_rmw("add", _field(b, team, team_t, count + 1), I64(1), "release")
    b.branch(claim)
    b.position_at_end(done)
    b.ret(ir.Constant(PTR, None))
    return function


def fork(b: ir.IRBuilder, part: ir.Function, pointers: list, split: Split, threads: int, team):
    """Emit, at `b`: part(pointers..., start, end) for every chunk of `split`, on this thread
    and up to `threads` - 1 new ones started on `team` (memory of `team_type`, owned by the
    step), all chunks finished when the emitted code goes on; the threads are joined later,
    by `join` at the end of the step."""
    module = b.module
    create = _declare(module, "pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
    pause = _declare(module, "sched_yield", ir.FunctionType(I32, []))
    team_t = team_type(split, len(pointers), threads)
    loop = worker(part, split, team_t)
    count = len(pointers)
    for i, value in enumerate([*pointers, I64(0), I64(0)]):
        b.store(value, _field(b, team, team_t, i))
    for t in range(helper_count(split, threads)):
        handle = _field(b, team, team_t, count + 2 + 2 * t)
        status = b.call(create, [handle, ir.Constant(PTR, None), loop, team])
        started = b.zext(b.icmp_signed("==", status, I32(0)), I64)
        b.store(started, _field(b, team, team_t, count + 3 + 2 * t))
    b.call(loop, [team])
    function = b.function
    wait = function.append_basic_block("chunks.wait")
    again = function.append_basic_block("chunks.yield")
    finished = function.append_basic_block("chunks.done")
    b.branch(wait)
    b.position_at_end(wait)
    # acquire: the other threads' chunks are visible once their count is seen
    done = b.load_atomic(_field(b, team, team_t, count + 1), "acquire", 8, typ=I64)
    b.cbranch(b.icmp_unsigned(">=", done, I64(len(split.chunks))), finished, again)
    b.position_at_end(again)
    b.call(pause, [])
    b.branch(wait)
    b.position_at_end(finished)


def join(b: ir.IRBuilder, split: Split, pointers: int, threads: int, team) -> None:
    """Emit, at `b`: pthread_join every thread `fork` started on `team`."""
    module = b.module
    join_ = _declare(module, "pthread_join", ir.FunctionType(I32, [I64, PTR]))
    team_t = team_type(split, pointers, threads)
    for t in range(helper_count(split, threads)):
        started = b.load(_field(b, team, team_t, pointers + 3 + 2 * t), typ=I64)
        with b.if_then(b.icmp_unsigned("!=", started, I64(0)), likely=True):
            handle = b.load(_field(b, team, team_t, pointers + 2 + 2 * t), typ=I64)
            b.call(join_, [handle, ir.Constant(PTR, None)])
