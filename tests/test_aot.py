"""AOT export (graphc/runtime/aot.py): C programs built with `gcc -Wall -Werror` against the JIT.

Each C test program is generated with its data as literal arrays (printed with round-trip
precision) and prints its results with %.17g, so Python compares them with the JIT exactly.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cprogram
import numpy as np
import pytest
from cprogram import GCC

import graphc as gc
from graphc.codegen import target
from graphc.runtime import aot, jit

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed (AOT tests build C)")
ROOT = pathlib.Path(__file__).resolve().parent.parent


# ---- helpers ----


def mlp_program(batch=4, features=3, *, name="train", activation="relu", train=True):
    """A float64 MLP step (Adam) or predictor, with its params and inputs."""
    x = gc.input("x", (batch, features), "float64")
    y = gc.input("y", (batch, 1), "float64")
    model = gc.nn.MLP(8, 2, 1, activation, seed=0, dtype="float64", name="mlp")
    prediction = model(x)
    if not train:
        return gc.Program([x], prediction, name=name), model.params()
    loss = gc.nn.mse_loss(prediction, y)
    updates = gc.optim.Adam(model.params(), lr=0.05).updates(loss)
    return gc.Program([x, y], loss, updates, name=name), model.params()


def batches(count, batch=4, features=3, seed=0):
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        x = rng.uniform(-1, 1, (batch, features))
        result.append((x, x.max(axis=1, keepdims=True)))
    return result


def c_array(name: str, array) -> str:
    values = ", ".join(repr(float(v)) for v in np.asarray(array, np.float64).ravel())
    return f"static const double {name}[] = {{{values}}};"


def build_and_run(tmp_path, source: str, objects, libm=True) -> list[list[float]]:
    """Compile `source` with the exported objects, run it; each output line as floats."""
    printed = cprogram.build_and_run(tmp_path, source, objects, ("-lm",) if libm else ())
    return [[float(v) for v in line.split()] for line in printed.splitlines()]


PRELUDE = """#include <stdio.h>
#include <stdlib.h>
"""


def print_array(expression: str, count: int) -> str:
    return (
        f'    for (int i = 0; i < {count}; i++) printf("%.17g ", {expression}[i]);\n'
        '    printf("\\n");\n'
    )


# ---- training from C reproduces the JIT ----


def test_training_step_from_c_matches_jit(tmp_path):
    program, params = mlp_program()
    step = gc.compile(program)
    paths = gc.aot.export(step, tmp_path, name="mlp")  # embeds the current (initial) weights
    assert paths == (tmp_path / "mlp.o", tmp_path / "libmlp.so", tmp_path / "mlp.h")
    data = batches(3)
    expected = [float(step(x, y)) for x, y in data]
    w = params[0]

    source = PRELUDE + '#include "mlp.h"\n'
    source += "\n".join(
        c_array(f"x{i}", x) + "\n" + c_array(f"y{i}", y) for i, (x, y) in enumerate(data)
    )
    source += "\nint main(void) {\n    void *mem = aligned_alloc(64, mlp_mem_size());\n"
    source += "    mlp_init(mem);\n    double loss;\n"
    for i in range(3):
        source += f'    mlp_run(mem, x{i}, y{i}, &loss);\n    printf("%.17g\\n", loss);\n'
    source += print_array("mlp_state_mlp_dense1_w(mem)", w.value.size)
    source += '    printf("%.17g\\n", *mlp_state_adam_t(mem));\n'
    source += "    free(mem);\n    return 0;\n}\n"
    lines = build_and_run(tmp_path, source, [paths.object])

    losses = [line[0] for line in lines[:3]]
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    assert losses[2] < losses[0]
    np.testing.assert_allclose(lines[3], w.value.ravel(), rtol=1e-12)  # the state accessor
    assert lines[4] == [3.0]


def test_two_memory_blocks_train_independently(tmp_path):
    program, params = mlp_program(name="twin")
    step = gc.compile(program)
    paths = gc.aot.export(step, tmp_path)  # the name defaults to the program's
    assert paths.header.name == "twin.h"
    initial = [p.value.copy() for p in params]
    runs = {"a": batches(3, seed=1), "b": batches(3, seed=2)}
    expected = {}
    for key, data in runs.items():
        for p, value in zip(params, initial):
            np.copyto(p.value, value)
        for node in step.graph.params:  # optimizer state back to zero too
            if node.name.startswith("adam."):
                node.attrs["storage"].value[...] = 0
        expected[key] = [float(step(x, y)) for x, y in data]
    assert expected["a"] != expected["b"]

    source = PRELUDE + '#include "twin.h"\n'
    for key, data in runs.items():
        for i, (x, y) in enumerate(data):
            source += c_array(f"x{key}{i}", x) + "\n" + c_array(f"y{key}{i}", y) + "\n"
    source += "int main(void) {\n    double la, lb;\n"
    source += "    void *a = aligned_alloc(64, twin_mem_size());\n"
    source += "    void *b = aligned_alloc(64, twin_mem_size());\n"
    source += "    twin_init(a);\n    twin_init(b);\n"
    for i in range(3):  # interleaved: a step of one block must not disturb the other
        source += f"    twin_run(a, xa{i}, ya{i}, &la);\n    twin_run(b, xb{i}, yb{i}, &lb);\n"
        source += '    printf("%.17g %.17g\\n", la, lb);\n'
    source += "    free(a);\n    free(b);\n    return 0;\n}\n"
    lines = build_and_run(tmp_path, source, [paths.object])
    np.testing.assert_allclose([line[0] for line in lines], expected["a"], rtol=1e-12)
    np.testing.assert_allclose([line[1] for line in lines], expected["b"], rtol=1e-12)


# ---- inference for the x86-64 baseline ----


def test_inference_for_baseline_cpu(tmp_path):
    program, _ = mlp_program(name="infer", activation="tanh", train=False)
    step = gc.compile(program)
    paths = gc.aot.export(step, tmp_path, cpu="x86-64")
    header = paths.header.read_text()
    assert "cpu=x86-64;" in header
    externals = aot.external_symbols(paths.object.read_bytes())
    assert set(externals) <= set(aot.LIBC + aot.LIBM)
    assert ("-lm" in header) == any(s in aot.LIBM for s in externals)
    ((x, _),) = batches(1, seed=3)
    expected = step(x)

    source = PRELUDE + '#include "infer.h"\n' + c_array("x", x) + "\n"
    source += "int main(void) {\n    double out[4];\n"
    source += "    void *mem = aligned_alloc(64, infer_mem_size());\n    infer_init(mem);\n"
    source += "    infer_run(mem, x, out);\n" + print_array("out", 4)
    source += "    free(mem);\n    return 0;\n}\n"
    (line,) = build_and_run(tmp_path, source, [paths.object])
    np.testing.assert_allclose(line, expected.ravel(), rtol=1e-12)


# ---- each CPU level gets its own vectors and tiles ----


def dense_program(name: str):
    """A float32 SGD step of a 64-64 Dense layer: its matmuls take the register-tiled path."""
    x = gc.input("x", (32, 64))
    y = gc.input("y", (32, 64))
    model = gc.nn.Dense(64, "tanh", seed=1, name="dense")
    loss = gc.nn.mse_loss(model(x), y)
    return gc.Program([x, y], loss, gc.optim.SGD(model.params(), lr=0.1).updates(loss), name=name)


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_each_cpu_level_gets_its_vectors_and_runs_from_c(tmp_path, cpu):
    """`export(cpu=...)` emits the program again for that CPU: zmm FMAs for x86-64-v4 (the
    AVX-512 tiles), ymm for x86-64-v3, whatever the host. The C program runs where the host
    can execute the code, and reproduces the JIT's steps."""
    step = gc.compile(dense_program(f"dense_{cpu[-2:]}"))
    name = step.name
    assembly = jit.emit_assembly(aot.export_ir(step, name, cpu), cpu=cpu)
    register = {"x86-64-v3": "ymm", "x86-64-v4": "zmm"}[cpu]
    assert re.search(rf"vfmadd\w+\s+[^\n]*%{register}", assembly)
    if target.for_cpu(cpu).vector_bytes > target.for_cpu().vector_bytes:
        pytest.skip(f"this host cannot run {cpu} code (its assembly was checked)")
    paths = gc.aot.export(step, tmp_path, cpu=cpu)
    rng = np.random.default_rng(4)
    data = [(rng.uniform(-1, 1, (32, 64)), rng.uniform(-1, 1, (32, 64))) for _ in range(2)]
    data = [(x.astype(np.float32), y.astype(np.float32)) for x, y in data]
    expected = [float(step(x, y)) for x, y in data]

    source = PRELUDE + f'#include "{name}.h"\n'
    for i, (x, y) in enumerate(data):
        for label, array in (("x", x), ("y", y)):
            values = ", ".join(f"{float(v)!r}f" for v in array.ravel())
            source += f"static const float {label}{i}[] = {{{values}}};\n"
    source += f"int main(void) {{\n    void *mem = aligned_alloc(64, {name}_mem_size());\n"
    source += f"    {name}_init(mem);\n    float loss;\n"
    for i in range(2):
        source += f'    {name}_run(mem, x{i}, y{i}, &loss);\n    printf("%.9g\\n", loss);\n'
    source += "    free(mem);\n    return 0;\n}\n"
    lines = build_and_run(tmp_path, source, [paths.object])
    np.testing.assert_allclose([line[0] for line in lines], expected, rtol=1e-5)


