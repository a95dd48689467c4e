"""Threads for large kernels (codegen/parallel.py): the split code computes what one thread does.

Each program is compiled with GRAPHC_THREADS=1 and =2 (the count is compiled in and part of
the cache key) and the results compared: bit for bit where every element is computed by the
same code (loops, row-wise kernels, reductions by rows), and to rounding for matmuls, whose
chunks are separate instantiations of the generated matmul.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import llvmlite.binding as llvm
import numpy as np
import pytest

import graphc as gc
from graphc.codegen import parallel, split
from graphc.errors import CompileError
from graphc.runtime import aot, jit

GCC = shutil.which("gcc")


def compiled(program, threads: int, monkeypatch):
    monkeypatch.setenv("GRAPHC_THREADS", str(threads))
    return gc.compile(program)


POOL_CALL = 'call void @"graphc_pool_run"'


def both(program, monkeypatch):
    """The program compiled for one thread and for two; the latter must use the pool."""
    one, two = compiled(program, 1, monkeypatch), compiled(program, 2, monkeypatch)
    assert "graphc_pool_run" not in one.dump("llvm")
    assert POOL_CALL in two.dump("llvm")
    return one, two


def chain(n: int, dtype: str, name="chain"):
    """W3: tanh(a*b + c)*sigmoid(d) - 0.5*a over n elements, and its inputs."""
    a, b, c, d = (gc.input(x, (n,), dtype=dtype) for x in "abcd")
    program = gc.Program([a, b, c, d], gc.tanh(a * b + c) * gc.sigmoid(d) - 0.5 * a, name=name)
    rng = np.random.default_rng(0)
    return program, [rng.normal(size=n).astype(dtype) for _ in range(4)]


# ---- the thread count and the chunks ----


def test_thread_count_from_environment(monkeypatch):
    monkeypatch.setenv("GRAPHC_THREADS", "3")
    assert parallel.thread_count() == 3
    monkeypatch.delenv("GRAPHC_THREADS")
    assert 1 <= parallel.thread_count() <= parallel.MAX_THREADS
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("GRAPHC_THREADS", bad)
        with pytest.raises(CompileError, match="GRAPHC_THREADS"):
            parallel.thread_count()


def test_chunks_cover_the_rows_once():
    assert split.chunks(10, 2) == ((0, 5), (5, 10))
    assert split.chunks(100, 2, unit=64) == ((0, 64), (64, 100))
    assert split.chunks(7, 3) == ((0, 3), (3, 6), (6, 7))
    for rows, threads, unit in [(1000003, 2, 64), (301, 2, 12), (5, 8, 1), (97, 3, 4)]:
        cut = split.chunks(rows, threads, unit)
        assert len(cut) <= threads and cut[0][0] == 0 and cut[-1][1] == rows
        assert all(e0 == s1 for (_, e0), (s1, _) in zip(cut, cut[1:]))
        assert all((e - s) % unit == 0 for s, e in cut[:-1])


def test_small_kernels_stay_on_one_thread(monkeypatch):
    program, _ = chain(2_000, "float32")
    assert "graphc_pool" not in compiled(program, 2, monkeypatch).dump("llvm")


# ---- results equal one thread's ----


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_chain_bit_identical(dtype, monkeypatch):
    program, values = chain(10**6 + 3, dtype)  # the last chunk is not whole vectors
    one, two = both(program, monkeypatch)
    np.testing.assert_array_equal(two(*values), one(*values))


def test_rowwise_and_reductions_bit_identical(monkeypatch):
    x = gc.input("x", (4001, 301), dtype="float64")
    outputs = [gc.softmax(x), x.sum(axis=1), gc.exp(x).max(axis=0), gc.log_softmax(x)]
    program = gc.Program([x], outputs, name="rows")
    one, two = both(program, monkeypatch)
    value = np.random.default_rng(1).normal(size=x.shape)
    for got, expected in zip(two(value), one(value)):
        np.testing.assert_array_equal(got, expected)


def test_reductions_by_rows_split_bit_identical(monkeypatch):
    """Row-order reductions (forms.by_rows) split over their outer axis, or without one over
    their blocks of accumulators; every output still adds its inputs in order."""
    x = gc.input("x", (64, 5000), dtype="float32")  # 10 blocks of 500 columns
    y = gc.input("y", (40, 300, 64), dtype="float64")  # 40 outer rows
    program = gc.Program([x, y], [gc.exp(x).sum(axis=0), (y * y).sum(axis=1)], name="by_rows")
    one, two = both(program, monkeypatch)
    assert two.dump("llvm").count(POOL_CALL) == 2
    rng = np.random.default_rng(3)
    value_x, value_y = rng.normal(size=x.shape).astype("float32"), rng.normal(size=y.shape)
    for got, expected in zip(two(value_x, value_y), one(value_x, value_y)):
        np.testing.assert_array_equal(got, expected)
    # y * y + acc may contract to an FMA: to rounding, not bit for bit, NumPy's
    np.testing.assert_allclose(two(value_x, value_y)[1], (value_y * value_y).sum(axis=1), 1e-14)


@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("shape", [(512, 512, 512), (601, 263, 517)])
def test_matmul_split_equals_unsplit(dtype, rtol, shape, monkeypatch):
    m, k, n = shape
    a, b = gc.input("a", (m, k), dtype=dtype), gc.input("b", (k, n), dtype=dtype)
    bias = gc.input("bias", (n,), dtype=dtype)
    program = gc.Program([a, b, bias], [a @ b, gc.relu(a @ b + bias)], name="mm")
    one, two = both(program, monkeypatch)
    # the chunks differ in length (258 + 254, 306 + 295 rows): one function takes the count
    ir_text = two.dump("llvm")
    assert '.matmul.rows"' in ir_text and not re.search(r"\.matmul\.rows\d", ir_text)
    rng = np.random.default_rng(2)
    values = [rng.uniform(-1, 1, s).astype(dtype) for s in ((m, k), (k, n), (n,))]
    for got, expected in zip(two(*values), one(*values)):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(two(*values)[0], values[0] @ values[1], rtol=rtol * 10, atol=rtol)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_with_few_rows_split_by_columns(dtype, transposed, monkeypatch):
    """x @ W^T + b (B packed) or x @ W + b (B read in place) with 64 rows: each chunk reads
    only its own columns of B, and its epilogue runs over those columns; the same bits as
    one thread."""
    m, k, n = 64, 128, 512
    shape = (n, k) if transposed else (k, n)
    x, w = gc.input("x", (m, k), dtype=dtype), gc.input("w", shape, dtype=dtype)
    bias = gc.input("bias", (n,), dtype=dtype)
    weight = w.T if transposed else w
    program = gc.Program([x, w, bias], gc.relu(x @ weight + bias), name="columns")
    one, two = both(program, monkeypatch)
    ir_text = two.dump("llvm")
    assert ".matmul.columns" in ir_text and ".matmul.rows" not in ir_text
    rng = np.random.default_rng(4)
    values = [rng.uniform(-1, 1, s).astype(dtype) for s in ((m, k), shape, (n,))]
    np.testing.assert_array_equal(two(*values), one(*values))
    matrix = values[1].T if transposed else values[1]
    expected = np.maximum(values[0] @ matrix + values[2], 0)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(two(*values), expected, rtol=tolerance, atol=tolerance)


def test_training_step_with_threads_matches_one_thread(monkeypatch):
    """Like W1-B, wider: split matmuls with epilogues, reduction stages after the chunks."""
    steps = []
    for threads in (1, 2):
        x = gc.input("x", (512, 64), dtype="float64")
        y = gc.input("y", (512, 1), dtype="float64")
        model = gc.nn.MLP(512, 3, 1, seed=0, dtype="float64", name="mlp")
        loss = gc.nn.mse_loss(model(x), y)
        updates = gc.optim.Adam(model.params(), lr=1e-3).updates(loss)
        steps.append((compiled(gc.Program([x, y], loss, updates), threads, monkeypatch), model))
    assert POOL_CALL in steps[1][0].dump("llvm")
    rng = np.random.default_rng(3)
    for _ in range(3):
        xv = rng.uniform(-1, 1, (512, 64))
        yv = xv.max(axis=1, keepdims=True)
        losses = [step(xv, yv) for step, _ in steps]
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)
    for p1, p2 in zip(steps[0][1].params(), steps[1][1].params()):
        np.testing.assert_allclose(p2.value, p1.value, rtol=1e-10, atol=1e-12)


def test_matmul_operand_updated_in_place_stays_whole(monkeypatch):
    """w <- w - 0.01 (x @ w) may be written over w: a chunk would read rows another wrote."""
    results = []
    for threads in (1, 2):
        w = gc.param("w", np.random.default_rng(4).normal(size=(384, 384)))
        x = gc.input("x", (384, 384), dtype="float64")
        step = compiled(
            gc.Program([x], (x @ w).sum(), {w: w - 0.01 * (x @ w)}), threads, monkeypatch
        )
        xv = np.random.default_rng(5).normal(size=(384, 384)) / 384
        expected = w.value - 0.01 * (xv @ w.value)
        step(xv)
        np.testing.assert_allclose(w.value, expected, rtol=1e-12, atol=1e-12)
        results.append(w.value.copy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-12, atol=1e-12)


def test_concurrent_calls_from_python_threads(monkeypatch):
    """Calls from 8 Python threads: one at a time shares the pool, the others run their
    chunks on their own thread."""
    program, _ = chain(1 << 19, "float32")
    step = compiled(program, 2, monkeypatch)
    assert POOL_CALL in step.dump("llvm")
    rng = np.random.default_rng(6)
    feeds = [[rng.normal(size=1 << 19).astype(np.float32) for _ in range(4)] for _ in range(8)]
    expected = [step(*f) for f in feeds]
    failures = []

    def work(i):
        for _ in range(10):
            if not np.array_equal(step(*feeds[i]), expected[i]):
                failures.append(i)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert failures == []


# ---- AOT ----

C_MAIN = r"""#include <stdio.h>
#include <stdlib.h>
#include "chain.h"
%(extra)s
int main(void) {
    enum { N = %(n)d };
    float *in[4], *out = malloc(N * sizeof(float));
    for (int k = 0; k < 4; k++) {
        in[k] = malloc(N * sizeof(float));
        for (int i = 0; i < N; i++) in[k][i] = (float)((i * (k + 3)) %% 1001 - 500) / 256.0f;
    }
    void *mem = aligned_alloc(64, chain_mem_size() + 64);
    chain_init(mem);
    chain_run(mem, in[0], in[1], in[2], in[3], out);
    FILE *f = fopen("out.bin", "wb");
    fwrite(out, sizeof(float), N, f);
    fclose(f);
    return 0;
}
"""
# pthread_create that always fails (the program's definition wins over libc's): the code must
# then run every chunk on the calling thread
FAILING_CREATE = r"""#include <errno.h>
#include <pthread.h>
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *x) {
    (void)t; (void)a; (void)f; (void)x;
    return EAGAIN;
}
"""


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("failing", [False, True], ids=["threads", "no-threads"])
def test_aot_export_with_threads_runs_from_c(tmp_path, failing, monkeypatch):
    n = 400_001
    program, _ = chain(n, "float32")
    step = compiled(program, 2, monkeypatch)
    paths = gc.aot.export(step, tmp_path, name="chain")
    externals = aot.external_symbols(paths.object.read_bytes())
    assert {"pthread_create", "pthread_detach", "syscall"} <= set(externals)
    assert not any(name.startswith("graphc_pool") for name in externals)
    assert "-pthread" in paths.header.read_text()
    source = C_MAIN % {"n": n, "extra": FAILING_CREATE if failing else ""}
    (tmp_path / "main.c").write_text(source)
    command = [GCC, "-O1", "-Wall", "-Werror", "-std=c11", f"-I{tmp_path}", "-o", "main"]
    command += ["main.c", str(paths.object), "-lm", "-pthread"]
    built = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    subprocess.run(["./main"], cwd=tmp_path, check=True)
    i = np.arange(n)
    values = [((i * (k + 3)) % 1001 - 500).astype(np.float32) / np.float32(256) for k in range(4)]
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.bin", np.float32), step(*values))


def test_kernels_in_one_step_share_the_pool(monkeypatch):
    """Two split kernels in one step each hand their chunks to the pool; nothing is joined."""
    x = gc.input("x", (256, 256), "float64")
    w = gc.const(np.linspace(-1, 1, 256 * 256).reshape(256, 256) / 64)
    program = gc.Program([x], gc.tanh(x @ w) @ w, name="two_splits")  # two matmul kernels
    one, two = both(program, monkeypatch)
    ir_text = two.dump("llvm")
    assert ir_text.count(POOL_CALL) >= 2  # both kernels split
    assert "pthread" not in ir_text  # the pool starts threads, not the program
    xv = np.linspace(-4, 4, 256 * 256).reshape(256, 256)
    np.testing.assert_allclose(two(xv), one(xv), rtol=1e-13, atol=1e-13)


# ---- the pool itself ----


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def pool_run():
    """graphc_pool_run(chunk, context, chunks, threads) through ctypes (GIL released)."""
    jit.load_pool()
    address = llvm.address_of_symbol("graphc_pool_run")
    assert address
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(
        address
    )


CHUNK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


@pytest.mark.parametrize("chunks", [1, 2, 3, 64, 1000])
def test_pool_runs_every_chunk_once(pool_run, chunks):
    seen = []
    chunk = CHUNK(lambda context, index: seen.append(index))
    for _ in range(20):
        seen.clear()
        pool_run(chunk, None, chunks, 2)
        assert sorted(seen) == list(range(chunks))


def test_pool_starts_its_workers_once(pool_run, monkeypatch):
    program, values = chain(10**6, "float32")
    step = compiled(program, 3, monkeypatch)
    step(*values)
    before = native_threads()
    for _ in range(30):
        step(*values)
    pool_run(CHUNK(lambda context, index: None), None, 8, 3)
    assert native_threads() == before  # workers are reused, not started per call


FORK_CHILD = r"""
import os
import numpy as np
import graphc as gc

