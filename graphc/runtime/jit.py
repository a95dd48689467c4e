# Over 500 lines on purpose: compiling, the object cache and the engines that load its
# entries share one lock, one key and one ELF reader; split, each half would import the other.
"""LLVM IR text -> machine code: in process (MCJIT) for `compile`, or an object file for AOT.

Every JIT compile goes through one path, whether or not the object cache hits:

    IR text --parse+verify--> module --optimize (new PM, O2)--> --emit_object--> ELF bytes
                                                                                   |
    cache hit: ELF bytes <--check header + sha256-- <cache_dir>/<key>.jitobj <-----+ store
                   |
                   +--> empty MCJIT engine + add_object_file --> finalize --> addresses

Loading the object file rather than handing the module to MCJIT means a cached program and a
fresh one are loaded by exactly the same code, so a cache hit cannot behave differently.

Cache entry (one file per key, written to a temp file then `os.replace`d, so readers never see
a partial file):

    b"graphc-jit-object v2\\n" | key (64 hex chars) | b"\\n" | sha256(payload) (64 hex) | b"\\n"
    | payload = metadata (one line of JSON) | b"\\n" | the ELF object

The metadata is whatever the compiler needs to run the code without recomputing it (the
Executable stores its arena size and kernel names there). An entry whose magic, key or
checksum does not match is never trusted: it is recompiled and rewritten. Only a regular file
of at most MAX_ENTRY_BYTES is read, opened without following a symlink and without blocking
(a FIFO or a link to /dev/zero is a miss, not a hang), and an entry that fails to load for any
reason (an object file LLVM would reject, a missing symbol, metadata that is not an object) is
deleted and recompiled. The checksum guards against damage, not against forgery: the cache
directory is trusted like the Python files graphc runs from. An unwritable cache directory
just means no caching.

Cache key: sha256 over a text that determines the machine code — the LLVM IR itself, or (for
`compile`) the printed input graph without its source locations (no code depends on them),
so that a hit skips the graph passes and IR emission too — plus everything else the code
depends on: a hash of graphc's own compiler sources (ir, passes, codegen, runtime: an edited
compiler never loads a stale object), the GRAPHC_* environment variables that are not known
to leave code alone, the thread count large kernels are split into, host CPU name and
features, opt level, llvmlite, LLVM and NumPy versions, graphc version and the entry format
version.

External symbols: MCJIT leaves an unresolved external as address 0 and the process segfaults
when it is called. So every undefined symbol of the object file is looked up in the process
(`llvm.address_of_symbol`) before the code is loaded, and a missing one is a CompileError.
Codegen must still emit external calls only to symbols known to resolve (libm, libmvec, ...).

Code from another process: an Engine keeps its object file (`.object`), the CPU it was
compiled for (`.target`) and its cache key (`.key`, None if compiled without the cache);
pickled, it becomes an `ObjectCode` of those. Inside `with received(codes):` such code counts
as cached under its key, ahead of the on-disk cache: a compile in this process whose key is the
same (same IR or graph, CPU, features, versions, sources ...) maps the received object
without running LLVM, any other compiles as usual. An unpickled Executable is built that way
(runtime/executable.py), with the code of its native entry and of the thread pool.

`Engine.optimized_ir` is the printed optimized module of a fresh compile; after a cache hit it
is recomputed (parse + optimize, no codegen) on first use, since only debugging dumps need it.
The machine code lives as long as its Engine: drop the Engine and every function pointer into
it dangles (`function()` returns a ctypes callable that holds its Engine).

Thread safety: LLVM calls are serialized by one module-level lock; each compile parses into
its own LLVM context, so no global LLVM state grows with the number of programs compiled. A
process forked while another thread holds the lock gets a fresh one in the child.

Ctrl-C: Python runs signal handlers in the main thread between bytecodes, never inside a C
call, and LLVM's optimization and code generation are one C call of up to minutes. So on the
main thread that LLVM work (`_interruptible`) runs in a worker thread while the main thread
waits for it in short timeouts: SIGINT raises KeyboardInterrupt at once. The abandoned
worker (a daemon thread) finishes its compile in the background, holding the LLVM lock until
then, and its result is dropped: the cache entry is written by the waiting thread after the
compile, through a temporary file, so an interrupted compile leaves no entry, whole or partial.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from graphc.codegen import mathlib, parallel, target
from graphc.errors import CompileError, InputError

_LOCK = target.LLVM_LOCK


def _lock_in_child() -> None:
    """After a fork, the child's fresh LLVM lock (codegen/target.py made it just before)."""
    global _LOCK
    _LOCK = target.LLVM_LOCK


