"""The machine the suite runs on: the timed process's environment, NumPy's BLAS, the FMA peak.

Environment. OpenBLAS reads OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE once, when it loads: a
machine that presets them to a conservative kernel handicaps NumPy for the whole process.
Idle worker pools must sleep instead of spinning on the cores the next peer is timed on
(PyTorch's OpenMP workers and OpenBLAS's threads read QUIET_POOLS when they load). So the
timed process starts with `timed_environment(os.environ)`: `graphc bench` re-runs itself in
a subprocess with it, and the micro-benchmark scripts apply it before importing NumPy. This
module imports neither NumPy nor graphc at load, so that a script can do that.

Peak. `fma_peak(bits)` JIT-compiles a loop of independent vector FMA chains (`llvm.fma` on
8 or 16 floats: one ymm or zmm register) and times it: the most floating-point work one core
can do, against which the GFLOP/s of the matmul rows are read.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Mapping

QUIET_POOLS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
CHAINS = 12  # independent accumulators: more than FMA latency × FMA ports on current x86
NO_AVX512 = "n/a (no AVX-512 on this host)"


# ---- environment ----------------------------------------------------------------------------


def timed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with quiet worker pools (unless set already) and OpenBLAS's own kernel choice."""
    environment = {k: v for k, v in environ.items() if k not in BLAS_OVERRIDES}
    return {**QUIET_POOLS, **environment}


def prepare_timed_process() -> None:
    """Make this process's environment the timed one; call it before NumPy is imported."""
    environment = timed_environment(os.environ)
    for name in set(os.environ) - set(environment):
        del os.environ[name]
    os.environ.update(environment)


# ---- NumPy's BLAS ---------------------------------------------------------------------------


def blas_info() -> list[dict] | None:
    """The BLAS libraries loaded in this process, as threadpoolctl sees them (None: it is not
    installed). Import NumPy first: only loaded libraries are listed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("internal_api", "version", "architecture", "num_threads")
    return [{k: i.get(k) for k in keys} for i in threadpool_info() if i["user_api"] == "blas"]


def describe_blas(blas: list[dict] | None) -> str:
    """One line naming NumPy's BLAS kernel."""
    if blas is None:
        return ("NumPy's BLAS: threadpoolctl is not installed, so its kernel is not known and its "
                "threads not held (pip install threadpoolctl)")  # fmt: skip
    if not blas:
        return "NumPy's BLAS: none found by threadpoolctl"
    return "NumPy's BLAS: " + "; ".join(
        f"{b['internal_api']} {b['version']}, kernel {b['architecture']}, "
        f"{b['num_threads']} threads by default"
        for b in blas
    )


# ---- FMA peak -------------------------------------------------------------------------------


def _fma_loop_ir(lanes: int, chains: int = CHAINS) -> str:
    """void fma_loop(i64 n, ptr out): `chains` accumulators a = fma(a, x, y), n times each."""
    vector = f"<{lanes} x float>"
    splat = lambda value: f"<{', '.join([f'float {value}'] * lanes)}>"
    lines = [
        f"declare {vector} @llvm.fma.v{lanes}f32({vector}, {vector}, {vector})",
        "",
        # states that the code needs 512-bit vectors whole where the CPU prefers 256-bit ones
        f'define void @fma_loop(i64 %n, ptr %out) "min-legal-vector-width"="{lanes * 32}" {{',
        "entry:",
        "  br label %loop",
        "loop:",
        "  %i = phi i64 [ 0, %entry ], [ %next, %loop ]",
    ]
    for c in range(chains):
        start = splat(f"{c + 3}.0")  # not 2.0: a chain at its fixed point is folded away
        lines.append(f"  %a{c} = phi {vector} [ {start}, %entry ], [ %b{c}, %loop ]")
    # x = 0.5, y = 1.0: each chain converges to 2.0 (no overflow, no denormals)
    for c in range(chains):
        lines.append(
            f"  %b{c} = call {vector} @llvm.fma.v{lanes}f32({vector} %a{c}, "
            f"{vector} {splat('5.0e-01')}, {vector} {splat('1.0')})"
        )
    lines += [
        "  %next = add i64 %i, 1",
        "  %more = icmp ult i64 %next, %n",
        "  br i1 %more, label %loop, label %exit",
        "exit:",
    ]
    total = "%b0"
    for c in range(1, chains):
        lines.append(f"  %s{c} = fadd {vector} {total}, %b{c}")
        total = f"%s{c}"
    lines += [f"  store {vector} {total}, ptr %out, align 4", "  ret void", "}"]
    return "\n".join(lines) + "\n"


