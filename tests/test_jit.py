"""The JIT layer: IR text in, callable machine code out, through the on-disk object cache."""

import ctypes
import gc
import hashlib
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from targets import assert_vectorized_at_target_width, widest_vector_bytes

from graphc.errors import CompileError, InputError
from graphc.runtime import jit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ADD = """
define double @add(double %a, double %b) {
  %c = fadd double %a, %b
  ret double %c
}
"""

SUM = """
define double @sum(ptr noalias %x, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %total = phi double [0.0, %entry], [%total.next, %loop]
  %at = getelementptr double, ptr %x, i64 %i
  %value = load double, ptr %at
  %total.next = fadd double %total, %value
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, %n
  br i1 %done, label %exit, label %loop
exit:
  ret double %total.next
}
"""

# c[i] += a[i] * b[i] over 1024 floats: vectorizes (ymm with AVX2, zmm on Zen 4/5).
FMA_LOOP = """
define void @fma(ptr noalias %a, ptr noalias %b, ptr noalias %c) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%next, %loop]
  %pa = getelementptr float, ptr %a, i64 %i
  %pb = getelementptr float, ptr %b, i64 %i
  %pc = getelementptr float, ptr %c, i64 %i
  %x = load float, ptr %pa
  %y = load float, ptr %pb
  %z = load float, ptr %pc
  %xy = fmul contract float %x, %y
  %r = fadd contract float %xy, %z
  store float %r, ptr %pc
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, 1024
  br i1 %done, label %exit, label %loop
exit:
  ret void
}
"""

ADD_SIGNATURE = (ctypes.c_double, ctypes.c_double, ctypes.c_double)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def call_add(engine, a=1.5, b=2.25):
    return jit.function(engine, "add", *ADD_SIGNATURE)(a, b)


def test_add_and_loop_sum_run():
    engine = jit.compile_ir(ADD + SUM, required_symbols=["add", "sum"])
    assert call_add(engine) == 3.75
    x = np.arange(10.0)
    total = jit.function(engine, "sum", ctypes.c_double, ctypes.c_void_p, ctypes.c_int64)
    assert total(x.ctypes.data, x.size) == 45.0
    assert set(engine.timings) == {"parse", "optimize", "codegen", "load"}
    assert not engine.cached


def test_function_keeps_engine_alive():
    add = jit.function(jit.compile_ir(ADD), "add", *ADD_SIGNATURE)
    gc.collect()
    assert add(1.0, 2.0) == 3.0


def test_second_compile_hits_cache(cache_in_tmp):
    first = jit.compile_ir(ADD)
    second = jit.compile_ir(ADD)
    assert not first.cached and second.cached
    assert "optimize" not in second.timings and "load" in second.timings
    assert call_add(second) == 3.75
    assert list(cache_in_tmp.iterdir()) == [jit.cache_path(jit.cache_key(ADD, jit.DEFAULT_OPT))]
    assert "define double @add" in second.optimized_ir  # recomputed lazily on a hit
    assert "vaddsd" in second.assembly()


def test_no_cache_compiles_every_time(cache_in_tmp):
    jit.compile_ir(ADD, cache=False)
    assert not jit.compile_ir(ADD, cache=False).cached
    assert not cache_in_tmp.exists()


def test_new_process_hits_cache(cache_in_tmp):
    jit.compile_ir(ADD)
    script = (
        "import ctypes; from graphc.runtime import jit; e = jit.compile_ir(" + repr(ADD) + ");"
        "print(e.cached, jit.function(e, 'add', *[ctypes.c_double] * 3)(1.0, 2.0))"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "3.0"]


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x40])


def flip_header_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


@pytest.mark.parametrize("corrupt", [truncate, flip_last_byte, flip_header_byte, lambda d: b""])
def test_corrupt_entry_is_recompiled_and_rewritten(corrupt):
    jit.compile_ir(ADD)
    path = jit.cache_path(jit.cache_key(ADD, jit.DEFAULT_OPT))
    good = path.read_bytes()
    path.write_bytes(corrupt(good))
    engine = jit.compile_ir(ADD)
    assert not engine.cached
    assert call_add(engine) == 3.75
    assert path.read_bytes() == good
    assert jit.compile_ir(ADD).cached


def test_entry_of_another_program_is_not_trusted():
    jit.compile_ir(SUM)
    sum_entry = jit.cache_path(jit.cache_key(SUM, jit.DEFAULT_OPT)).read_bytes()
    jit.cache_path(jit.cache_key(ADD, jit.DEFAULT_OPT)).write_bytes(sum_entry)
    engine = jit.compile_ir(ADD)
    assert not engine.cached and call_add(engine) == 3.75


def compile_within(seconds: float, *args, **kwargs) -> jit.Engine:
    """compile_ir in a thread that must finish in time (a regression would hang, not fail)."""
    result = []
    thread = threading.Thread(
        target=lambda: result.append(jit.compile_ir(*args, **kwargs)), daemon=True
    )
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "compile_ir hangs on the cache entry"
    return result[0]