os.register_at_fork(after_in_child=_lock_in_child)
_MAGIC = b"graphc-jit-object v2\n"
_FORMAT_VERSION = "2"  # bump when the entry format or the JIT target machine settings change
_HEADER_SIZE = len(_MAGIC) + 64 + 1 + 64 + 1
MAX_ENTRY_BYTES = 1 << 30  # a cache entry larger than this is not read
# The compiler's own sources: any change to them changes every cache key.
_SOURCE_PACKAGES = ("ir", "passes", "codegen", "runtime")
# GRAPHC_* variables that cannot change generated code; every other one is part of the key.
_KEY_EXEMPT = ("GRAPHC_CACHE_DIR", "GRAPHC_VERIFY", "GRAPHC_BENCH_")
# Default optimization level of JIT (and AOT) builds. O2 vectorizes like O3 (the tuning below
# turns loop and SLP vectorization on at both); measured interleaved on W1-W5, the code runs
# as fast (native-call medians within ±1 %, single cases ±10 % either way between runs), and
# LLVM's optimization takes 20-30 % less time (W1-A: 0.51 s vs 0.72 s). docs/README_perf.md.
DEFAULT_OPT = 2
OPT_LEVELS = (0, 1, 2, 3)

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
# Make libc/libm symbols (memcpy, memset, fma, floor ...) resolvable: LLVM searches only
# libraries loaded permanently, not the process's own dynamic symbols.
for _library in ("c", "m"):
    if ctypes.util.find_library(_library):
        llvm.load_library_permanently(ctypes.util.find_library(_library))


def check_opt(opt) -> int:
    """`opt` if it is an optimization level 0-3, else an InputError (a ValueError)."""
    if isinstance(opt, bool) or not isinstance(opt, int) or opt not in OPT_LEVELS:
        raise InputError(f"opt must be an optimization level 0, 1, 2 or 3, got {opt!r}")
    return opt


@functools.cache
def _graphc_version() -> str:
    try:
        return importlib.metadata.version("graphc")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def target_machine(
    cpu: str | None = None,
    features: str | None = None,
    *,
    reloc: str = "default",
    opt: int = DEFAULT_OPT,
    jit: bool = False,
    triple: str | None = None,
) -> llvm.TargetMachine:
    """A target machine for `cpu` on `triple` (None, None: the JIT's target,
    codegen.target.host(); a triple alone: its default CPU)."""
    check_opt(opt)
    if cpu is None and triple is None:
        machine_target = target.host()
    else:
        machine_target = target.for_cpu(cpu, features, triple)
    # The JIT needs the large code model: RuntimeDyld may place sections far apart.
    codemodel = "jitdefault" if jit else "default"
    with _LOCK:
        return machine_target.machine(opt=opt, reloc=reloc, codemodel=codemodel, jit=jit)


def optimize(module: llvm.ModuleRef, tm: llvm.TargetMachine, level: int = DEFAULT_OPT) -> None:
    """Run the new pass manager's default pipeline at `level`, with loop and SLP vectorization;
    then link in and inline the sin/cos routines (codegen/mathlib.py `link_trig`)."""
    with _LOCK:
        tuning = llvm.create_pipeline_tuning_options(speed_level=level)
        tuning.loop_vectorization = level >= 2
        tuning.slp_vectorization = level >= 2
        builder = llvm.create_pass_builder(tm, tuning)
        builder.getModulePassManager().run(module, builder)
        mathlib.link_trig(module, builder)  # sin/cos: their routines, after vectorization


def _interruptible(work: Callable[[], object]) -> object:
    """`work()` (LLVM calls), run so that Ctrl-C on the main thread interrupts the wait for it
    (see the module docstring): elsewhere, or under the LLVM lock already, it runs inline."""
    if threading.current_thread() is not threading.main_thread() or _LOCK._is_owned():
        return work()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as error:  # noqa: BLE001 -- handed to the waiting thread
            # its traceback without this frame, which holds `outcome`: an error a worker
            # left after an interrupt would otherwise stay in a reference cycle (see below)
            outcome.append((False, error.with_traceback(error.__traceback__.tb_next)))

    worker = threading.Thread(target=run, name="graphc-llvm-compile", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)  # a timed wait: a signal's handler runs within one timeout
    # Popped, and the error dropped after raising it, so that no reference cycle (error ->
    # traceback -> frame -> error) keeps LLVM objects for the cycle collector, which may free
    # a context before its module (see Engine) and crash.
    succeeded, value = outcome.pop()
    if succeeded:
        return value
    try:
        raise value
    finally:
        del value