n = 10**6
a, b, c, d = (gc.input(x, (n,), dtype="float64") for x in "abcd")
step = gc.compile(gc.Program([a, b, c, d], gc.tanh(a * b + c) * gc.sigmoid(d) - 0.5 * a))
assert "graphc_pool_run" in step.dump("llvm")
values = [np.random.default_rng(i).normal(size=n) for i in range(4)]
expected = step(*values)  # starts the pool's workers
pid = os.fork()
if pid == 0:  # the child: its answer is its exit status
    same = all(np.array_equal(step(*values), expected) for _ in range(5))
    restarted = len(os.listdir("/proc/self/task")) > 1  # the reset pool started a worker
    os._exit(0 if same and restarted else 2 if restarted else 3)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert np.array_equal(step(*values), expected)
print("ok")
"""


def test_pool_in_a_forked_child():
    """A forked child has no workers (threads are not copied): it resets the pool, starts
    its own and computes the same result. In a fresh process: this one may run other
    libraries' threads, which make fork() unsafe."""
    env = dict(os.environ, GRAPHC_THREADS="2", PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-c", FORK_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr


STEERING_CHILD = r"""
import os, time
import numpy as np
import graphc as gc

first, second = sorted(os.sched_getaffinity(0))[:2]
n = 400_000
a, b, c, d = (gc.input(x, (n,), dtype="float64") for x in "abcd")
step = gc.compile(gc.Program([a, b, c, d], gc.tanh(a * b + c) * gc.sigmoid(d) - 0.5 * a))
assert "graphc_pool_run" in step.dump("llvm")
values = [np.random.default_rng(i).normal(size=n) for i in range(4)]
before = set(os.listdir("/proc/self/task"))
expected = step(*values)  # starts the worker
(worker,) = {int(t) for t in set(os.listdir("/proc/self/task")) - before}


def last_cpu(tid):  # field 39 of stat, counted after the command name's parenthesis
    with open(f"/proc/self/task/{tid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[36])


def allowed(tid):
    with open(f"/proc/self/task/{tid}/status") as status:
        line = next(l for l in status if l.startswith("Cpus_allowed_list"))
        return line.split()[1]


os.sched_setaffinity(0, {first})  # this thread, the caller, on the first CPU
os.sched_setaffinity(worker, {first})  # the worker made to sleep there too
time.sleep(0.05)
os.sched_setaffinity(worker, {first, second})
cpus = []
for _ in range(8):
    time.sleep(0.02)  # the worker is asleep, last on the caller's CPU (then on its own)
    assert np.array_equal(step(*values), expected)
    time.sleep(0.02)
    cpus.append(last_cpu(worker))
assert os.sched_getaffinity(0) == {first}, "steering touched the caller"
print(cpus.count(second), len(cpus), allowed(worker))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pool_wakes_workers_off_the_callers_cpu():
    """A sleeping worker last run on the caller's CPU is woken elsewhere (steer_sleepers):
    Linux would queue it behind the caller, which then computes every chunk alone. After
    each call the worker has its whole affinity back. In a fresh process: it pins threads."""
    env = dict(os.environ, GRAPHC_THREADS="2", PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-c", STEERING_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    on_its_own, calls, allowed = result.stdout.split()
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert int(on_its_own) == int(calls)
    assert allowed == f"{first}-{second}" if second == first + 1 else f"{first},{second}"
