"""Micro-benchmark of graphc's generated matmul kernels against numpy (OpenBLAS).

Run: python bench/matmul_micro.py [--quick]

Columns (GFLOP/s, higher is better; 2*m*n*k*batch flops per call):
  raw    the kernel called in a native loop (no Python in the measurement)
  call   one ctypes call per matmul from Python (pointers pre-bound, like graphc's runtime)
  np1    numpy.matmul(a, b, out=c) with OPENBLAS_NUM_THREADS=1 (this process)
  npN    the same with OpenBLAS's default thread count (measured in a subprocess)
  raw/np1, call/np1: ratios; the targets are >= 1.5 at n <= 64 and >= 0.8 at n >= 256.
NumPy loads its OpenBLAS in the environment `graphc bench` times it in (bench/host.py): idle
pools asleep, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench import host  # noqa: E402 (imports no NumPy)

host.prepare_timed_process()  # before NumPy is imported
if "--numpy-default-threads" not in sys.argv:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

import ctypes  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# (label, m, n, k, dtype, transpose_a, transpose_b): A is (m,k), B is (k,n); a transposed
# operand is stored as its transpose and read through strides.
SQUARE = [
    (f"{n}^3", n, n, n, d, False, False)
    for d in ("float32", "float64")
    for n in (32, 64, 128, 256, 512, 1024)
]
MLP = [
    ("(256,64)T@(256,256)", 64, 256, 256, "float32", True, False),
    ("(64,256)@(256,256)T", 64, 256, 256, "float32", False, True),
    ("(256,256)@(256,1)", 256, 1, 256, "float32", False, False),
    ("(256,256)T@(256,1)", 256, 1, 256, "float32", True, False),
    ("32x5 @ 5x32", 32, 32, 5, "float32", False, False),
    ("32x32 @ 32x16", 32, 16, 32, "float32", False, False),
    ("32x16 @ 16x1", 32, 1, 16, "float32", False, False),
    ("(32,5)T@(32,32)", 5, 32, 32, "float32", True, False),
    ("(32,32)T@(32,16)", 32, 16, 32, "float32", True, False),
    ("32x16 @ (32,16)T", 32, 32, 16, "float32", False, True),
    ("(32,16)T@(32,1)", 16, 1, 32, "float32", True, False),
    ("32x1 @ (16,1)T", 32, 16, 1, "float32", False, True),
]


def best_seconds(fn, budget: float = 0.15, repeats: int = 7, clock=time.thread_time) -> float:
    """Minimum per-call time over `repeats` batches sized to take about budget/repeats.

    Single-threaded timings use the calling thread's CPU time, which does not count time the
    thread spends descheduled on this shared 2-core host (wall time made them swing 3x).
    """
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.01:
        fn()
        calls += 1
    per_batch = max(1, int(calls * budget / repeats / 0.01))
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for _ in range(per_batch):
            fn()
        best = min(best, (clock() - start) / per_batch)
    return best


def operands(m, n, k, dtype, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    stored_a = np.ascontiguousarray(a.T) if ta else a
    stored_b = np.ascontiguousarray(b.T) if tb else b
    return a, b, stored_a, stored_b


def numpy_seconds(case, clock=time.thread_time) -> float:
    _, m, n, k, dtype, ta, tb = case
    _, _, stored_a, stored_b = operands(m, n, k, dtype, ta, tb)
    view_a = stored_a.T if ta else stored_a
    view_b = stored_b.T if tb else stored_b
    out = np.empty((m, n), dtype)
    return best_seconds(lambda: np.matmul(view_a, view_b, out=out), clock=clock)


def graphc_seconds(case) -> tuple[float, float, float]:
    """(raw kernel seconds, ctypes call seconds, max relative error) for one case."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    from graphc.codegen.matmul import Operand, define_matmul

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    _, m, n, k, dtype, ta, tb = case
    module = ir.Module("bench")
    module.triple = llvm.get_process_triple()
    kernel = define_matmul(
        module, "matmul", m=m, n=n, k=k, dtype=dtype,
        a=Operand((1, m) if ta else (k, 1)), b=Operand((1, k) if tb else (n, 1)),
        c=Operand((n, 1)),
    )  # fmt: skip
    kernel.attributes.add("noinline")
    i64, ptr = ir.IntType(64), ir.PointerType()
    repeat = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64]), "repeat")
    entry, body, done = (repeat.append_basic_block(x) for x in ("entry", "body", "done"))
    builder = ir.IRBuilder(entry)
    builder.branch(body)
    builder.position_at_end(body)
    index = builder.phi(i64)
    index.add_incoming(ir.Constant(i64, 0), entry)
    builder.call(kernel, repeat.args[:3])
    step = builder.add(index, ir.Constant(i64, 1))
    index.add_incoming(step, body)
    builder.cbranch(builder.icmp_unsigned("<", step, repeat.args[3]), body, done)
    builder.position_at_end(done)
    builder.ret_void()

    def machine():
        target = llvm.Target.from_default_triple()
        features = llvm.get_host_cpu_features().flatten()
        return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=3)

    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    tm = machine()
    passes = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(parsed, passes)
    engine = llvm.create_mcjit_compiler(parsed, machine())
    engine.finalize_object()
    p = ctypes.c_void_p
    call = ctypes.CFUNCTYPE(None, p, p, p)(engine.get_function_address("matmul"))
    loop = ctypes.CFUNCTYPE(None, p, p, p, ctypes.c_int64)(engine.get_function_address("repeat"))

    a, b, stored_a, stored_b = operands(m, n, k, dtype, ta, tb)
    out = np.zeros((m, n), dtype)
    pc, pa, pb = out.ctypes.data, stored_a.ctypes.data, stored_b.ctypes.data
    call(pc, pa, pb)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    error = float(np.abs(out - expected).max() / max(np.abs(expected).max(), 1e-30))
    once = best_seconds(lambda: call(pc, pa, pb))
    iterations = max(1, int(2e-3 / once))
    raw = best_seconds(lambda: loop(pc, pa, pb, iterations)) / iterations
    return raw, once, error, engine