def _parse(llvm_ir: str, tm: llvm.TargetMachine) -> llvm.ModuleRef:
    """Parse and verify `llvm_ir` in a fresh context, retargeted to `tm`."""
    try:
        module = llvm.parse_assembly(llvm_ir, context=llvm.create_context())
        module.verify()
    except RuntimeError as error:
        raise CompileError(f"invalid LLVM IR: {error}") from None
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    return module


def emit_object(
    llvm_ir: str,
    *,
    cpu: str = "x86-64-v3",
    features: str = "",
    opt: int = DEFAULT_OPT,
    triple: str | None = None,
    reloc: str = "pic",
) -> bytes:
    """Optimized object file (ELF bytes, position-independent by default) of `llvm_ir` for
    AOT builds, for `cpu` on `triple` (None: the host's; codegen.target.PLATFORMS lists the
    others)."""
    tm = target_machine(cpu, features, reloc=reloc, opt=opt, triple=triple)

    def work() -> bytes:
        with _LOCK:
            module = _parse(llvm_ir, tm)
            optimize(module, tm, opt)
            return tm.emit_object(module)

    return _interruptible(work)


def emit_assembly(
    llvm_ir: str, *, cpu: str | None = None, features: str | None = None, opt: int = DEFAULT_OPT
) -> str:
    """Optimized assembly text of `llvm_ir` (default: for the host CPU)."""
    tm = target_machine(cpu, features, opt=opt)
    with _LOCK:
        module = _parse(llvm_ir, tm)
        optimize(module, tm, opt)
        return tm.emit_assembly(module)