def forge(key: str, obj: bytes, metadata: bytes = b"{}") -> None:
    """Write an entry for `key` holding `obj`, with a valid header and checksum."""
    payload = metadata + b"\n" + obj
    header = jit._MAGIC + f"{key}\n{hashlib.sha256(payload).hexdigest()}\n".encode()
    jit.cache_path(key).write_bytes(header + payload)


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero", "directory", "too large"])
def test_entry_that_is_not_a_small_regular_file_is_replaced(kind, monkeypatch):
    jit.compile_ir(ADD)
    path = jit.cache_path(jit.cache_key(ADD, jit.DEFAULT_OPT))
    good = path.read_bytes()
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(good)
        monkeypatch.setattr(jit, "MAX_ENTRY_BYTES", len(good) - 1)
    engine = compile_within(60, ADD, required_symbols=["add"])
    assert not engine.cached and call_add(engine) == 3.75
    if kind != "directory":  # os.replace cannot put a file over a directory: no caching
        assert path.is_file() and not path.is_symlink() and path.read_bytes() == good
        monkeypatch.setattr(jit, "MAX_ENTRY_BYTES", len(good))
        assert jit.compile_ir(ADD).cached


def flip_a_section_offset(obj: bytes) -> bytes:
    (table,) = struct.unpack_from("<Q", obj, 0x28)
    at = table + 64 + 0x18 + 4  # the high half of section 1's sh_offset
    return obj[:at] + b"\xff" + obj[at + 1 :]


@pytest.mark.parametrize(
    "forgery",
    ["another program", "not an object", "section past the end", "metadata not an object"],
)
def test_entry_forged_with_a_valid_checksum_is_recompiled(forgery):
    """The checksum matches, so only loading the entry can tell: it must then compile afresh
    and replace the entry, not fail every time (or let LLVM abort the process)."""
    jit.compile_ir(SUM)
    jit.compile_ir(ADD)
    key = jit.cache_key(ADD, jit.DEFAULT_OPT)
    good = jit.cache_path(key).read_bytes()
    add_obj = good[jit._HEADER_SIZE :].split(b"\n", 1)[1]
    sum_entry = jit.cache_path(jit.cache_key(SUM, jit.DEFAULT_OPT)).read_bytes()
    sum_obj = sum_entry[jit._HEADER_SIZE :].split(b"\n", 1)[1]
    obj, metadata = {
        "another program": (sum_obj, b"{}"),
        "not an object": (b"graphc" * 50, b"{}"),
        "section past the end": (flip_a_section_offset(add_obj), b"{}"),
        "metadata not an object": (add_obj, b"[1]"),
    }[forgery]
    forge(key, obj, metadata)
    engine = jit.compile_ir(ADD, required_symbols=["add"])
    assert not engine.cached and call_add(engine) == 3.75
    assert jit.cache_path(key).read_bytes() == good
    assert jit.compile_ir(ADD, required_symbols=["add"]).cached


def test_unwritable_cache_dir_compiles_without_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(blocker / "cache"))
    for _ in range(2):
        engine = jit.compile_ir(ADD)
        assert not engine.cached and call_add(engine) == 3.75


def test_missing_symbol_is_a_compile_error():
    with pytest.raises(CompileError, match="'mul'"):
        jit.compile_ir(ADD, required_symbols=["add", "mul"])
    with pytest.raises(CompileError, match="'nothing'"):
        jit.compile_ir(ADD).address("nothing")


def test_unresolved_external_is_a_compile_error():
    ir = """
    declare double @graphc_no_such_function(double)
    define double @f(double %x) {
      %y = call double @graphc_no_such_function(double %x)
      ret double %y
    }
    """
    with pytest.raises(CompileError, match="graphc_no_such_function"):
        jit.compile_ir(ir)


def test_libm_external_resolves():
    ir = """
    declare double @exp(double)
    define double @f(double %x) {
      %y = call double @exp(double %x)
      ret double %y
    }
    """
    f = jit.function(jit.compile_ir(ir), "f", ctypes.c_double, ctypes.c_double)
    assert f(1.0) == np.exp(1.0)


def test_parse_error_carries_llvm_diagnostic():
    with pytest.raises(CompileError, match="use of undefined value '%z'"):
        jit.compile_ir(ADD.replace("%a, %b", "%a, %z"))


def test_verifier_error_is_a_compile_error():
    ir = """
    define i32 @f(i32 %x) {
      %a = add i32 %b, 1
      %b = add i32 %a, 1
      ret i32 %b
    }
    """
    with pytest.raises(CompileError, match="does not dominate"):
        jit.compile_ir(ir)


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64"])
def test_emit_object_is_elf(cpu):
    assert jit.emit_object(ADD + SUM, cpu=cpu).startswith(b"\x7fELF")


def test_emit_assembly_vectorizes_for_the_target():
    assert_vectorized_at_target_width(jit.emit_assembly(FMA_LOOP))


