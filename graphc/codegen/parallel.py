"""Threads for large kernels: the outer loop cut into chunks, shared with a thread pool.

A kernel whose estimated work pays for it (`split_rows`) is emitted as:

    K.rows(ptr args..., i64 start, i64 end)   the kernel over outer rows [start, end)
    K.rows.chunk(ptr context, i64 i)          K.rows(context's args, chunk i's rows)
    K(ptr args...)                            context = {args...} (in its frame)
                                              graphc_pool_run(K.rows.chunk, context,
                                                              chunks, T)

`graphc_pool_run` (emitted by `emit_pool`, once per process for the JIT and into each AOT
object) publishes the job; the calling thread and the pool's workers claim chunks one at a
time until none is left, and the call returns when every chunk is done:

    caller  take the slot ── publish job ── wake ── claim/run ... ── wait for done ── free
    worker  (spinning, or asleep in futex_wait) ── claim/run ... ── spin ~50 us ── sleep

A waiting caller spins ~100 us, then sleeps on `done` until the last chunk's worker wakes
it: its core goes idle, so the kernel's scheduler moves a worker that another process
preempted onto it instead of leaving it queued behind that process for a time slice.

A caller that wakes sleeping workers keeps them off its own CPU (`steer_sleepers`): Linux
would often queue a worker behind it there.

A caller waits for chunks, never for a thread: a worker that is slow to wake, descheduled
by another process (common on this shared host), or never started (pthread_create failed)
leaves its chunks to the caller, and a call that finds the slot taken (another thread's
call) runs all its chunks itself. Workers are started by the first call that wants them
and then live as long as the process, so a split costs a few cache-line transfers (or one
futex wake) instead of a pthread_create and a join (~20 us each).

Every element is computed by the same code as in the unsplit kernel (rows are independent:
loop elements, reduction outputs, row-wise rows, matmul rows of C), so results are
bit-identical to one thread; only the loop bounds become values instead of constants.
Which kernels are split, and into which chunks, is decided in codegen/split.py.

The thread count T is fixed at compile time (`thread_count`: the CPUs this process may run
on, at most MAX_THREADS, or $GRAPHC_THREADS; 1 turns threading off) and is part of the JIT
cache key.
"""

from __future__ import annotations

import os

from llvmlite import ir

from graphc.codegen.split import Split
from graphc.errors import CompileError

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()
MAX_THREADS = 8
MAX_WORKERS = 64  # thread_count's limit


def thread_count(target=None) -> int:
    """Threads per large kernel: $GRAPHC_THREADS, else the usable CPUs (at most MAX_THREADS).
    1 for code for another system than x86-64 (a codegen.target.Target): the pool is x86-64
    Linux code (its syscall numbers, `pause`), and a freestanding target has no threads."""
    if target is not None and not target.triple.startswith("x86_64"):
        return 1
    value = os.environ.get("GRAPHC_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise CompileError(f"GRAPHC_THREADS must be a positive integer, not {value!r}")
        return min(int(value), MAX_WORKERS)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_THREADS))


# ---- emission: a kernel's chunks ----


def _declare(module: ir.Module, name: str, type_: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, type_, name)


CHUNK_TYPE = ir.FunctionType(VOID, [PTR, I64])  # chunk(context, index)
RUN_TYPE = ir.FunctionType(VOID, [PTR, PTR, I64, I64])  # graphc_pool_run(chunk, context, n, T)


def chunk_function(part: ir.Function, split: Split) -> ir.Function:
    """`void <part>.chunk(ptr context, i64 index)`: `part` on chunk `index` of `split`, its
    pointer arguments read from `context` (an array of them)."""
    function = ir.Function(part.module, CHUNK_TYPE, f"{part.name}.chunk")
    function.linkage = "internal"
    context, index = function.args
    b = ir.IRBuilder(function.append_basic_block("entry"))
    pointers = [
        b.load(b.gep(context, [I64(i)], inbounds=True, source_etype=PTR), typ=PTR)
        for i in range(len(part.args) - 2)
    ]
    start = b.mul(index, I64(split.size))
    end = b.add(start, I64(split.size))
    end = b.select(b.icmp_unsigned("<", end, I64(split.rows)), end, I64(split.rows))
    b.call(part, [*pointers, start, end])
    b.ret_void()
    return function


