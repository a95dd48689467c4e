"""LLVM IR text -> machine code: in process (MCJIT) for `compile`, or an object file for AOT.

Every JIT compile goes through one path, whether or not the object cache hits:

    IR text --parse+verify--> module --optimize (new PM, O3)--> --emit_object--> ELF bytes
                                                                                   |
    cache hit: ELF bytes <--check header + sha256-- <cache_dir>/<key>.jitobj <-----+ store
                   |
                   +--> empty MCJIT engine + add_object_file --> finalize --> addresses

Loading the object file rather than handing the module to MCJIT means a cached program and a
fresh one are loaded by exactly the same code, so a cache hit cannot behave differently.

Cache entry (one file per key, written to a temp file then `os.replace`d, so readers never see
a partial file):

    b"graphc-jit-object v1\\n" | key (64 hex chars) | b"\\n" | sha256(payload) (64 hex) | b"\\n"
    | payload (the ELF object)

An entry whose magic, key or checksum does not match is never trusted: it is recompiled and
rewritten. An unwritable cache directory just means no caching.

Cache key: sha256 over the IR text, host CPU name and features, opt level, llvmlite and LLVM
versions, graphc version and the entry format version.

External symbols: MCJIT leaves an unresolved external as address 0 and the process segfaults
when it is called. So every undefined symbol of the object file is looked up in the process
(`llvm.address_of_symbol`) before the code is loaded, and a missing one is a CompileError.
Codegen must still emit external calls only to symbols known to resolve (libm, libmvec, ...).

`Engine.optimized_ir` is the printed optimized module of a fresh compile; after a cache hit it
is recomputed (parse + optimize, no codegen) on first use, since only debugging dumps need it.
The machine code lives as long as its Engine: drop the Engine and every function pointer into
it dangles (`function()` returns a ctypes callable that holds its Engine).

Thread safety: LLVM calls are serialized by one module-level lock; each compile parses into
its own LLVM context, so no global LLVM state grows with the number of programs compiled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import struct
import tempfile
import threading
import time
from collections.abc import Iterable

import llvmlite
import llvmlite.binding as llvm

from graphc.errors import CompileError

_LOCK = threading.RLock()
_MAGIC = b"graphc-jit-object v1\n"
_FORMAT_VERSION = "1"  # bump when the entry format or the JIT target machine settings change
_HEADER_SIZE = len(_MAGIC) + 64 + 1 + 64 + 1

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
# Make libc/libm symbols (memcpy, memset, fma, floor ...) resolvable: LLVM searches only
# libraries loaded permanently, not the process's own dynamic symbols.
for _library in ("c", "m"):
    if ctypes.util.find_library(_library):
        llvm.load_library_permanently(ctypes.util.find_library(_library))


def _graphc_version() -> str:
    try:
        return importlib.metadata.version("graphc")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


@functools.cache
def _host_features() -> str:
    return llvm.get_host_cpu_features().flatten()  # 0.25 ms per call, so asked once


def target_machine(
    cpu: str | None = None,
    features: str | None = None,
    *,
    reloc: str = "default",
    opt: int = 3,
    jit: bool = False,
) -> llvm.TargetMachine:
    """A target machine for `cpu` (None: the host CPU and its features)."""
    if cpu is None:
        cpu = llvm.get_host_cpu_name()
        features = _host_features() if features is None else features
    # The JIT needs the large code model: RuntimeDyld may place sections far apart.
    codemodel = "jitdefault" if jit else "default"
    with _LOCK:
        target = llvm.Target.from_default_triple()
        return target.create_target_machine(
            cpu=cpu, features=features or "", opt=opt, reloc=reloc, codemodel=codemodel, jit=jit
        )


def optimize(module: llvm.ModuleRef, tm: llvm.TargetMachine, level: int = 3) -> None:
    """Run the new pass manager's default pipeline at `level`, with loop and SLP vectorization."""
    with _LOCK:
        tuning = llvm.create_pipeline_tuning_options(speed_level=level)
        tuning.loop_vectorization = level >= 2
        tuning.slp_vectorization = level >= 2
        builder = llvm.create_pass_builder(tm, tuning)
        builder.getModulePassManager().run(module, builder)


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


def emit_object(llvm_ir: str, *, cpu: str = "x86-64-v3", features: str = "", opt: int = 3) -> bytes:
    """Optimized position-independent object file (ELF bytes) of `llvm_ir` for AOT builds."""
    tm = target_machine(cpu, features, reloc="pic", opt=opt)
    with _LOCK:
        module = _parse(llvm_ir, tm)
        optimize(module, tm, opt)
        return tm.emit_object(module)