# ---- the artifacts ----


def test_object_needs_only_libc_and_libm(tmp_path):
    program, _ = mlp_program(name="deps")
    paths = gc.aot.export(gc.compile(program), tmp_path)
    externals = aot.external_symbols(paths.object.read_bytes())
    assert set(externals) <= {"memcpy", "memset"}, externals  # x86-64-v3 has FMA and rounding
    if shutil.which("nm"):
        listed = subprocess.run(
            ["nm", "-u", str(paths.object)], check=True, capture_output=True, text=True
        ).stdout.split()
        assert set(listed) - {"U"} <= {"memcpy", "memset", "_GLOBAL_OFFSET_TABLE_"}
        exported = subprocess.run(
            ["nm", "-g", "--defined-only", str(paths.object)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "deps_step" not in exported and "deps_call" not in exported  # internal
        assert "deps_run" in exported and "deps_state_mlp_dense2_b" in exported


def test_shared_library_runs_through_ctypes(tmp_path):
    program, params = mlp_program(name="shared")
    step = gc.compile(program)
    paths = gc.aot.export(step, tmp_path)
    ((x, y),) = batches(1, seed=4)
    expected = float(step(x, y))

    library = ctypes.CDLL(str(paths.shared))
    library.shared_mem_size.restype = ctypes.c_size_t
    library.shared_state_mlp_dense1_w.restype = ctypes.c_void_p
    size = library.shared_mem_size()
    raw = np.zeros(size + 64, np.uint8)
    mem = raw.ctypes.data + (-raw.ctypes.data % 64)
    library.shared_init(ctypes.c_void_p(mem))
    loss = np.zeros(1)
    pointer = lambda a: ctypes.c_void_p(a.ctypes.data)
    library.shared_run(ctypes.c_void_p(mem), pointer(x), pointer(y), pointer(loss))
    assert loss[0] == pytest.approx(expected, rel=1e-12)
    w = library.shared_state_mlp_dense1_w(ctypes.c_void_p(mem))
    trained = np.ctypeslib.as_array((ctypes.c_double * params[0].value.size).from_address(w))
    np.testing.assert_allclose(trained, params[0].value.ravel(), rtol=1e-12)


def test_header_compiles_as_c_and_cxx_and_documents_arguments(tmp_path):
    program, _ = mlp_program(name="doc")
    paths = gc.aot.export(gc.compile(program), tmp_path)
    header = paths.header.read_text()
    assert "#ifndef GRAPHC_DOC_H" in header and 'extern "C"' in header
    assert "x: float64 [4, 3]" in header and "y: float64 [4, 1]" in header
    assert "void doc_run(void *mem, const double *x, const double *y, double *out0);" in header
    assert "aligned_alloc(64, doc_mem_size())" in header
    assert "/* adam.m[mlp.dense1.w]: float64 [3, 8], updated by each step */" in header
    assert "double *doc_state_adam_m_mlp_dense1_w(void *mem);" in header
    for compiler, flag in ((GCC, "-std=c11"), (shutil.which("g++"), "-std=c++11")):
        if compiler:
            language = "c++" if compiler.endswith("++") else "c"
            subprocess.run(
                [compiler, "-Wall", "-Werror", "-Wextra", flag, "-x", language, "-fsyntax-only"]
                + [str(paths.header)],
                check=True,
            )


@pytest.mark.parametrize(
    ("name", "identifier"),
    [
        ("dense1.w", "dense1_w"),
        ("adam.m[dense1.w]", "adam_m_dense1_w"),
        ("grad(x)", "grad_x"),
        ("1st", "v_1st"),
        ("", "v_"),
        ("int", "int_"),
        ("mem", "mem_"),  # the first argument of NAME_run
    ],
)
def test_c_identifier(name, identifier):
    assert aot.c_identifier(name) == identifier


def test_colliding_state_names_get_suffixes(tmp_path):
    x = gc.input("x", (2,), "float64")
    a = gc.param("a.b", np.ones(2))
    b = gc.param("a[b]", np.full(2, 2.0))
    step = gc.compile(inputs=[x], outputs=x * a + b, name="clash")
    header = gc.aot.export(step, tmp_path).header.read_text()
    assert "clash_state_a_b(void *mem)" in header and "clash_state_a_b_2(void *mem)" in header


def test_argument_names_are_distinct_c_names(tmp_path):
    """Input x with outputs named x_out and x: `x_out` was declared twice."""
    from graphc.ir.parser import parse_graph
    from graphc.runtime.executable import Executable

    text = (
        "graph clash(%x: f64[2], %int32_t: f64[2]) {\n  %x_out: f64[2] = neg %x\n"
        "  %mem: f64[2] = add %x, %int32_t\n  return %x_out, %x, %mem, %x_out\n}\n"
    )
    step = Executable.build(parse_graph(text))
    paths = gc.aot.export(step, tmp_path)
    header = paths.header.read_text()
    arguments = (
        "void *mem, const double *x, const double *int32_t_, "
        "double *x_out, double *x_out_2, double *mem_, double *x_out_3"
    )
    assert f"void clash_run({arguments});" in header
    if GCC:
        subprocess.run([GCC, "-Wall", "-Werror", "-fsyntax-only", str(paths.header)], check=True)


def test_export_names_never_collide_with_graphcs_own_symbols(tmp_path, monkeypatch):
    """A multi-threaded export named graphc_pool would define graphc_pool_run twice."""
    monkeypatch.setenv("GRAPHC_THREADS", "4")
    x = gc.input("x", (512, 512), "float32")
    step = gc.compile(inputs=[x], outputs=x @ x, name="graphc_pool")
    with pytest.raises(gc.CompileError, match="'graphc_pool' would define graphc_pool_run"):
        gc.aot.export(step, tmp_path)
    with pytest.raises(gc.CompileError, match="choose another name"):
        gc.aot.export(step, tmp_path, name="graphc_pool")
    assert "pthread_create" in gc.aot.export(step, tmp_path, name="pool").header.read_text()
    small = gc.compile(inputs=[x], outputs=x * 2, name="graphc_pool")  # no threads: the same
    with pytest.raises(gc.CompileError, match="graphc_pool_run"):
        gc.aot.export(small, tmp_path)


# ---- the example ----


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_example_makefile(tmp_path):
    build = tmp_path / "build"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            "make",
            "-C",
            str(ROOT / "examples" / "aot_c"),
            f"BUILD={build}",
            f"PYTHON={sys.executable}",
        ]
        + ["run"],
        check=True,
        capture_output=True,
        env=environment,
    )
    result = subprocess.run([str(build / "main")], check=True, capture_output=True, text=True)
    assert "step   1  loss" in result.stdout and "adam steps taken: 1000" in result.stdout
    assert result.stdout.count("predicted") == 4