def dispatch(b: ir.IRBuilder, part: ir.Function, pointers: list, split: Split, threads: int):
    """Emit, at `b`: part(pointers..., start, end) for every chunk of `split`, on this thread
    and the pool's workers (up to `threads` in all); every chunk is finished when the emitted
    code goes on."""
    assert len(split.chunks) < 1 << FIELD_BITS, "the pool's state counts chunks in 16 bits"
    run = _declare(b.module, "graphc_pool_run", RUN_TYPE)
    chunk = chunk_function(part, split)
    with b.goto_entry_block():
        context = b.alloca(ir.ArrayType(PTR, len(pointers)), name="chunk.context")
    for i, pointer in enumerate(pointers):
        b.store(pointer, b.gep(context, [I64(0), I64(i)], inbounds=True))
    b.call(run, [chunk, context, I64(len(split.chunks)), I64(threads)])


# ---- emission: the pool ----

SPIN_CYCLES = 100_000  # ~50 us of time-stamp counter: an idle worker spins this long, then sleeps
WAIT_SPIN_CYCLES = 200_000  # a caller waiting for chunks spins ~100 us, then sleeps
SYS_FUTEX, FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE = 202, 128, 129
SYS_SETAFFINITY, SYS_GETAFFINITY, SYS_GETTID, SYS_GETCPU = 203, 204, 186, 309
MASK_WORDS = 16  # an affinity mask of up to 1024 CPUs
FIELD_BITS = 16  # state = generation << 32 | chunks << 16 | next chunk
FIELD_MASK = (1 << FIELD_BITS) - 1
POOL_SYMBOLS = ("graphc_pool_run", "graphc_pool_reset")


