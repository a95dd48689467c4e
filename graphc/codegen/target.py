"""The CPU that code is generated for: its name, features, vector width and register count.

Code generation never assumes one CPU. What it needs to know is read off LLVM's target
machine for the chosen CPU, by compiling a probe function and reading the assembly:

    <16 x float> fadd, "min-legal-vector-width"="512"  -> zmm: 64-byte vectors, 32 registers
                                                        -> ymm: 32-byte vectors, 16 registers
                                                        -> xmm: 16-byte vectors, 16 registers

(AVX-512 is what brings both the 64-byte vectors and registers 16-31.) The probe answers
for any CPU name LLVM knows, the host's or another one's, so an AOT build for x86-64-v4
tiles its matmuls for AVX-512 on an AVX2 machine. `preferred_vector_bytes` is the width
LLVM's loop vectorizer picks for a plain loop (some AVX-512 CPUs, x86-64-v4 among them,
prefer 256-bit vectors there); code that vectorizes by itself is judged against it.

The JIT's target is the host's CPU and features, unless the environment variable
GRAPHC_CPU names another CPU (`GRAPHC_CPU=x86-64-v3` runs the AVX2 code on an AVX-512
host). A GRAPHC_CPU whose vectors the host cannot execute is a CompileError, not SIGILL.

A Target also names its triple (default: the host's), so AOT cross-compiles with the same
probes. `PLATFORMS` are the triples graphc exports for, each with its default CPU:

    x86_64 (host)           x86-64-v3   ymm/zmm, as above
    aarch64-linux-gnu       generic     NEON: v0-v31.4s -> 16-byte vectors, 32 registers
    thumbv7em-none-eabihf   cortex-m4   FPv4-SP: s0-s31, no vector unit -> 4-byte "vectors"
                                        (one float), 32 registers; freestanding: no OS, no
                                        libc besides memcpy/memset, no thread pool

A float64 element is wider than a Cortex-M4's "vector": `lanes` is then 1 and a matmul takes
the plain loop (codegen/tiling.py); float64 arithmetic there is libgcc's soft float.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir

from graphc.errors import CompileError

__all__ = ["PLATFORMS", "Platform", "Target", "check_cpu", "for_cpu", "host", "keep_vectors_whole"]

# LLVM splits vectors wider than the target's preferred width unless a function asks for
# them: a matmul written with 64-byte vectors carries this attribute.
WIDE_VECTOR_ATTRIBUTE = '"min-legal-vector-width"="512"'

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
llvm.initialize_all_targets()  # cross-compilation (AOT --target); 0.05 s, once
llvm.initialize_all_asmprinters()
HOST_TRIPLE = llvm.get_default_triple()
# LLVM calls are serialized by this one lock (runtime/jit.py uses it too)
LLVM_LOCK = threading.RLock()


def _fresh_lock_in_child() -> None:
    """A forked child runs only the thread that forked: a lock another thread held then (in
    the middle of a compile) would stay held in the child forever. The child gets a new one;
    runtime/jit.py's own handler, registered after this one, picks it up."""
    global LLVM_LOCK
    LLVM_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)

_WIDE_PROBE = f"""
define <16 x float> @probe(<16 x float> %a, <16 x float> %b) {WIDE_VECTOR_ATTRIBUTE} {{
  %c = fadd <16 x float> %a, %b
  ret <16 x float> %c
}}
"""

_LOOP_PROBE = """
define void @probe(ptr noalias %a, ptr noalias %b) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %next, %loop ]
  %pa = getelementptr inbounds float, ptr %a, i64 %i
  %pb = getelementptr inbounds float, ptr %b, i64 %i
  %x = load float, ptr %pa
  %y = load float, ptr %pb
  %z = fmul float %x, %y
  store float %z, ptr %pa
  %next = add i64 %i, 1
  %done = icmp eq i64 %next, 4096
  br i1 %done, label %exit, label %loop
exit:
  ret void
}
"""


@dataclass(frozen=True)
class Platform:
    """A triple graphc exports for: its default CPU, and whether it has an OS and libc
    (hosted: a thread pool, a shared library) or is freestanding (a microcontroller)."""

    triple: str
    default_cpu: str
    hosted: bool
    description: str