def main() -> None:
    if "--numpy-default-threads" in sys.argv:
        cases = json.loads(sys.stdin.read())
        print(json.dumps([numpy_seconds(c, clock=time.perf_counter) for c in cases]))
        return
    cases = SQUARE + MLP
    if "--quick" in sys.argv:
        cases = [c for c in cases if c[1] <= 256]
    child = subprocess.run(
        [sys.executable, __file__, "--numpy-default-threads"],
        input=json.dumps(cases), capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"},
    )  # fmt: skip
    default_threads = json.loads(child.stdout)
    header = (
        f"{'case':22} {'dtype':7} {'raw':>7} {'call':>7} {'np1':>7} {'npN':>7} "
        f"{'raw/np1':>7} {'call/np1':>8} {'raw us':>8} {'call us':>8} {'np1 us':>8}"
    )
    print(header)
    print("-" * len(header))
    for case, numpy_default in zip(cases, default_threads, strict=True):
        label, m, n, k, dtype = case[:5]
        flops = 2.0 * m * n * k
        raw, call, error, _engine = graphc_seconds(case)
        single = numpy_seconds(case)
        assert error < (1e-4 if dtype == "float32" else 1e-10), (label, error)
        gflops = [flops / s / 1e9 for s in (raw, call, single, numpy_default)]
        print(
            f"{label:22} {dtype:7} " + " ".join(f"{g:7.1f}" for g in gflops)
            + f" {single / raw:7.2f} {single / call:8.2f}"
            + f" {raw * 1e6:8.2f} {call * 1e6:8.2f} {single * 1e6:8.2f}"
        )  # fmt: skip


if __name__ == "__main__":
    main()