class _Pool:
    """The pool's globals (each on its own cache line) and its helpers, in one module."""

    def __init__(self, module: ir.Module):
        self.module = module
        self.state = self._global("state", I64)  # generation | chunks | next chunk
        self.done = self._global("done", I64)  # chunks of the current job finished
        self.job = self._global("job", ir.LiteralStructType([PTR, PTR]))  # chunk fn, context
        self.busy = self._global("busy", I32)  # a caller owns the job slot
        self.workers = self._global("workers", I64)  # threads started (under `busy`)
        self.wake = self._global("wake", I32)  # futex word: bumped for every job
        self.sleepers = self._global("sleepers", I32)  # workers in (or entering) futex_wait
        self.waiting = self._global("waiting", I32)  # the caller sleeps on `done`
        self.mask_type = ir.ArrayType(I64, MASK_WORDS)
        self.cpus = self._global("cpus", self.mask_type)  # the workers' affinity
        self.tids = self._global("tids", ir.ArrayType(I32, MAX_WORKERS))  # the workers' ids
        self.registered = self._global("registered", I32)  # tids recorded
        void = ir.FunctionType(VOID, [])
        self.pause = _declare(module, "llvm.x86.sse2.pause", void)
        self.clock = _declare(module, "llvm.readcyclecounter", ir.FunctionType(I64, []))
        self.syscall = _declare(module, "syscall", ir.FunctionType(I64, [I64], var_arg=True))

    def _global(self, name: str, type_: ir.Type) -> ir.GlobalVariable:
        variable = ir.GlobalVariable(self.module, type_, f"graphc_pool.{name}")
        variable.linkage = "internal"
        variable.initializer = ir.Constant(type_, None)
        variable.align = 64
        return variable

    def job_field(self, b: ir.IRBuilder, i: int) -> ir.Value:
        return b.gep(self.job, [I32(0), I32(i)], inbounds=True)

    def claimable(self, b: ir.IRBuilder, state: ir.Value) -> ir.Value:
        chunks = b.and_(b.lshr(state, I64(FIELD_BITS)), I64(FIELD_MASK))
        return b.icmp_unsigned("<", b.and_(state, I64(FIELD_MASK)), chunks)

    def next_generation(self, b: ir.IRBuilder) -> ir.Value:
        """The state's generation field for a new job (the caller holds the slot)."""
        generation = b.add(b.lshr(b.load(self.state, typ=I64), I64(32)), I64(1))
        return b.shl(generation, I64(32))

    def run_chunks(self) -> ir.Function:
        """`i64 run_chunks()`: claim chunks of the current job and run them until none is
        left; returns how many this thread ran."""
        function = ir.Function(self.module, ir.FunctionType(I64, []), "graphc_pool.run_chunks")
        function.linkage = "internal"
        b = ir.IRBuilder(function.append_basic_block("entry"))
        entry = b.block
        top, claim, run, out = map(function.append_basic_block, ("top", "claim", "run", "out"))
        b.branch(top)
        b.position_at_end(top)
        ran = b.phi(I64)
        ran.add_incoming(I64(0), entry)
        state = b.load_atomic(self.state, "acquire", 8, typ=I64)
        b.cbranch(self.claimable(b, state), claim, out)
        b.position_at_end(claim)
        # The claim names the job (generation) and its chunk count, so a stale claim fails:
        # a worker can never run a chunk of a job other than the one it read.
        swap = b.cmpxchg(self.state, state, b.add(state, I64(1)), "acquire", "monotonic")
        ran.add_incoming(ran, claim)
        b.cbranch(b.extract_value(swap, 1), run, top)
        b.position_at_end(run)
        # the job cannot finish (nor its slot be reused) before this chunk is counted done
        chunk = chunk_as_function(b.load(self.job_field(b, 0), typ=PTR))
        context = b.load(self.job_field(b, 1), typ=PTR)
        b.call(chunk, [context, b.and_(state, I64(FIELD_MASK))])
        b.atomic_rmw("add", self.done, I64(1), "seq_cst")  # the chunk's stores go with it
        waiting = b.load_atomic(self.waiting, "seq_cst", 4, typ=I32)
        with b.if_then(b.icmp_unsigned("!=", waiting, I32(0)), likely=False):
            self.futex(b, self.done, FUTEX_WAKE_PRIVATE, I64(1))
        ran.add_incoming(b.add(ran, I64(1)), b.block)
        b.branch(top)
        b.position_at_end(out)
        b.ret(ran)
        return function

    def futex(self, b: ir.IRBuilder, word, operation: int, value: ir.Value) -> None:
        """futex(word, operation, value): wait while the 32-bit `word` is `value`, or wake
        `value` waiters (a 64-bit counter's word is its low half: little-endian)."""
        b.call(self.syscall, [I64(SYS_FUTEX), word, I64(operation), value, I64(0)])

    def set_affinity(self, b: ir.IRBuilder, thread: ir.Value, mask: ir.Value) -> None:
        """sched_setaffinity(thread, mask) (thread 0: this one); a failure changes nothing."""
        size = I64(8 * MASK_WORDS)
        b.call(self.syscall, [I64(SYS_SETAFFINITY), b.zext(thread, I64), size, mask])

    def steer_sleepers(self, b: ir.IRBuilder) -> None:
        """Emit, in a caller about to wake sleeping workers: keep them off this CPU.

        Linux wakes a thread on its previous CPU if that one is idle, and otherwise often
        on the waker's, without looking for an idle CPU: a worker that once ran on the
        caller's CPU queues behind the caller at every later wake, for a time slice, while
        the caller computes the chunks alone. So the sleeping workers' affinity leaves out
        this CPU until they wake: each then returns to the set it started with (`cpus`, the
        affinity of the thread that started it). The count of sleepers does not say which
        workers sleep, so with several workers one still spinning is steered too and keeps
        that until its next sleep: harmless, as it may use every other CPU. Measurements:
        docs/performance.md, "Numbers moved out of the code: graphc/codegen/parallel.py"."""
        with b.goto_entry_block():
            cpu_slot = b.alloca(I32, name="cpu")
            others = b.alloca(self.mask_type, name="other.cpus")
        b.store(I32(-1), cpu_slot)
        null = ir.Constant(PTR, None)
        b.call(self.syscall, [I64(SYS_GETCPU), cpu_slot, null, null])
        cpu = b.load(cpu_slot, typ=I32)
        with b.if_then(b.icmp_unsigned("<", cpu, I32(64 * MASK_WORDS))):  # -1: no answer
            b.store(b.load(self.cpus, typ=self.mask_type), others)
            index = b.zext(cpu, I64)
            word = b.gep(others, [I64(0), b.lshr(index, I64(6))], inbounds=True)
            bit = b.shl(I64(1), b.and_(index, I64(63)))
            b.store(b.and_(b.load(word, typ=I64), b.not_(bit)), word)
            registered = b.zext(b.load_atomic(self.registered, "acquire", 4, typ=I32), I64)
            below = b.icmp_unsigned("<", registered, I64(MAX_WORKERS))
            workers = b.select(below, registered, I64(MAX_WORKERS))

            def steer(i):
                tid = b.load_atomic(b.gep(self.tids, [I64(0), i]), "monotonic", 4, typ=I32)
                with b.if_then(b.icmp_unsigned("!=", tid, I32(0))):  # 0 would be this thread
                    self.set_affinity(b, tid, others)  # an empty set (one CPU): EINVAL

            _counted(b, workers, steer)

    def wait_until(self, b: ir.IRBuilder, ready, spin: int, idle) -> None:
        """Emit: until ready(b) is true, `pause` for `spin` clock cycles, then idle(b) each turn."""
        function = b.function
        top, turn, out = map(function.append_basic_block, ("wait", "spin", "ready"))
        start = b.call(self.clock, [])
        b.branch(top)
        b.position_at_end(top)
        b.cbranch(ready(b), out, turn)
        b.position_at_end(turn)
        spinning = b.icmp_unsigned("<", b.sub(b.call(self.clock, []), start), I64(spin))
        with b.if_else(spinning, likely=True) as (then, otherwise):
            with then:
                b.call(self.pause, [])
            with otherwise:
                idle(b)
        b.branch(top)
        b.position_at_end(out)