def cache_dir() -> pathlib.Path:
    """$GRAPHC_CACHE_DIR, else $XDG_CACHE_HOME/graphc, else ~/.cache/graphc."""
    if os.environ.get("GRAPHC_CACHE_DIR"):
        return pathlib.Path(os.environ["GRAPHC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(xdg) / "graphc"


@functools.cache
def source_fingerprint() -> str:
    """sha256 over graphc's compiler sources (paths and contents), read once per process
    (about 1 ms)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in _SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# Hashed when graphc is imported, that is, as the compiler modules are loaded: a source file
# edited while this process runs does not change the key its (already loaded) code writes.
source_fingerprint()


@functools.cache
def _host_key() -> str:
    """The part of every cache key that is fixed for this process: host, versions, sources."""
    return "\0".join(
        [
            llvm.get_host_cpu_name(),
            target.for_cpu().features,
            f"llvmlite={llvmlite.__version__}",
            "llvm={}.{}.{}".format(*llvm.llvm_version_info),
            f"numpy={np.__version__}",
            f"graphc={_graphc_version()}",
            f"sources={source_fingerprint()}",
            f"format={_FORMAT_VERSION}",
        ]
    )


def cache_key(text: str, opt: int) -> str:
    """The hex sha256 naming the cache entry of the code `text` determines (LLVM IR, or a
    printed graph), compiled at `opt` for this host by this version of graphc."""
    check_opt(opt)
    environment = sorted(
        f"{name}={value}"
        for name, value in os.environ.items()
        if name.startswith("GRAPHC_") and not name.startswith(_KEY_EXEMPT)
    )
    # the thread count is compiled in (codegen/parallel.py) and follows the CPU affinity
    parts = [text, f"opt={opt}", f"threads={parallel.thread_count()}", *environment, _host_key()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_path(key: str) -> pathlib.Path:
    """Where the cache entry for `key` lives."""
    return cache_dir() / f"{key}.jitobj"


def _read_cache(key: str) -> tuple[bytes, dict] | None:
    """The cached object and metadata for `key`, or None if absent, unreadable or not exactly
    as written."""
    data = _read_regular_file(cache_path(key), MAX_ENTRY_BYTES)
    if data is None:
        return None
    header, payload = data[:_HEADER_SIZE], data[_HEADER_SIZE:]
    expected = _MAGIC + f"{key}\n{hashlib.sha256(payload).hexdigest()}\n".encode()
    if header != expected or b"\n" not in payload:
        return None
    metadata, obj = payload.split(b"\n", 1)
    try:
        metadata = json.loads(metadata)
    except ValueError:
        return None
    return (obj, metadata) if isinstance(metadata, dict) else None


def _read_regular_file(path: pathlib.Path, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a symlink) of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _well_formed_object(elf: bytes) -> bool:
    """Whether `elf` is a little-endian ELF64 file whose section table and sections lie inside
    it: LLVM aborts the process on one that is not (an entry forged with a valid checksum)."""
    if len(elf) < 64 or elf[:6] != b"\x7fELF\x02\x01":
        return False
    (table,) = struct.unpack_from("<Q", elf, 0x28)
    entry_size, count = struct.unpack_from("<HH", elf, 0x3A)
    if entry_size < 64 or table + entry_size * count > len(elf):
        return False
    for i in range(count):
        kind, _, _, offset, size = struct.unpack_from("<IQQQQ", elf, table + i * entry_size + 4)
        if kind != 8 and offset + size > len(elf):  # 8: SHT_NOBITS (.bss) occupies no bytes
            return False
    return True


def _write_cache(key: str, obj: bytes, metadata: dict) -> None:
    """Store `obj` and `metadata` atomically; a filesystem failure leaves the entry unwritten."""
    payload = json.dumps(metadata, sort_keys=True).encode() + b"\n" + obj
    header = _MAGIC + f"{key}\n{hashlib.sha256(payload).hexdigest()}\n".encode()
    path = cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(header + payload)
        os.replace(temp, path)
    except BaseException as error:  # an OSError, or KeyboardInterrupt: no temp file is left
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if not isinstance(error, OSError):
            raise


# ELF64 / ELF32 (a 32-bit target's AOT object): section header table offset, its entry size
# and count, a section header, and a symbol's name, info and section index
_ELF_LAYOUT = {
    2: ("<Q", 0x28, 0x3A, "<IIQQQQIIQQ", "<IBxH"),
    1: ("<I", 0x20, 0x2E, "<IIIIIIIIII", "<I8xBxH"),
}


def _resolve_mpi(name: str) -> None:
    """Make MPI function `name` resolvable: from the MPI library mpi4py loaded (graphc's
    collectives call the same library as the interpreter and the user's own mpi4py code).
    An unresolvable one stays unresolved, and the caller reports it."""
    try:
        from mpi4py import MPI  # noqa: F401 -- loads the MPI library into the process
    except ImportError:
        return
    with open("/proc/self/maps") as maps:
        libraries = {line.split()[-1] for line in maps if "libmpi" in line.split()[-1]}
    for path in sorted(libraries):
        function = getattr(ctypes.CDLL(path), name, None)
        if function is not None:
            llvm.add_symbol(name, ctypes.cast(function, ctypes.c_void_p).value)
            return


def _undefined_symbols(elf: bytes) -> list[str]:
    """Names of the undefined global (not weak) symbols of a little-endian ELF object file."""
    offset_format, offset_at, sizes_at, section_format, symbol_format = _ELF_LAYOUT[elf[4]]
    (section_offset,) = struct.unpack_from(offset_format, elf, offset_at)
    entry_size, count = struct.unpack_from("<HH", elf, sizes_at)
    sections = [
        struct.unpack_from(section_format, elf, section_offset + i * entry_size)
        for i in range(count)
    ]
    names = []
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strings_offset = sections[link][4]
        for at in range(offset + symbol_size, offset + size, symbol_size):  # skip null symbol
            name, info, section_index = struct.unpack_from(symbol_format, elf, at)
            if section_index == 0 and info >> 4 == 1:  # SHN_UNDEF and STB_GLOBAL
                end = elf.index(b"\0", strings_offset + name)
                names.append(elf[strings_offset + name : end].decode())
    return names


class Engine:
    """A compiled, loaded program; keep it alive while any function pointer into it is used.

    `llvm_ir` may be given as a function that builds the IR text: after a cache hit keyed on
    something other than the IR, it is built only if asked for (dumps, assembly)."""

    def __init__(
        self,
        llvm_ir: str | Callable[[], str],
        opt: int,
        obj: bytes,
        *,
        cached: bool,
        optimized=None,
        metadata: dict | None = None,
    ) -> None:
        self._llvm_ir = llvm_ir
        self.opt = opt
        self.cached = cached
        self.metadata = metadata or {}
        self.timings: dict[str, float] = {}
        self.object = obj  # the ELF bytes, for pickling
        self.target = target.host()  # the CPU the code was compiled (and is loaded) for
        self.key: str | None = None  # its cache key, set by load_cached and compile_ir
        self._optimized = optimized  # the optimized ModuleRef, or its text once printed
        undefined = _undefined_symbols(obj)
        if any(name in parallel.POOL_SYMBOLS for name in undefined):
            load_pool()
        for name in undefined:
            if name.startswith("MPI_") and not llvm.address_of_symbol(name):
                _resolve_mpi(name)
        unresolved = [
            name
            for name in undefined
            if name != "_GLOBAL_OFFSET_TABLE_" and not llvm.address_of_symbol(name)
        ]
        if unresolved:
            raise CompileError(f"unresolved external symbols: {', '.join(sorted(unresolved))}")
        with _LOCK:
            empty = llvm.parse_assembly("")
            self._engine = llvm.create_mcjit_compiler(empty, target_machine(opt=opt, jit=True))
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()
        # llvmlite frees each object in its __del__. When an Engine dies in a reference cycle,
        # the cycle collector runs those in any order, and a module freed after its context
        # crashes the process. This finalizer holds the engine and the optimized module, so
        # they are never part of a cycle, and frees them in a safe order however the Engine dies.
        self._finalizer = weakref.finalize(self, _release, self._engine, [optimized])

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR text the machine code was compiled from (built on first use if lazy)."""
        if not isinstance(self._llvm_ir, str):
            self._llvm_ir = self._llvm_ir()
        return self._llvm_ir

    def address(self, name: str) -> int:
        """The address of the symbol `name` (function or global) in the loaded code."""
        with _LOCK:
            address = self._engine.get_function_address(name)
        if not address:
            raise CompileError(f"symbol {name!r} is not defined by the compiled program")
        return address

    @property
    def optimized_ir(self) -> str:
        """The IR after the pass pipeline (re-optimized on first use after a cache hit)."""
        llvm_ir = self.llvm_ir  # outside the lock: building it may take the lock itself
        with _LOCK:
            if self._optimized is None:
                tm = target_machine(opt=self.opt)
                self._optimized = _parse(llvm_ir, tm)
                optimize(self._optimized, tm, self.opt)
            if not isinstance(self._optimized, str):
                module, self._optimized = self._optimized, str(self._optimized)
                _release_module(module)
            return self._optimized

    def __reduce__(self):
        """Pickled as an ObjectCode: the object file, the CPU and cache key it was compiled for."""
        return ObjectCode, (self.object, self.opt, self.metadata, self.target, self.key)

    def runtime(self) -> list[Engine]:
        """The loaded code this engine's code calls into: the thread pool, if it does."""
        calls_pool = any(name in parallel.POOL_SYMBOLS for name in _undefined_symbols(self.object))
        return list(_POOL) if calls_pool else []

    def assembly(self) -> str:
        """Host assembly of the optimized module."""
        # A separate target machine: MCJIT owns the one it was created with.
        tm = target_machine(opt=self.opt)
        optimized_ir = self.optimized_ir
        with _LOCK:
            return tm.emit_assembly(_parse(optimized_ir, tm))


def _release_module(module) -> None:
    """Free a parsed module, then the context it was parsed into (see `_parse`)."""
    if module is not None and not isinstance(module, str) and not module.closed:
        context = module._context  # llvmlite keeps no other handle on it
        module.close()
        if context is not None:
            context.close()  # a no-op for the global context


def _release(engine: llvm.ExecutionEngine, modules: list) -> None:
    """Free an Engine's LLVM objects: the execution engine (which owns its target machine and
    the modules added to it), then any optimized module kept for dumps."""
    with _LOCK:
        engine.close()
        for module in modules:
            _release_module(module)


@dataclasses.dataclass(frozen=True)
class ObjectCode:
    """Compiled code as it travels between processes (an unpickled Engine): the object file,
    its opt level and metadata, the CPU it was compiled for and its cache key."""

    object: bytes
    opt: int
    metadata: dict
    target: target.Target
    key: str | None


_RECEIVED: contextvars.ContextVar[dict[str, ObjectCode] | None] = contextvars.ContextVar(
    "graphc_received_code", default=None
)


@contextlib.contextmanager
def received(codes: Iterable[ObjectCode]):
    """Within the block, `codes` count as cached under their keys (before the disk cache)."""
    token = _RECEIVED.set((_RECEIVED.get() or {}) | {code.key: code for code in codes if code.key})
    try:
        yield
    finally:
        _RECEIVED.reset(token)


def load_cached(
    key: str,
    *,
    opt: int = DEFAULT_OPT,
    llvm_ir: str | Callable[[], str],
    required_symbols: Iterable[str] = (),
) -> Engine | None:
    """The engine of the cache entry `key` (its metadata in `.metadata`), or None on a miss.

    `llvm_ir` (text, or a function building it) is what the entry was compiled from; it is
    only needed for dumps."""
    check_opt(opt)
    start = time.perf_counter()
    code = (_RECEIVED.get() or {}).get(key)
    entry = _read_cache(key) if code is None else (code.object, code.metadata)
    if entry is None:
        return None
    obj, metadata = entry
    try:
        if not _well_formed_object(obj):
            raise CompileError("not an ELF64 object file")
        engine = Engine(llvm_ir, opt, obj, cached=True, metadata=metadata)
        for name in required_symbols:
            engine.address(name)
    except Exception:  # noqa: BLE001 -- whatever is wrong with the entry, compile afresh
        if code is None:
            with contextlib.suppress(OSError):
                os.unlink(cache_path(key))
        return None
    engine.timings = {"load": time.perf_counter() - start}  # reading the entry included
    engine.key = key
    return engine


def compile_ir(
    llvm_ir: str,
    *,
    opt: int = DEFAULT_OPT,
    cache: bool = True,
    key: str | None = None,
    metadata: dict | None = None,
    required_symbols: Iterable[str] = (),
) -> Engine:
    """JIT-compile `llvm_ir` for the host, through the on-disk object cache if `cache`.

    The entry is named `key` if given (it must determine `llvm_ir`: see `cache_key`), else
    the key of the IR text itself; `metadata` (JSON-serializable) is stored with it."""
    check_opt(opt)
    if cache:
        key = key or cache_key(llvm_ir, opt)
        engine = load_cached(key, opt=opt, llvm_ir=llvm_ir, required_symbols=required_symbols)
        if engine is not None:
            return engine
    metadata = metadata or {}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tm = target_machine(opt=opt, jit=True)

    def work() -> tuple[llvm.ModuleRef, bytes]:
        with _LOCK:
            module = _parse(llvm_ir, tm)
            timings["parse"] = time.perf_counter() - start
            optimize(module, tm, opt)
            timings["optimize"] = time.perf_counter() - start - timings["parse"]
            obj = tm.emit_object(module)
            timings["codegen"] = time.perf_counter() - start - sum(timings.values())
            return module, obj

    module, obj = _interruptible(work)
    if cache:
        _write_cache(key, obj, metadata)
    start = time.perf_counter()
    engine = Engine(llvm_ir, opt, obj, cached=False, optimized=module, metadata=metadata)
    timings["load"] = time.perf_counter() - start
    engine.timings = timings
    engine.key = key if cache else None
    for name in required_symbols:
        engine.address(name)
    return engine


_POOL: list[Engine] = []  # the thread pool's code, loaded once


def load_pool() -> None:
    """Load the thread pool (codegen/parallel.py `emit_pool`) into this process, once, and
    make its entry points resolvable by the programs compiled after it.

    Its workers run its code until the process ends, so its Engine is never freed: a
    reference is leaked on purpose, or interpreter shutdown would unmap code a worker spins
    in. A forked child gets no threads, so it resets the pool and starts its own."""
    with _LOCK:
        if _POOL:
            return
        engine = compile_ir(str(parallel.pool_module()))
        engine._finalizer.detach()  # a finalizer would still run at interpreter exit
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        for name in parallel.POOL_SYMBOLS:
            llvm.add_symbol(name, engine.address(name))
        os.register_at_fork(after_in_child=function(engine, "graphc_pool_reset", None))
        _POOL.append(engine)


def function(engine: Engine, name: str, restype, *argtypes):
    """A ctypes callable for the function `name`; it keeps `engine` alive."""
    callable_ = ctypes.CFUNCTYPE(restype, *argtypes)(engine.address(name))
    callable_.engine = engine
    return callable_
