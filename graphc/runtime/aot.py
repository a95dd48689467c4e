# Over 500 lines on purpose: the export is one artifact, and its wrapper module, header text
# and link steps all follow one layout (state offsets, C names); split, each imports the rest.
"""Ahead-of-time export: a compiled step as `<name>.o`, `lib<name>.so` and `<name>.h` (DESIGN §5).

The exported object is the very LLVM IR the JIT compiled (`executable.llvm_ir`), linked
with a small wrapper module that gives it a C interface and embeds the state:

    size_t NAME_mem_size(void);          bytes of the memory block the caller provides
    void   NAME_init(void *mem);         copies the embedded state into mem, zeroes the arena
    void   NAME_run(void *mem, const T *in0, ..., T *out0, ...);   one step (or K)
    T     *NAME_state_<param>(void *mem);                          one per state tensor

The memory block holds everything a step reads or writes besides its arguments:

    mem ─► [ param 0 | param 1 | ... (each 64-byte aligned) ][ arena (intermediates) ]
           ^ state block: initial values embedded as constants ^ plan.arena_bytes

so two blocks are two independent models and the code allocates nothing. An executable
compiled with `steps=K` exports a `NAME_run` that runs K steps over inputs and outputs
stacked on a leading axis of length K (codegen/steps.py's loop), the state updated after
each, as the JIT's call does. The JIT's
`<name>_step` and `<name>_call` become internal symbols of the object: it exports only the C
interface above, so several models link into one program. When large kernels run on several
threads, the object carries its own copy of the thread pool (codegen/parallel.py), also
internal; its only global state, it keeps calls reentrant (a call that finds the pool busy
runs its chunks itself). External references are `memcpy`/`memset` (libc),
`pthread_create`/`pthread_detach`/`syscall` (futex, getcpu, sched_setaffinity) for the
pool and, for a CPU baseline without the instruction, `fma`/`floor`/`rint` from libm;
`external_symbols()` lists what an export needs.

`target=` cross-compiles (codegen/target.py PLATFORMS): the program is emitted again for
that triple's vectors and registers, on one thread (the pool is x86-64 Linux code). For
aarch64-linux-gnu the shared library is linked by `aarch64-linux-gnu-gcc` when it is on the
PATH. thumbv7em-none-eabihf (Cortex-M4F) gives a freestanding object, built without
position-independent code and with no shared library: it may need only memcpy/memset and
the compiler's runtime helpers (libgcc/compiler-rt: `__aeabi_*`, soft float64); a libm call
(say a float64 `fma` or a `floorf` the FPU has no instruction for) is a CompileError.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import textwrap
import warnings
from typing import NamedTuple

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from graphc.codegen import freestanding, parallel, target
from graphc.codegen.steps import emit_step_loop
from graphc.codegen.target import Target
from graphc.errors import CompileError
from graphc.passes.memory import aligned
from graphc.runtime import jit
from graphc.runtime.executable import stacked, symbol_name

C_TYPES = {
    "float32": "float",
    "float64": "double",
    "int32": "int32_t",
    "int64": "int64_t",
    "bool": "uint8_t",
}
LIBC = ("memcpy", "memset")
# in libc (pthread_* since glibc 2.34, else -lpthread)
PTHREAD = ("pthread_create", "pthread_detach", "syscall")
LIBM = ("fma", "fmaf", "floor", "floorf", "rint", "rintf", "ceil", "ceilf", "trunc", "truncf")
I64 = ir.IntType(64)
I8 = ir.IntType(8)
PTR = ir.PointerType()


class Artifacts(NamedTuple):
    """The files `export` writes."""

    object: pathlib.Path
    shared: pathlib.Path
    header: pathlib.Path


class StateTensor(NamedTuple):
    """One state tensor in the memory block."""

    name: str  # the graph's name, e.g. "adam.m[dense1.w]"
    c_name: str  # the accessor suffix, e.g. "adam_m_dense1_w"
    offset: int
    node: object


C_KEYWORDS = set(
    "auto bool break case char const continue default do double else enum extern float for goto"
    " if inline int long mem register restrict return short signed sizeof static struct switch"
    " typedef union unsigned void volatile while".split()
    # the types the header declares arguments with: a parameter of that name would shadow one
    + "int32_t int64_t uint8_t size_t".split()
)


def c_identifier(name: str) -> str:
    """`dense1.w` -> `dense1_w`, `adam.m[dense1.w]` -> `adam_m_dense1_w`, `int` -> `int_`."""
    cleaned = re.sub(r"_+", "_", re.sub(r"\W", "_", name)).strip("_")
    if not cleaned or cleaned[0].isdigit():
        return f"v_{cleaned}"
    return f"{cleaned}_" if cleaned in C_KEYWORDS else cleaned


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, k = name, 2
        while candidate in seen:
            candidate, k = f"{name}_{k}", k + 1
        seen.add(candidate)
        result.append(candidate)
    return result


def argument_names(graph) -> tuple[list[str], list[str]]:
    """The C names of `NAME_run`'s inputs and outputs: all distinct (and never `mem`). An
    output named like an input gets `_out`; any name taken already gets a number."""
    inputs = [c_identifier(n.name or f"in{i}") for i, n in enumerate(graph.inputs)]
    outputs = [c_identifier(n.name) if n.name else f"out{i}" for i, n in enumerate(graph.outputs)]
    outputs = [f"{n}_out" if n in inputs else n for n in outputs]
    names = _unique(inputs + outputs)
    return names[: len(inputs)], names[len(inputs) :]


def exported_symbols(executable, name: str) -> list[str]:
    """The global symbols an export named `name` defines (its C interface)."""
    state, _ = state_layout(executable)
    fixed = [f"{name}_mem_size", f"{name}_init", f"{name}_run"]
    fixed += [f"{name}_status"] if executable.plan.status is not None else []
    return fixed + [f"{name}_state_{tensor.c_name}" for tensor in state]


def _check_symbols(executable, name: str, program: llvm.ModuleRef) -> None:
    """Refuse an export name whose C interface would define a symbol the program or graphc's
    thread pool defines (`graphc_pool` would define graphc_pool_run)."""
    taken = {*parallel.POOL_SYMBOLS}
    taken |= {f.name for f in program.functions if not f.is_declaration}
    taken |= {g.name for g in program.global_variables}
    clashes = sorted(taken.intersection(exported_symbols(executable, name)))
    if clashes:
        raise CompileError(
            f"export name {name!r} would define {', '.join(clashes)}, which the compiled "
            f"program or graphc's runtime defines already: choose another name"
        )


def state_layout(executable) -> tuple[list[StateTensor], int]:
    """The state tensors with their offsets in the memory block, and the state block size."""
    params = executable.optimized.params
    c_names = _unique([c_identifier(p.name or f"param{i}") for i, p in enumerate(params)])
    state, offset = [], 0
    for i, (node, c_name) in enumerate(zip(params, c_names)):
        state.append(StateTensor(node.name or f"param{i}", c_name, offset, node))
        offset += aligned(node.type.nbytes)
    return state, offset


def _initial_bytes(node) -> bytes:
    value = np.asarray(node.attrs["storage"].value, dtype=node.type.np_dtype, order="C")
    if value.shape != node.shape:
        raise CompileError(
            f"param {node.name!r}: storage has shape {value.shape}, not {node.shape}"
        )
    return value.astype(np.uint8).tobytes() if node.dtype == "bool" else value.tobytes()


def wrapper_module(executable, name: str, pointer_bytes: int = 8) -> ir.Module:
    """The C entry points around `<executable.name>_step`, with the state embedded."""
    graph = executable.optimized
    state, state_bytes = state_layout(executable)
    arena_bytes = executable.plan.arena_bytes
    size_type = ir.IntType(8 * pointer_bytes)  # C's size_t
    module = ir.Module(name=f"{name}_c")
    arg_count = 1 + len(state) + len(graph.inputs) + len(graph.outputs)
    step_type = ir.FunctionType(ir.VoidType(), [PTR] * arg_count)
    step = ir.Function(module, step_type, f"{executable.name}_step")
    memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    memset = module.declare_intrinsic("llvm.memset", [PTR, I64])
    false = ir.IntType(1)(0)

    def at(b: ir.IRBuilder, mem, offset: int):
        return b.gep(mem, [I64(offset)], inbounds=True, source_etype=I8) if offset else mem

    size = ir.Function(module, ir.FunctionType(size_type, []), f"{name}_mem_size")
    b = ir.IRBuilder(size.append_basic_block("entry"))
    b.ret(size_type(state_bytes + arena_bytes))

    init = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"{name}_init")
    init.args[0].name = "mem"
    b = ir.IRBuilder(init.append_basic_block("entry"))
    for tensor in state:
        data = _initial_bytes(tensor.node)
        if not data:
            continue
        array_type = ir.ArrayType(I8, len(data))
        initial = ir.GlobalVariable(module, array_type, f"{name}.initial.{tensor.c_name}")
        initial.global_constant = True
        initial.linkage = "private"
        initial.unnamed_addr = True
        initial.align = 64
        initial.initializer = ir.Constant(array_type, bytearray(data))
        b.call(memcpy, [at(b, init.args[0], tensor.offset), initial, I64(len(data)), false])
    if arena_bytes:
        b.call(memset, [at(b, init.args[0], state_bytes), I8(0), I64(arena_bytes), false])
    b.ret_void()

    run_args = [PTR] * (1 + len(graph.inputs) + len(graph.outputs))
    run = ir.Function(module, ir.FunctionType(ir.VoidType(), run_args), f"{name}_run")
    mem, *buffers = run.args
    b = ir.IRBuilder(run.append_basic_block("entry"))
    status = executable.plan.status  # index checks report here (codegen/llvm.py)
    if status is not None:
        b.store(ir.IntType(32)(0), at(b, mem, state_bytes + status))
    fixed = [at(b, mem, state_bytes), *(at(b, mem, t.offset) for t in state)]
    if executable.steps == 1:
        b.call(step, [*fixed, *buffers])
    else:
        sizes = [n.type.nbytes for n in (*graph.inputs, *graph.outputs)]
        checks = getattr(executable.plan, "status", None)  # stop at a bad index
        stop = None if checks is None else at(b, mem, state_bytes + checks)
        emit_step_loop(b, step, fixed, list(zip(buffers, sizes)), executable.steps, stop)
    b.ret_void()

    if status is not None:
        word = ir.IntType(32)
        check = ir.Function(module, ir.FunctionType(word, [PTR]), f"{name}_status")
        b = ir.IRBuilder(check.append_basic_block("entry"))
        b.ret(b.load(at(b, check.args[0], state_bytes + status), typ=word))

    for tensor in state:
        accessor = ir.Function(module, ir.FunctionType(PTR, [PTR]), f"{name}_state_{tensor.c_name}")
        b = ir.IRBuilder(accessor.append_basic_block("entry"))
        b.ret(at(b, accessor.args[0], tensor.offset))
    return module


def export_ir(executable, name: str, cpu: str | Target | None = None) -> str:
    """One LLVM module: the program (entries made internal) plus the C interface. With
    `cpu` (a host CPU name, or a codegen Target of any triple), the program is emitted again
    with vectors and tiles for that CPU; else it is the JIT's."""
    if isinstance(cpu, str):
        cpu = target.for_cpu(cpu)
    program_ir = executable.llvm_ir if cpu is None else executable.llvm_ir_for(cpu)
    wrapper = wrapper_module(executable, name, cpu.pointer_bytes if cpu else 8)
    with jit._LOCK:
        context = llvm.create_context()
        program = llvm.parse_assembly(program_ir, context=context)
        _check_symbols(executable, name, program)
        program.link_in(llvm.parse_assembly(str(wrapper), context=context))
        internal = [f"{executable.name}_step", f"{executable.name}_call"]
        internal += [f"{executable.name}_steps"] if executable.steps > 1 else []
        if any(f.name in parallel.POOL_SYMBOLS for f in program.functions):
            pool = llvm.parse_assembly(str(parallel.pool_module()), context=context)
            program.link_in(pool)
            internal += parallel.POOL_SYMBOLS
        for function in internal:
            program.get_function(function).linkage = "internal"
        program.verify()
        return str(program)