def pool_module() -> ir.Module:
    """The thread pool as a module of its own: the JIT loads it once per process, an AOT
    export links it into its object."""
    module = ir.Module("graphc_pool")
    emit_pool(module)
    return module


def emit_pool(module: ir.Module) -> None:
    """Define the thread pool in `module`: `graphc_pool_run`, `graphc_pool_reset`, a worker.

        graphc_pool_run(chunk, context, chunks, threads)
            chunk(context, i) for i < chunks, shared between the caller and the workers:
            take the job slot (if another caller holds it, run every chunk here instead),
            start workers up to threads - 1, publish the job in `state`, wake sleepers
            (steered off this CPU), claim and run chunks, wait until every chunk is done
            (spin WAIT_SPIN_CYCLES, then futex_wait on `done`), free the slot.
        worker
            claim and run chunks; with none to claim, spin SPIN_CYCLES, then futex_wait
            until the next job bumps `wake`, then return to its own affinity.
        graphc_pool_reset()
            in a forked child: no workers, no job, slot free (the threads were not copied).

    Workers are process-wide and never exit (an idle one sleeps in the kernel). A caller
    never waits for a worker, only for chunks a worker has claimed: a worker that starts late,
    or never, leaves its chunks to the caller. No lost wake-up: a caller bumps `wake`, then
    reads `sleepers`; a worker reads `wake`, counts itself in `sleepers`, re-reads `state`
    and sleeps only while `wake` is unchanged (all sequentially consistent).
    """
    pool = _Pool(module)
    run_chunks = pool.run_chunks()
    create = _declare(module, "pthread_create", ir.FunctionType(I32, [PTR, PTR, PTR, PTR]))
    detach = _declare(module, "pthread_detach", ir.FunctionType(I32, [I64]))

    # the worker
    worker = ir.Function(module, ir.FunctionType(PTR, [PTR]), "graphc_pool.worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    tid = b.trunc(b.call(pool.syscall, [I64(SYS_GETTID)]), I32)
    slot = b.atomic_rmw("add", pool.registered, I32(1), "acq_rel")
    with b.if_then(b.icmp_unsigned("<", slot, I32(MAX_WORKERS))):
        b.store_atomic(tid, b.gep(pool.tids, [I64(0), b.zext(slot, I64)]), "monotonic", 4)
    top = worker.append_basic_block("top")
    b.branch(top)
    b.position_at_end(top)
    b.call(run_chunks, [])

    def job_waiting(b):
        return pool.claimable(b, b.load_atomic(pool.state, "acquire", 8, typ=I64))

    def sleep(b):
        wake = b.load_atomic(pool.wake, "seq_cst", 4, typ=I32)
        b.atomic_rmw("add", pool.sleepers, I32(1), "seq_cst")
        state = b.load_atomic(pool.state, "seq_cst", 8, typ=I64)
        with b.if_then(b.not_(pool.claimable(b, state))):
            pool.futex(b, pool.wake, FUTEX_WAIT_PRIVATE, b.zext(wake, I64))
        b.atomic_rmw("sub", pool.sleepers, I32(1), "seq_cst")
        pool.set_affinity(b, I32(0), pool.cpus)  # undo a waker's steering (see steer_sleepers)
        b.branch(top)  # the spin budget starts again after every sleep
        b.position_at_end(b.function.append_basic_block("unreachable"))

    pool.wait_until(b, job_waiting, SPIN_CYCLES, sleep)
    b.branch(top)

    # the caller
    run = _declare(module, "graphc_pool_run", RUN_TYPE)
    chunk, context, chunks, threads = run.args
    b = ir.IRBuilder(run.append_basic_block("entry"))
    alone = run.append_basic_block("alone")
    shared = b.or_(b.icmp_unsigned("<=", threads, I64(1)), b.icmp_unsigned("<=", chunks, I64(1)))
    with b.if_then(b.not_(shared), likely=True):
        taken = b.cmpxchg(pool.busy, I32(0), I32(1), "acquire", "monotonic")
        with b.if_then(b.extract_value(taken, 1), likely=True):
            _start_workers(b, pool, create, detach, worker, b.sub(threads, I64(1)))
            b.store(chunk, pool.job_field(b, 0))
            b.store(context, pool.job_field(b, 1))
            b.store_atomic(I64(0), pool.done, "monotonic", 8)
            state = b.or_(pool.next_generation(b), b.shl(chunks, I64(FIELD_BITS)))
            b.store_atomic(state, pool.state, "seq_cst", 8)
            b.atomic_rmw("add", pool.wake, I32(1), "seq_cst")
            sleeping = b.load_atomic(pool.sleepers, "seq_cst", 4, typ=I32)
            with b.if_then(b.icmp_unsigned("!=", sleeping, I32(0))):
                pool.steer_sleepers(b)
                pool.futex(b, pool.wake, FUTEX_WAKE_PRIVATE, I64(2**31 - 1))
            b.call(run_chunks, [])

            def finished(b):
                done = b.load_atomic(pool.done, "acquire", 8, typ=I64)
                return b.icmp_unsigned(">=", done, chunks)

            def sleep(b):  # the core goes idle, so the scheduler can move a worker onto it
                b.store_atomic(I32(1), pool.waiting, "seq_cst", 4)
                done = b.load_atomic(pool.done, "seq_cst", 8, typ=I64)
                with b.if_then(b.icmp_unsigned("<", done, chunks)):
                    low = b.zext(b.trunc(done, I32), I64)
                    pool.futex(b, pool.done, FUTEX_WAIT_PRIVATE, low)
                b.store_atomic(I32(0), pool.waiting, "monotonic", 4)

            pool.wait_until(b, finished, WAIT_SPIN_CYCLES, sleep)
            b.store_atomic(I32(0), pool.busy, "release", 4)
            b.ret_void()
    b.branch(alone)
    b.position_at_end(alone)  # one thread, one chunk, or the slot is taken: run them all here
    _counted(b, chunks, lambda i: b.call(chunk_as_function(chunk), [context, i]))
    b.ret_void()

    # after fork(), in the child
    reset = _declare(module, "graphc_pool_reset", ir.FunctionType(VOID, []))
    b = ir.IRBuilder(reset.append_basic_block("entry"))
    b.store(pool.next_generation(b), pool.state)  # no chunk left to claim
    for variable, type_ in ((pool.done, I64), (pool.workers, I64)):
        b.store(type_(0), variable)
    for variable in (pool.busy, pool.sleepers, pool.waiting, pool.registered):
        b.store(I32(0), variable)
    b.ret_void()


class chunk_as_function:
    """A pointer to a chunk function as a call target (llvmlite reads a callee's type from
    its pointee, which an opaque pointer does not have)."""

    function_type = CHUNK_TYPE
    type = PTR

    def __init__(self, pointer: ir.Value):
        self.pointer = pointer

    def get_reference(self) -> str:
        return self.pointer.get_reference()


def _counted(b: ir.IRBuilder, count: ir.Value, body) -> None:
    """Emit: for i in range(count): body(i)  (count >= 0)."""
    function = b.function
    before = b.block
    top, inside, out = map(function.append_basic_block, ("for", "for.body", "for.end"))
    b.branch(top)
    b.position_at_end(top)
    i = b.phi(I64)
    i.add_incoming(I64(0), before)
    b.cbranch(b.icmp_unsigned("<", i, count), inside, out)
    b.position_at_end(inside)
    body(i)
    i.add_incoming(b.add(i, I64(1)), b.block)
    b.branch(top)
    b.position_at_end(out)


def _start_workers(b, pool: _Pool, create, detach, worker, wanted: ir.Value) -> None:
    """Emit: start workers until there are `wanted` (the caller holds the slot); stop at the
    first pthread_create that fails."""
    function = b.function
    top, start, out = map(function.append_basic_block, ("workers", "workers.start", "workers.ok"))
    with b.goto_entry_block():
        handle = b.alloca(I64, name="worker.handle")
    b.branch(top)
    b.position_at_end(top)
    started = b.load(pool.workers, typ=I64)
    b.cbranch(b.icmp_unsigned("<", started, wanted), start, out)
    b.position_at_end(start)
    # a new thread inherits this one's affinity: the set a worker returns to after a wake
    b.call(pool.syscall, [I64(SYS_GETAFFINITY), I64(0), I64(8 * MASK_WORDS), pool.cpus])
    status = b.call(create, [handle, ir.Constant(PTR, None), worker, ir.Constant(PTR, None)])
    with b.if_then(b.icmp_signed("==", status, I32(0)), likely=True):
        b.call(detach, [b.load(handle, typ=I64)])
        b.store(b.add(started, I64(1)), pool.workers)
        b.branch(top)
        b.position_at_end(function.append_basic_block("unreachable"))
    b.branch(out)
    b.position_at_end(out)