PLATFORMS = {
    platform.triple: platform
    for platform in (
        Platform(HOST_TRIPLE, "x86-64-v3", True, "the host: x86-64 Linux (default)"),
        Platform("aarch64-linux-gnu", "generic", True, "64-bit ARM Linux (NEON)"),
        Platform("thumbv7em-none-eabihf", "cortex-m4", False, "Cortex-M4F, freestanding (no libc)"),
    )
}
# other spellings of the host's triple
_ALIASES = {"host": HOST_TRIPLE, "native": HOST_TRIPLE}
if HOST_TRIPLE.startswith("x86_64-"):
    _ALIASES |= {f"x86_64-{vendor}linux-gnu": HOST_TRIPLE for vendor in ("", "pc-", "unknown-")}


def platform(triple: str | None = None) -> Platform:
    """The platform of `triple` (None, "host": the host's); an unknown one is a CompileError."""
    name = _ALIASES.get(triple or "host", triple)
    if name not in PLATFORMS:
        known = ", ".join(PLATFORMS)
        raise CompileError(f"unknown target {triple!r}: graphc exports for {known}")
    return PLATFORMS[name]


@dataclass(frozen=True)
class Target:
    """A CPU to generate code for. `features` is LLVM's "+avx2,..." string, "" for the
    features the CPU name implies; `triple` the system (default: the host's)."""

    cpu: str
    features: str = ""
    triple: str = HOST_TRIPLE

    def machine(self, **options) -> llvm.TargetMachine:
        """An LLVM target machine for this CPU (options as `create_target_machine`'s)."""
        with LLVM_LOCK:
            target = llvm.Target.from_triple(self.triple)
            return target.create_target_machine(cpu=self.cpu, features=self.features, **options)

    @property
    def hosted(self) -> bool:
        """Whether code for this target may call an OS and libc beyond memcpy/memset."""
        return platform(self.triple).hosted if self.triple in PLATFORMS else True

    @property
    def pointer_bytes(self) -> int:
        """The size of a pointer (and of C's size_t): 8, or 4 on a 32-bit target."""
        return 4 if self.triple.split("-")[0].startswith(("thumb", "arm", "i386", "i686")) else 8

    @property
    def vector_bytes(self) -> int:
        """The widest vector register: 16 (SSE, NEON), 32 (AVX, AVX2), 64 (AVX-512), or 4
        on an FPU without vectors (Cortex-M4F)."""
        return _probe(self.cpu, self.features, self.triple)[0]

    @property
    def registers(self) -> int:
        """Vector (or float) registers: x86-64 32 with AVX-512, else 16; AArch64 32 (v0-v31);
        32-bit ARM 32 single-precision (s0-s31) without NEON, else 16 (q0-q15)."""
        if self.triple.startswith("x86_64"):
            return 32 if self.vector_bytes == 64 else 16
        if self.triple.startswith("aarch64"):
            return 32
        return 32 if self.vector_bytes <= 4 else 16

    @property
    def preferred_vector_bytes(self) -> int:
        """The vector width LLVM's loop vectorizer uses for a plain float loop."""
        return _probe(self.cpu, self.features, self.triple)[1]

    def lanes(self, itemsize: int) -> int:
        """Elements of `itemsize` bytes in one of the widest vectors (at least 1: a float64
        on a single-precision FPU is one element per "vector")."""
        return max(1, self.vector_bytes // itemsize)


class _Attributes(ir.values.FunctionAttributes):
    """Function attributes that also accept WIDE_VECTOR_ATTRIBUTE (llvmlite knows only the
    built-in ones)."""

    _known = ir.values.FunctionAttributes._known | {WIDE_VECTOR_ATTRIBUTE}


def keep_vectors_whole(function: ir.Function) -> None:
    """Let `function` use 64-byte vectors whole on a target that prefers 32-byte ones."""
    attributes = _Attributes(function.attributes)
    attributes.add(WIDE_VECTOR_ATTRIBUTE)
    function.attributes = attributes


# Register classes in assembly, widest first: x86-64 (AT&T or Intel syntax), then ARM —
# AArch64's v0.4s/q0, 32-bit ARM's q0 (NEON), d0 in a vector instruction, s0 (a float).
_REGISTER_CLASSES = (
    (r"%?\bzmm\d+\b", 64),
    (r"%?\bymm\d+\b", 32),
    (r"%?\bxmm\d+\b", 16),
    (r"\bv\d+\.(?:2d|4s|8h|16b)\b|\bq\d+\b", 16),
    (r"\bv\d+\.(?:2s|4h|8b)\b|\bvadd\.f32\s+d\d+\b", 8),
    (r"\bs\d+\b", 4),
)


def _register_bytes(assembly: str) -> int:
    """The widest vector register class named in `assembly`, in bytes."""
    for pattern, size in _REGISTER_CLASSES:
        if re.search(pattern, assembly):
            return size
    return 8


@functools.cache
def _probe(cpu: str, features: str, triple: str = HOST_TRIPLE) -> tuple[int, int]:
    """(widest vector bytes, loop-vectorizer vector bytes) of LLVM's code for this CPU."""
    target = Target(cpu, features, triple)
    with LLVM_LOCK:
        machine = target.machine(opt=2)
        widths = []
        for text, optimize in ((_WIDE_PROBE, False), (_LOOP_PROBE, True)):
            module = llvm.parse_assembly(text, context=llvm.create_context())
            module.triple = machine.triple
            module.data_layout = str(machine.target_data)
            if optimize:
                tuning = llvm.create_pipeline_tuning_options(speed_level=2)
                tuning.loop_vectorization = True
                builder = llvm.create_pass_builder(machine, tuning)
                builder.getModulePassManager().run(module, builder)
            widths.append(_register_bytes(machine.emit_assembly(module)))
    return widths[0], widths[1]


@functools.cache
def _host_features() -> str:
    return llvm.get_host_cpu_features().flatten()  # 0.25 ms per call, so asked once


_CHECK_CPU = """
import sys
import llvmlite.binding as llvm
llvm.initialize_all_targets()
llvm.initialize_all_asmprinters()
target = llvm.Target.from_triple(sys.argv[2])
machine = target.create_target_machine(cpu=sys.argv[1], reloc="pic")
module = llvm.parse_assembly("define void @f() {\\n  ret void\\n}\\n")
module.triple = machine.triple
machine.emit_object(module)
"""
KNOWN_CPUS = {"x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"}
_EXAMPLE_CPUS = {
    "x86_64": "x86-64, x86-64-v3, haswell, znver3",
    "aarch64": "generic, cortex-a53, cortex-a72, neoverse-n1, apple-m1",
    "thumbv7em": "cortex-m4, cortex-m7",
}


@functools.cache
def check_cpu(cpu: str, triple: str = HOST_TRIPLE) -> None:
    """Reject a CPU name LLVM does not know, in a child process: LLVM may abort on one."""
    if triple == HOST_TRIPLE and (cpu in KNOWN_CPUS or cpu == llvm.get_host_cpu_name()):
        return
    if cpu == PLATFORMS.get(triple, Platform(triple, "", True, "")).default_cpu:
        return
    result = subprocess.run(
        [sys.executable, "-c", _CHECK_CPU, cpu, triple], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 or "not a recognized processor" in result.stderr:
        examples = _EXAMPLE_CPUS.get(triple.split("-")[0], "")
        raise CompileError(
            f"unknown CPU {cpu!r} for {triple}" + (f" (e.g. {examples})" if examples else "")
        )


def for_cpu(
    cpu: str | None = None, features: str | None = None, triple: str | None = None
) -> Target:
    """The target for CPU `cpu` (None: the host's CPU and features, or the default CPU of
    `triple`) on `triple` (None: the host's; checked against PLATFORMS otherwise)."""
    if triple is not None and triple != HOST_TRIPLE:
        triple = platform(triple).triple
        if triple != HOST_TRIPLE:
            return Target(cpu or platform(triple).default_cpu, features or "", triple)
    if cpu is None:
        return Target(llvm.get_host_cpu_name(), _host_features() if features is None else features)
    return Target(cpu, features or "")


def host() -> Target:
    """The JIT's target: $GRAPHC_CPU if set (checked against the host), else the host CPU."""
    name = os.environ.get("GRAPHC_CPU", "").strip()
    if not name or name == "host":
        return for_cpu()
    return _checked(name)


@functools.cache
def _checked(name: str) -> Target:
    try:
        check_cpu(name)
    except CompileError as error:
        raise CompileError(f"GRAPHC_CPU={name}: {error}") from None
    target = Target(name)
    native = for_cpu()
    if target.vector_bytes > native.vector_bytes:
        raise CompileError(
            f"GRAPHC_CPU={name}: its {target.vector_bytes}-byte vectors need instructions "
            f"this host ({native.cpu}, {native.vector_bytes}-byte vectors) cannot execute"
        )
    return target
