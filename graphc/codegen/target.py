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

__all__ = ["Target", "check_cpu", "for_cpu", "host", "keep_vectors_whole"]

# LLVM splits vectors wider than the target's preferred width unless a function asks for
# them: a matmul written with 64-byte vectors carries this attribute.
WIDE_VECTOR_ATTRIBUTE = '"min-legal-vector-width"="512"'

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
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
class Target:
    """A CPU to generate code for. `features` is LLVM's "+avx2,..." string, "" for the
    features the CPU name implies."""

    cpu: str
    features: str = ""

    def machine(self, **options) -> llvm.TargetMachine:
        """An LLVM target machine for this CPU (options as `create_target_machine`'s)."""
        with LLVM_LOCK:
            target = llvm.Target.from_default_triple()
            return target.create_target_machine(cpu=self.cpu, features=self.features, **options)

    @property
    def vector_bytes(self) -> int:
        """The widest vector register: 16 (SSE), 32 (AVX, AVX2) or 64 (AVX-512)."""
        return _probe(self.cpu, self.features)[0]

    @property
    def registers(self) -> int:
        """Vector registers: 32 with AVX-512, else 16."""
        return 32 if self.vector_bytes == 64 else 16

    @property
    def preferred_vector_bytes(self) -> int:
        """The vector width LLVM's loop vectorizer uses for a plain float loop."""
        return _probe(self.cpu, self.features)[1]

    def lanes(self, itemsize: int) -> int:
        """Elements of `itemsize` bytes in one of the widest vectors."""
        return self.vector_bytes // itemsize


class _Attributes(ir.values.FunctionAttributes):
    """Function attributes that also accept WIDE_VECTOR_ATTRIBUTE (llvmlite knows only the
    built-in ones)."""

    _known = ir.values.FunctionAttributes._known | {WIDE_VECTOR_ATTRIBUTE}


def keep_vectors_whole(function: ir.Function) -> None:
    """Let `function` use 64-byte vectors whole on a target that prefers 32-byte ones."""
    attributes = _Attributes(function.attributes)
    attributes.add(WIDE_VECTOR_ATTRIBUTE)
    function.attributes = attributes


def _register_bytes(assembly: str) -> int:
    """The widest vector register class named in `assembly`, in bytes."""
    for name, size in (("zmm", 64), ("ymm", 32), ("xmm", 16)):
        if re.search(rf"%{name}\d+\b", assembly) or re.search(rf"\b{name}\d+\b", assembly):
            return size
    return 8


@functools.cache
def _probe(cpu: str, features: str) -> tuple[int, int]:
    """(widest vector bytes, loop-vectorizer vector bytes) of LLVM's code for this CPU."""
    target = Target(cpu, features)
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
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()
target = llvm.Target.from_default_triple()
machine = target.create_target_machine(cpu=sys.argv[1], reloc="pic")
module = llvm.parse_assembly("define void @f() {\\n  ret void\\n}\\n")
module.triple = machine.triple
machine.emit_object(module)
"""
KNOWN_CPUS = {"x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"}


@functools.cache
def check_cpu(cpu: str) -> None:
    """Reject a CPU name LLVM does not know, in a child process: LLVM may abort on one."""
    if cpu in KNOWN_CPUS or cpu == llvm.get_host_cpu_name():
        return
    result = subprocess.run(
        [sys.executable, "-c", _CHECK_CPU, cpu], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 or "not a recognized processor" in result.stderr:
        raise CompileError(
            f"unknown CPU {cpu!r} for {llvm.get_default_triple()} "
            f"(e.g. x86-64, x86-64-v3, haswell, znver3)"
        )


def for_cpu(cpu: str | None = None, features: str | None = None) -> Target:
    """The target for CPU `cpu` (None: the host's CPU and features)."""
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