def has_avx512() -> bool:
    import llvmlite.binding as llvm

    return bool(llvm.get_host_cpu_features().get("avx512f", False))


def fma_peak(bits: int = 256, threads: int = 1, seconds: float = 0.02, runs: int = 7) -> float:
    """Measured float32 GFLOP/s of `threads` threads each running `bits`-wide FMA chains (the
    best of `runs` runs of about `seconds`: on a shared machine, the least disturbed). float64
    is half. Never call it with bits=512 where `has_avx512()` is false: the instructions do
    not exist there."""
    from graphc.runtime import jit

    lanes = bits // 32
    engine = jit.compile_ir(_fma_loop_ir(lanes), opt=2, cache=False)
    loop = jit.function(engine, "fma_loop", None, ctypes.c_int64, ctypes.c_void_p)
    outs = [(ctypes.c_float * lanes)() for _ in range(threads)]
    flops_per_iteration = 2 * lanes * CHAINS

    def run(iterations: int) -> float:  # wall seconds for every thread's `iterations`
        barrier = threading.Barrier(threads + 1)

        def work(out):
            barrier.wait()
            loop(iterations, ctypes.addressof(out))  # ctypes releases the GIL

        workers = [threading.Thread(target=work, args=(out,)) for out in outs]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start

    iterations = 10_000
    while (elapsed := run(iterations)) < seconds / 4:
        iterations *= 4
    iterations = max(1, int(iterations * seconds / elapsed))
    best = min(run(iterations) for _ in range(runs))
    return flops_per_iteration * iterations * threads / best / 1e9


def fma_peaks(threads: int) -> dict:
    """Float32 GFLOP/s of ymm and zmm FMA, per thread and for `threads` threads (zmm: None on
    a CPU without AVX-512)."""
    peaks = {"threads": threads}
    for name, bits in (("ymm", 256), ("zmm", 512)):
        if bits == 512 and not has_avx512():
            peaks[name] = None
            continue
        one = fma_peak(bits)
        peaks[name] = {"per_thread": one, "all_threads": fma_peak(bits, threads) if threads > 1
                       else one}  # fmt: skip
    return peaks


def describe_peaks(peaks: dict) -> str:
    """One line: the measured FMA peak of both vector widths."""
    cells = []
    for name, bits in (("ymm", 256), ("zmm", 512)):
        peak = peaks.get(name)
        if peak is None:
            cells.append(f"{bits}-bit ({name}) {NO_AVX512}")
            continue
        cell = f"{bits}-bit ({name}) {peak['per_thread']:.1f} per thread"
        if peaks["threads"] > 1:
            cell += f", {peak['all_threads']:.1f} on {peaks['threads']} threads"
        cells.append(cell)
    return "FMA peak, float32 GFLOP/s (float64: half), measured: " + "; ".join(cells)


def best_peak(peaks: dict) -> float | None:
    """Float32 GFLOP/s of the widest FMA on the bench's threads: the per-thread peak times the
    thread count (FMA units are per core; the measured total drops whenever another process
    takes a core, which on a shared machine says more about the other process)."""
    found = [p["per_thread"] * peaks["threads"] for p in (peaks.get("ymm"), peaks.get("zmm")) if p]
    return max(found, default=None)


# ---- everything -----------------------------------------------------------------------------


def machine_info(versions: dict, peer_threads) -> dict:
    """CPU, core count, the versions of everything measured, NumPy's BLAS and the FMA peak."""
    import llvmlite
    import llvmlite.binding as llvm
    import numpy as np

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "llvm_cpu": llvm.get_host_cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "torch": versions.get("torch"),
        "jax": versions.get("jax"),
        "blas": blas_info(),
        "blas_overrides": {k: os.environ[k] for k in BLAS_OVERRIDES if k in os.environ},
        "fma_peak": fma_peaks(peer_threads or os.cpu_count() or 1),
        "peer_threads": peer_threads or "library defaults",
    }