def _linked(llvm_ir: str, module: ir.Module) -> str:
    """`llvm_ir` with `module` linked in."""
    with jit._LOCK:
        context = llvm.create_context()
        linked = llvm.parse_assembly(llvm_ir, context=context)
        linked.link_in(llvm.parse_assembly(str(module), context=context))
        return str(linked)


def external_symbols(obj: bytes) -> list[str]:
    """The undefined symbols of an object file (what the linker must supply)."""
    return sorted(set(jit._undefined_symbols(obj)) - {"_GLOBAL_OFFSET_TABLE_"})


def header_text(
    executable, name: str, cpu: str, externals: list[str], *, hosted: bool = True
) -> str:
    """`<name>.h`: the C interface, with every argument's shape and dtype documented
    (`hosted` False: for a freestanding target, whose memory block is a static array)."""
    graph = executable.optimized
    state, state_bytes = state_layout(executable)
    guard = f"GRAPHC_{name.upper()}_H"
    in_names, out_names = argument_names(graph)
    steps = executable.steps
    in_nodes, out_nodes = stacked(graph.inputs, steps), stacked(graph.outputs, steps)

    def shape(node) -> str:
        return f"[{', '.join(map(str, node.shape))}]" if node.shape else "scalar"

    def describe(node, label) -> str:
        count = node.type.size
        return f"{label}: {node.dtype} {shape(node)} ({count} element{'s' * (count != 1)})"

    updated = {p for p, v in graph.updates if v is not p}
    lines = [
        f"/* {name}.h -- generated by graphc {_version()} from graph {graph.name!r}; do not edit.",
        " *",
        f" * Compiled ahead of time for cpu={cpu}; position-independent code.",
        f" * Link with {name}.o or -l{name}"
        + (" and -lm" if any(s in LIBM for s in externals) else "")
        + (" and -pthread" if any(s in PTHREAD for s in externals) else "")
        + "; no other runtime library is needed.",
        f" * External symbols: {', '.join(externals) or 'none'}.",
    ]
    if not hosted:
        lines[2:4] = [
            f" * Compiled ahead of time for cpu={cpu}: freestanding code (no OS, no",
            " * allocation, no threads). Link with "
            + f"{name}.o; memcpy/memset and the compiler's runtime helpers (libgcc) are all",
            " * it needs.",
        ]
    if any(s in PTHREAD for s in externals):
        lines += [
            " * Large kernels share their chunks with worker threads that the first such call",
            " * starts (pthread_create, in libc since glibc 2.34: -pthread or -lpthread for an",
            " * older one) and that live as long as the process: an idle worker spins ~50 us,",
            " * then sleeps (futex); a call that wakes it keeps it off its own CPU for the wake",
            " * (sched_setaffinity). A call that finds them busy with another call, or a worker",
            " * that cannot start, leaves the chunks to the calling thread, so calls stay",
            " * reentrant; a forked child computes on its calling thread alone. Do not dlclose",
            " * the library after such a call: the workers run its code. Threads get the default",
            " * stack size; a matmul uses up to 400 KiB.",
        ]
    lines += [
        " *",
        " * Usage:",
        *(
            [f" *   void *mem = aligned_alloc(64, {name}_mem_size());  // must be 64-byte aligned"]
            if hosted
            else [f" *   static uint8_t mem[{name.upper()}_MEM_SIZE] __attribute__((aligned(64)));"]
        ),
        f" *   {name}_init(mem);        // the embedded state: parameters, optimizer state",
        f" *   {name}_run(mem, inputs..., outputs...);   // "
        + ("one step" if steps == 1 else f"{steps} steps")
        + ("; updates the state in mem" if updated else ""),
        *([" *   free(mem);"] if hosted else []),
        " * Everything a step keeps lives in mem: two blocks are two independent models, and",
        " * calls on different blocks may run concurrently. Arrays are dense, row-major (C order).",
        f" * Memory block: {state_bytes} bytes of state, then "
        f"{executable.plan.arena_bytes} bytes of working arena.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"/* Bytes of the memory block {name}_run needs (state + arena). */",
        f"size_t {name}_mem_size(void);",
        f"#define {name.upper()}_MEM_SIZE {state_bytes + executable.plan.arena_bytes}",
        "",
        "/* Writes the embedded initial state into mem (and zeroes the arena). */",
        f"void {name}_init(void *mem);",
        "",
        "/* One step: inputs, then outputs."
        if steps == 1
        else f"/* {steps} steps: inputs, then outputs, each stacked on a leading axis of length"
        f"\n * {steps} (step k reads and writes slice k); the state is updated after every step.",
    ]
    for node, c_name in zip(in_nodes, in_names):
        lines.append(f" *   {describe(node, c_name)}  (input)")
    for node, c_name in zip(out_nodes, out_names):
        lines.append(f" *   {describe(node, c_name)}  (output, written)")
    if updated:
        lines += textwrap.wrap(
            "Updates in mem: " + ", ".join(t.name for t in state if t.node in updated),
            width=92,
            initial_indent=" * ",
            subsequent_indent=" *   ",
            break_on_hyphens=False,
        )
    lines.append(" */")
    arguments = ["void *mem"]
    arguments += [f"const {C_TYPES[n.dtype]} *{c}" for n, c in zip(graph.inputs, in_names)]
    arguments += [f"{C_TYPES[n.dtype]} *{c}" for n, c in zip(graph.outputs, out_names)]
    lines.append(f"void {name}_run({', '.join(arguments)});")
    lines.append("")
    if executable.plan.status is not None:
        lines += _status_doc(executable, name)
    if state:
        lines += [
            "/* State tensors: pointers into mem, to read or write weights after init.",
            " * Accessor names are the graph's names with each run of non-identifier characters",
            " * replaced by '_' (dense1.w -> dense1_w, adam.m[dense1.w] -> adam_m_dense1_w). */",
        ]
    for tensor in state:
        node = tensor.node
        note = "updated by each step" if node in updated else "not written by a step"
        lines.append(f"/* {tensor.name}: {node.dtype} {shape(node)}, {note} */")
        lines.append(f"{C_TYPES[node.dtype]} *{name}_state_{tensor.c_name}(void *mem);")
    lines += ["", "#ifdef __cplusplus", "}", "#endif", "", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _status_doc(executable, name: str) -> list[str]:
    """The header's declaration of NAME_status: how a C caller learns of a bad index."""
    checks = executable._metadata.get("checks") or []
    lines = [
        f"/* 0 when every index the last {name}_run read was in range. Else the number of",
        " * the first kernel that met one out of range (below): the run stopped after that",
        " * kernel, so its outputs are not written and only state updates made before it",
        " * happened. No memory outside mem and the arguments is ever read or written.",
    ]
    for code, check in enumerate(checks, 1):
        lines += textwrap.wrap(
            f"{code}: {check}".replace("*/", "* /"),
            width=92,
            initial_indent=" *   ",
            subsequent_indent=" *     ",
            break_on_hyphens=False,
        )
    return [*lines, " */", f"int {name}_status(const void *mem);", ""]


def _version() -> str:
    return jit._graphc_version()


def export(
    executable,
    directory,
    name: str | None = None,
    cpu: str | None = None,
    target: str | None = None,
) -> Artifacts:
    """Write `<name>.o`, `lib<name>.so` and `<name>.h` for `executable` into `directory`,
    for `cpu` (default: the target's baseline, x86-64-v3 on the host) on the triple `target`
    (None: the host; a freestanding target gets no `.so`: `shared` is None)."""
    platform = _platform(target)
    cpu = cpu or platform.default_cpu
    name = symbol_name(name or executable.name)
    _check_cpu(cpu, platform.triple)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if [p.name for p in executable.optimized.params] != [p.name for p in executable.graph.params]:
        raise CompileError(f"{name}: the optimized program's state differs from the graph's")
    machine = Target(cpu, "", platform.triple)
    module_ir = export_ir(executable, name, machine)

    def emit(llvm_ir: str) -> bytes:
        reloc = "pic" if platform.hosted else "static"
        opt = executable.engine.opt
        return jit.emit_object(llvm_ir, cpu=cpu, opt=opt, triple=platform.triple, reloc=reloc)

    obj = emit(module_ir)
    externals = external_symbols(obj)
    substitutes = [s for s in externals if s in freestanding.SUBSTITUTES]
    if substitutes and not platform.hosted:  # libm calls LLVM made: defined in the object
        obj = emit(_linked(module_ir, freestanding.define(substitutes)))
        externals = external_symbols(obj)
    if platform.triple.startswith("thumb"):
        obj = freestanding.declare_vfp_arguments(obj)
    if platform.hosted:
        unknown = [s for s in externals if s not in LIBC + PTHREAD + LIBM]
        if unknown:
            raise CompileError(f"{name}: the object needs symbols outside libc/libm: {unknown}")
    else:
        unknown = [s for s in externals if s not in LIBC and not s.startswith("__")]
        if unknown:
            raise CompileError(
                f"{name}: the freestanding object for {platform.triple} needs {unknown} "
                "(libm or libc beyond memcpy/memset)"
            )
    paths = Artifacts(directory / f"{name}.o", directory / f"lib{name}.so", directory / f"{name}.h")
    paths.object.write_bytes(obj)
    if not platform.hosted:
        paths = paths._replace(shared=None)
    description = cpu if platform.triple == _HOST_TRIPLE else f"{cpu} ({platform.triple})"
    paths.header.write_text(
        header_text(executable, name, description, externals, hosted=platform.hosted)
    )
    if paths.shared is None:
        pass
    elif platform.triple == _HOST_TRIPLE:
        link_shared(
            paths.object,
            paths.shared,
            needs_libm=any(s in LIBM for s in externals),
            needs_threads=any(s in PTHREAD for s in externals),
        )
    else:
        paths = paths._replace(shared=_cross_link(paths, platform.triple, externals))
    return paths


# `export`'s parameter `target` hides the module: what it needs of it, under other names
_platform, _check_cpu, _HOST_TRIPLE = target.platform, target.check_cpu, target.HOST_TRIPLE


def _cross_link(paths: Artifacts, triple: str, externals: list[str]) -> pathlib.Path | None:
    """lib<name>.so linked by `<triple>-gcc`, or None (with a warning) when it is not installed."""
    compiler = shutil.which(f"{triple}-gcc")
    if compiler is None:
        warnings.warn(
            f"no {triple}-gcc to link {paths.shared.name}: {paths.object.name} and "
            f"{paths.header.name} are written",
            stacklevel=3,
        )
        return None
    link_shared(
        paths.object,
        paths.shared,
        needs_libm=any(s in LIBM for s in externals),
        compiler=[compiler],
    )
    return paths.shared


def link_shared(
    obj: pathlib.Path,
    shared: pathlib.Path,
    *,
    needs_libm: bool,
    needs_threads: bool = False,
    compiler: list[str] | None = None,
) -> None:
    """`cc -shared` the object into a shared library (`compiler`, else the C compiler from
    $CC, cc or gcc)."""
    compiler = compiler or shlex.split(os.environ.get("CC", ""))
    compiler = compiler or [shutil.which("cc") or shutil.which("gcc")]
    if not compiler[0]:
        raise CompileError(f"no C compiler (cc/gcc) to link {shared.name}; {obj.name} is written")
    command = [*compiler, "-shared", "-o", str(shared), str(obj)] + (["-lm"] if needs_libm else [])
    command += ["-pthread"] if needs_threads else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"linking {shared.name} failed: {result.stderr.strip()}")