@pytest.mark.parametrize("opt", [4, -1, "fast", 2.0, True, None])
def test_opt_must_be_a_level_from_0_to_3(opt):
    for enter in (
        lambda: jit.compile_ir(ADD, opt=opt),
        lambda: jit.compile_ir(ADD, opt=opt, cache=False),
        lambda: jit.cache_key(ADD, opt),
        lambda: jit.emit_object(ADD, opt=opt),
        lambda: jit.emit_assembly(ADD, opt=opt),
    ):
        with pytest.raises(InputError, match=f"opt must be .* 0, 1, 2 or 3, got {opt!r}"):
            enter()


def test_compile_checks_opt_before_any_work(cache_in_tmp):
    import graphc as gc

    x = gc.input("x", (3,))
    with pytest.raises(ValueError, match="optimization level"):  # InputError is a ValueError
        gc.compile(inputs=[x], outputs=x * 2, opt=4)


def test_cache_key_depends_on_ir_and_opt():
    keys = {jit.cache_key(ADD, 3), jit.cache_key(ADD, 2), jit.cache_key(SUM, 3)}
    assert len(keys) == 3 and jit.cache_key(ADD, 3) == jit.cache_key(ADD, 3)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    assert jit.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("GRAPHC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_dir() == tmp_path / "xdg" / "graphc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jit.cache_dir() == jit.pathlib.Path.home() / ".cache" / "graphc"


def test_eight_threads_compile_concurrently():
    def compile_and_call(k: int) -> float:
        # Pairs of threads compile the same program, so cache writes race too.
        engine = jit.compile_ir(ADD.replace("%a, %b", f"%a, {k % 4}.0"))
        return call_add(engine, 1.0, 0.0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(compile_and_call, range(8)))
    assert results == [1.0 + k % 4 for k in range(8)]


FORK_WHILE_LOCKED = """
import os, sys, threading
import graphc as gc
from graphc.codegen import target
from graphc.runtime import jit

held, release = threading.Event(), threading.Event()

def compiling():  # stands for a thread in the middle of an LLVM compile
    with jit._LOCK:
        held.set()
        release.wait()

thread = threading.Thread(target=compiling)
thread.start()
held.wait()
pid = os.fork()
if pid == 0:
    assert jit._LOCK is target.LLVM_LOCK
    x = gc.input("x", (3,))
    step = gc.compile(inputs=[x], outputs=x * 2, cache=False)  # needs the lock
    os._exit(0 if list(step([1.0, 2.0, 3.0])) == [2.0, 4.0, 6.0] else 3)
release.set()
thread.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_fork_while_another_thread_compiles_leaves_the_child_a_working_lock():
    result = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_LOCKED], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


CYCLES = """
import gc as collector, numpy as np, graphc as gc
for i, n in enumerate([3, 3, 300_000, 3]):  # the native entry and the ctypes path
    x = gc.input("x", (n,), "float64")
    step = gc.compile(inputs=[x], outputs=x * float(i + 1), cache=False)
    step(np.ones(n))
    if i == 3:
        step.dump("asm")  # the optimized module printed and freed early
    step.me = step  # the executable (and its engine) only reachable through a cycle
    del step
    collector.collect()
print("survived")
"""


def test_executables_in_reference_cycles_are_freed_without_crashing():
    """The cycle collector finalizes objects in any order; llvmlite objects freed in the
    wrong order (a module after its context) crashed the process."""
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CYCLES],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["survived"]


# ---- GRAPHC_CPU: the JIT's target ----


def test_graphc_cpu_makes_the_jit_target_another_cpu(monkeypatch):
    """GRAPHC_CPU=x86-64 (SSE2, runnable on every x86-64 host) gives 16-byte vectors only,
    and a compiled program still computes the right values."""
    import graphc as gc
    from graphc.codegen import target

    monkeypatch.setenv("GRAPHC_CPU", "x86-64")
    assert target.host() == target.Target("x86-64")
    assert widest_vector_bytes(jit.emit_assembly(FMA_LOOP)) == 16
    x = gc.input("x", (256,), "float32")
    step = gc.compile(inputs=[x], outputs=gc.exp(x) * 2.0 + x @ x)
    assert widest_vector_bytes(step.dump("asm")) == 16
    xv = np.linspace(-1, 1, 256, dtype=np.float32)
    np.testing.assert_allclose(step(xv), np.exp(xv) * 2 + xv @ xv, rtol=1e-5)
    monkeypatch.delenv("GRAPHC_CPU")
    assert target.host() == target.for_cpu()


def test_graphc_cpu_that_the_host_cannot_run_is_a_compile_error(monkeypatch):
    from graphc.codegen import target

    monkeypatch.setenv("GRAPHC_CPU", "no-such-cpu")
    with pytest.raises(CompileError, match="GRAPHC_CPU=no-such-cpu: unknown CPU"):
        target.host()
    if target.for_cpu().vector_bytes == 64:
        pytest.skip("this host runs AVX-512: every x86-64 level is executable here")
    monkeypatch.setenv("GRAPHC_CPU", "x86-64-v4")
    with pytest.raises(CompileError, match="x86-64-v4: its 64-byte vectors need instructions"):
        target.host()
