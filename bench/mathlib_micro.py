"""Micro-benchmark of graphc.codegen.mathlib: ns per element of `out[i] = f(x[i])` loops.

Run: python bench/mathlib_micro.py [--quick] [--baseline REV] [--functions exp,tanh,...]
                                   [--interleave N]

Each function and dtype is a JIT-compiled loop (O3, host CPU, as graphc builds kernels) over
N = 10^6 elements, timed against NumPy and jax.numpy (jax.jit, one thread) when importable.
Like graphc's own loops over math-library calls, the loop carries the hint to interleave
it graphc.codegen.kernel.INTERLEAVE times (two vector iterations in flight); `--interleave 1`
leaves it to LLVM (not interleaved: latency then weighs more, operation count less).
`--baseline REV` also builds the loops from the mathlib.py of git revision REV, so old and
new code are measured side by side. The peers of one row run interleaved, round by round,
with the order rotated each round, and the table shows medians in ns/element; a burst of
load from another process on this shared machine then hits every peer alike. The row
`w3` is the W3 chain tanh(a*b + c)*sigmoid(d) - 0.5*a written as one loop. NumPy loads its
OpenBLAS in the environment `graphc bench` times it in (bench/host.py).
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import host  # noqa: E402 (imports no NumPy)

host.prepare_timed_process()  # before NumPy is imported

import argparse  # noqa: E402
import ctypes  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from llvmlite import binding as llvm  # noqa: E402
from llvmlite import ir  # noqa: E402

from bench import peers  # noqa: E402
from graphc.codegen import kernel as codegen  # noqa: E402
from graphc.codegen import mathlib  # noqa: E402

N = 10**6
FUNCTIONS = ["exp", "expm1", "log", "log1p", "tanh", "sigmoid", "sin", "cos", "w3"]
IR_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()


def _w3(lib, b, a, x, c, d):
    """tanh(a*x + c) * sigmoid(d) - 0.5*a."""
    t = a.type
    product = lib.tanh(b, b.fadd(b.fmul(a, x), c))
    return b.fsub(b.fmul(product, lib.sigmoid(b, d)), b.fmul(ir.Constant(t, 0.5), a))


def _loop(lib, name: str, dtype: str, interleave: int) -> ir.Module:
    """void kernel(ptr in0, ..., ptr out, i64 n): out[i] = f(in0[i], ...)."""
    emit = (lambda b, *args: _w3(lib, b, *args)) if name == "w3" else getattr(lib, name)
    arity = 4 if name == "w3" else 1
    module = mathlib.loop_module(f"{name}_{dtype}", IR_TYPES[dtype], arity, emit)
    module.triple = llvm.get_process_triple()
    if interleave > 1:
        latch = module.get_global("kernel").blocks[1].terminator
        latch.set_metadata("llvm.loop", codegen.loop_id(module, interleave_count=interleave))
    return module


def _machine():
    target = llvm.Target.from_triple(llvm.get_process_triple())
    features = llvm.get_host_cpu_features().flatten()
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features, opt=3)


def compile_loop(lib, name: str, dtype: str, interleave: int = codegen.INTERLEAVE):
    """(callable running the loop on pre-bound arrays' addresses, assembly text)."""
    machine = _machine()
    parsed = llvm.parse_assembly(str(_loop(lib, name, dtype, interleave)))
    parsed.verify()
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(parsed, builder)
    mathlib.link_trig(parsed, builder)  # sin/cos, linked in after optimization (older: no-op)
    assembly = machine.emit_assembly(parsed)
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    arity = 4 if name == "w3" else 1
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (arity + 1), ctypes.c_int64)
    kernel = signature(engine.get_function_address("kernel"))
    kernel.engine = engine
    return kernel, assembly


def load_revision(rev: str):
    """graphc/codegen/mathlib.py as of git revision `rev`, imported as a separate module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:graphc/codegen/mathlib.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = pathlib.Path(tempfile.mkdtemp()) / f"mathlib_{rev.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(name: str, dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "w3":
        return [rng.normal(size=N).astype(dtype) for _ in range(4)]
    if name in ("log", "log1p"):
        return [rng.uniform(0, 10, N).astype(dtype)]
    scale = {"sin": 10.0, "cos": 10.0}.get(name, 3.0)
    return [(rng.normal(size=N) * scale).astype(dtype)]


def numpy_function(name: str):
    if name == "sigmoid":
        return lambda x: 1 / (1 + np.exp(-x))
    if name == "w3":
        return lambda a, b, c, d: np.tanh(a * b + c) * (1 / (1 + np.exp(-d))) - 0.5 * a
    return getattr(np, name)


def jax_function(jax, name: str):
    jnp = jax.numpy
    if name == "sigmoid":
        return jax.jit(jax.nn.sigmoid)
    if name == "w3":
        return jax.jit(lambda a, b, c, d: jnp.tanh(a * b + c) * jax.nn.sigmoid(d) - 0.5 * a)
    return jax.jit(getattr(jnp, name))


def measure(calls: dict, rounds: int, repeat: int) -> dict[str, float]:
    """Median seconds per call of each callable, interleaved with rotated order."""
    for call in calls.values():
        call()
    names = list(calls)
    samples = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            for _ in range(repeat):
                calls[name]()
            samples[name].append((time.perf_counter() - start) / repeat)
    return {name: float(np.median(s)) for name, s in samples.items()}


def row(name: str, dtype: str, libraries: dict, jax, rounds: int, repeat: int, interleave: int):
    arrays = inputs(name, dtype)
    out = np.empty_like(arrays[0])
    addresses = [a.ctypes.data for a in arrays] + [out.ctypes.data, N]
    calls = {}
    for label, lib in libraries.items():
        kernel, _ = compile_loop(lib, name, dtype, interleave)
        calls[label] = lambda kernel=kernel: kernel(*addresses)
    function = numpy_function(name)
    calls["numpy"] = lambda: function(*arrays)
    if jax is not None:
        jitted = jax_function(jax, name)
        device = [jax.numpy.asarray(a) for a in arrays]
        calls["jax"] = lambda: jitted(*device).block_until_ready()
    with np.errstate(all="ignore"):
        return measure(calls, rounds, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--baseline", help="git revision whose mathlib.py to compare with")
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--interleave", type=int, default=codegen.INTERLEAVE)
    options = parser.parse_args()
    libraries = {"graphc": mathlib}
    if options.baseline:
        libraries = {options.baseline: load_revision(options.baseline), "graphc": mathlib}
    jax = None if options.no_jax else peers._import("jax")
    peers.limit_blas_threads()
    rounds, repeat = (7, 2) if options.quick else (15, 3)
    columns = [*libraries, "numpy"] + (["jax"] if jax is not None else [])
    print(
        f"ns/element, N = {N}, loops interleaved {options.interleave}x, "
        f"median of {rounds} interleaved rounds of {repeat} calls"
    )
    print(f"{'function':10} {'dtype':8}" + "".join(f"{c[:10]:>11}" for c in columns))
    for name in options.functions.split(","):
        for dtype in options.dtypes.split(","):
            times = row(name, dtype, libraries, jax, rounds, repeat, options.interleave)
            cells = "".join(f"{times[c] / N * 1e9:11.2f}" for c in columns)
            print(f"{name:10} {dtype:8}{cells}", flush=True)


if __name__ == "__main__":
    main()