def emit_assembly(
    llvm_ir: str, *, cpu: str | None = None, features: str | None = None, opt: int = 3
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


def cache_key(llvm_ir: str, opt: int) -> str:
    """The hex sha256 naming the cache entry of `llvm_ir` compiled at `opt` for this host."""
    parts = [
        llvm_ir,
        llvm.get_host_cpu_name(),
        _host_features(),
        f"opt={opt}",
        f"llvmlite={llvmlite.__version__}",
        "llvm={}.{}.{}".format(*llvm.llvm_version_info),
        f"graphc={_graphc_version()}",
        f"format={_FORMAT_VERSION}",
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_path(key: str) -> pathlib.Path:
    """Where the cache entry for `key` lives."""
    return cache_dir() / f"{key}.jitobj"


def _read_cache(key: str) -> bytes | None:
    """The cached object for `key`, or None if absent, unreadable or not exactly as written."""
    try:
        data = cache_path(key).read_bytes()
    except OSError:
        return None
    header, payload = data[:_HEADER_SIZE], data[_HEADER_SIZE:]
    expected = _MAGIC + f"{key}\n{hashlib.sha256(payload).hexdigest()}\n".encode()
    return payload if header == expected else None


def _write_cache(key: str, payload: bytes) -> None:
    """Store `payload` atomically; any filesystem failure just leaves the entry unwritten."""
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
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass


def _undefined_symbols(elf: bytes) -> list[str]:
    """Names of the undefined global (not weak) symbols of a little-endian ELF64 object file."""
    (section_offset,) = struct.unpack_from("<Q", elf, 0x28)
    entry_size, count = struct.unpack_from("<HH", elf, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", elf, section_offset + i * entry_size)
        for i in range(count)
    ]
    names = []
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strings_offset = sections[link][4]
        for at in range(offset + symbol_size, offset + size, symbol_size):  # skip null symbol
            name, info, _, section_index = struct.unpack_from("<IBBH", elf, at)
            if section_index == 0 and info >> 4 == 1:  # SHN_UNDEF and STB_GLOBAL
                end = elf.index(b"\0", strings_offset + name)
                names.append(elf[strings_offset + name : end].decode())
    return names


class Engine:
    """A compiled, loaded program; keep it alive while any function pointer into it is used."""

    def __init__(self, llvm_ir: str, opt: int, obj: bytes, *, cached: bool, optimized=None) -> None:
        self.llvm_ir = llvm_ir
        self.opt = opt
        self.cached = cached
        self.timings: dict[str, float] = {}
        self._optimized = optimized  # the optimized ModuleRef, or its text once printed
        unresolved = [
            name
            for name in _undefined_symbols(obj)
            if name != "_GLOBAL_OFFSET_TABLE_" and not llvm.address_of_symbol(name)
        ]
        if unresolved:
            raise CompileError(f"unresolved external symbols: {', '.join(sorted(unresolved))}")
        with _LOCK:
            empty = llvm.parse_assembly("")
            self._engine = llvm.create_mcjit_compiler(empty, target_machine(opt=opt, jit=True))
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()

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
        with _LOCK:
            if self._optimized is None:
                tm = target_machine(opt=self.opt)
                self._optimized = _parse(self.llvm_ir, tm)
                optimize(self._optimized, tm, self.opt)
            if not isinstance(self._optimized, str):
                self._optimized = str(self._optimized)
            return self._optimized

    def assembly(self) -> str:
        """Host assembly of the optimized module."""
        # A separate target machine: MCJIT owns the one it was created with.
        tm = target_machine(opt=self.opt)
        with _LOCK:
            return tm.emit_assembly(_parse(self.optimized_ir, tm))


def compile_ir(
    llvm_ir: str, *, opt: int = 3, cache: bool = True, required_symbols: Iterable[str] = ()
) -> Engine:
    """JIT-compile `llvm_ir` for the host, through the on-disk object cache if `cache`."""
    key = cache_key(llvm_ir, opt) if cache else None
    timings: dict[str, float] = {}
    start = time.perf_counter()
    obj = _read_cache(key) if key else None
    module = None
    if obj is None:
        tm = target_machine(opt=opt, jit=True)
        with _LOCK:
            module = _parse(llvm_ir, tm)
            timings["parse"] = time.perf_counter() - start
            optimize(module, tm, opt)
            timings["optimize"] = time.perf_counter() - start - timings["parse"]
            obj = tm.emit_object(module)
            timings["codegen"] = time.perf_counter() - start - sum(timings.values())
        if key:
            _write_cache(key, obj)
        start = time.perf_counter()
    # On a hit, "load" includes reading the cache entry.
    engine = Engine(llvm_ir, opt, obj, cached=module is None, optimized=module)
    timings["load"] = time.perf_counter() - start
    engine.timings = timings
    for name in required_symbols:
        engine.address(name)
    return engine


def function(engine: Engine, name: str, restype, *argtypes):
    """A ctypes callable for the function `name`; it keeps `engine` alive."""
    callable_ = ctypes.CFUNCTYPE(restype, *argtypes)(engine.address(name))
    callable_.engine = engine
    return callable_
