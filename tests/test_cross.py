"""AOT cross-compilation (`gc.aot.export(..., target=TRIPLE)`, `graphc aot --target`).

aarch64-linux-gnu: the C program is built with aarch64-linux-gnu-gcc and run under
qemu-aarch64, against the JIT. thumbv7em-none-eabihf (Cortex-M4F): freestanding objects linked
with arm-none-eabi-gcc and examples/aot_cortex_m4's start-up code, run under qemu-system-arm
(mps2-an386); results come back as hex bit patterns through semihosting. Each tool test skips,
naming the Debian package, where the tool is not installed (.ci/run installs them).
"""

from __future__ import annotations

import ctypes
import math
import pathlib
import re
import shutil
import struct
import subprocess
from fractions import Fraction

import numpy as np
import pytest

import graphc as gc
from graphc.cli import parser
from graphc.codegen import freestanding, target, tiling
from graphc.errors import CompileError
from graphc.runtime import aot, jit

ROOT = pathlib.Path(__file__).resolve().parent.parent
M4_EXAMPLE = ROOT / "examples" / "aot_cortex_m4"
AARCH64, THUMB = "aarch64-linux-gnu", "thumbv7em-none-eabihf"
M4_FLAGS = ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb"]


def needs(*tools_and_packages: tuple[str, str]):
    missing = [(tool, package) for tool, package in tools_and_packages if not shutil.which(tool)]
    reason = "; ".join(f"{tool} is not installed (Debian: {package})" for tool, package in missing)
    return pytest.mark.skipif(bool(missing), reason=reason)


AARCH64_TOOLS = needs(
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"),
    ("qemu-aarch64", "qemu-user"),
)
M4_GCC = ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi")
M4_QEMU = ("qemu-system-arm", "qemu-system-arm")


def mlp_program(dtype: str, batch=4, features=3):
    """An MLP training step (Adam), its first weight, and three batches."""
    x = gc.input("x", (batch, features), dtype)
    y = gc.input("y", (batch, 1), dtype)
    model = gc.nn.MLP(8, 2, 1, seed=0, dtype=dtype, name="mlp")
    loss = gc.nn.mse_loss(model(x), y)
    updates = gc.optim.Adam(model.params(), lr=0.05).updates(loss)
    rng = np.random.default_rng(0)
    data = []
    for _ in range(3):
        inputs = rng.uniform(-1, 1, (batch, features)).astype(dtype)
        data.append((inputs, inputs.max(axis=1, keepdims=True)))
    return gc.Program([x, y], loss, updates, name="mlp"), model.params()[0], data


def c_array(name: str, array, c_type: str) -> str:
    values = ", ".join(repr(float(v)) for v in np.asarray(array, np.float64).ravel())
    return f"static const {c_type} {name}[] = {{{values}}};"


# ---- targets, without any tool ----


def test_targets_read_their_registers():
    neon = target.for_cpu(triple=AARCH64)
    assert (neon.cpu, neon.vector_bytes, neon.registers, neon.lanes(8)) == ("generic", 16, 32, 2)
    m4 = target.for_cpu(triple=THUMB)
    assert (m4.cpu, m4.vector_bytes, m4.registers, m4.pointer_bytes) == ("cortex-m4", 4, 32, 4)
    assert m4.lanes(4) == m4.lanes(8) == 1 and not m4.hosted
    rows = tiling.Operand((3, 1))
    # float64 is wider than the M4's float registers: the plain loop; float32 scalar tiles
    assert tiling.choose_path(40, 3, 3, "float64", rows, rows, None, m4) == "loop"
    tile = tiling.choose_tiling(40, 30, 20, "float32", (20, 1), (30, 1), m4)
    assert tile.lanes == 1 and tile.mr * tile.nr + tile.nr + 1 <= m4.registers


def test_unknown_targets_and_cpus_are_compile_errors(tmp_path):
    program, _, _ = mlp_program("float32")
    step = gc.compile(program)
    with pytest.raises(CompileError, match="unknown target 'riscv64-linux-gnu'.*aarch64"):
        gc.aot.export(step, tmp_path, target="riscv64-linux-gnu")
    with pytest.raises(CompileError, match="unknown CPU 'haswell' for aarch64"):
        gc.aot.export(step, tmp_path, target=AARCH64, cpu="haswell")


def test_cli_help_lists_the_targets():
    aot_parser = parser()._subparsers._group_actions[0].choices["aot"]
    text = "".join(aot_parser.format_help().split())  # argparse wraps at hyphens
    for name in ("--targetTRIPLE", "x86_64", AARCH64, THUMB):
        assert name in text


def test_freestanding_substitutes_compute_libm():
    """rint/floor/ceil/trunc exactly, fma exactly where mathlib needs it, within rounding else."""
    names = ["rint", "floor", "ceil", "trunc", "fma", "rintf", "floorf"]
    # renamed and exported so that the host can call them (a call to `fma` would be the host's)
    pattern = r'@"(' + "|".join(names) + r')"'
    text = re.sub(pattern, r'@"graphc_test_\1"', str(freestanding.define(names)))
    engine = jit.compile_ir(text.replace("internal ", ""), cache=False)
    unary = {
        n: jit.function(engine, f"graphc_test_{n}", ctypes.c_double, ctypes.c_double)
        for n in names[:4]
    }
    values = [0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 0.49999999999999994, 2.0**52 + 1, -(2.0**60)]
    values += [1e-310, -7.25, math.inf, -math.inf]
    numpy_ = {"rint": np.rint, "floor": np.floor, "ceil": np.ceil, "trunc": np.trunc}
    for name, function in unary.items():
        for value in values:
            got, want = function(value), numpy_[name](value)
            assert got == want and math.copysign(1, got) == math.copysign(1, want), (name, value)
        assert math.isnan(function(math.nan))
    rintf = jit.function(engine, "graphc_test_rintf", ctypes.c_float, ctypes.c_float)
    assert [rintf(v) for v in (2.5, -3.5, 0.4)] == [2.0, -4.0, 0.0]
    fma = jit.function(
        engine,
        "graphc_test_fma",
        ctypes.c_double,
        ctypes.c_double,
        ctypes.c_double,
        ctypes.c_double,
    )
    rng = np.random.default_rng(1)
    exact = 0
    for a, b, c in rng.standard_normal((2000, 3)) * np.exp(rng.uniform(-20, 20, (2000, 3))):
        a, b, c = float(a), float(b), float(c)
        assert fma(a, b, -a * b) == float(Fraction(a) * Fraction(b) - Fraction(a * b))
        want = float(Fraction(a) * Fraction(b) + Fraction(c))  # correctly rounded
        got = fma(a, b, c)
        assert abs(got - want) <= math.ulp(want)
        exact += got == want
    assert exact >= 1990
    assert fma(1.0, -0.0, -0.0) == 0.0 and math.copysign(1, fma(1.0, -0.0, -0.0)) == -1
    assert math.isnan(fma(math.inf, 0.0, 1.0)) and fma(1e300, 1e300, 1.0) == math.inf


# ---- aarch64 Linux under qemu-aarch64 ----


@AARCH64_TOOLS
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_aarch64_training_step_under_qemu_matches_jit(tmp_path, dtype, rtol):
    program, w, data = mlp_program(dtype)
    step = gc.compile(program)
    paths = gc.aot.export(step, tmp_path, target=AARCH64)
    expected = [float(step(x, y)) for x, y in data]
    assert set(aot.external_symbols(paths.object.read_bytes())) <= {"memcpy", "memset"}
    for path in (paths.object, paths.shared):
        assert struct.unpack_from("<H", path.read_bytes(), 18) == (183,)  # EM_AARCH64
    assert "cpu=generic (aarch64-linux-gnu)" in paths.header.read_text()
    disassembly = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(paths.object)], capture_output=True, text=True
    ).stdout
    assert re.search(r"\bfmla\s+v\d+\.(2d|4s)", disassembly)  # NEON vector FMAs

    c_type = "double" if dtype == "float64" else "float"
    source = '#include <stdio.h>\n#include <stdlib.h>\n#include "mlp.h"\n'
    for i, (x, y) in enumerate(data):
        source += c_array(f"x{i}", x, c_type) + "\n" + c_array(f"y{i}", y, c_type) + "\n"
    source += "int main(void) {\n    void *mem = aligned_alloc(64, mlp_mem_size());\n"
    source += f"    mlp_init(mem);\n    {c_type} loss;\n"
    for i in range(3):
        source += f'    mlp_run(mem, x{i}, y{i}, &loss);\n    printf("%.17g\\n", loss);\n'
    source += f"    for (int i = 0; i < {w.value.size}; i++)"
    source += ' printf("%.17g ", mlp_state_mlp_dense1_w(mem)[i]);\n'
    source += '    printf("\\n");\n    free(mem);\n    return 0;\n}\n'
    (tmp_path / "main.c").write_text(source)
    program_path = tmp_path / "main"
    command = ["aarch64-linux-gnu-gcc", "-O1", "-Wall", "-Werror", "-std=c11", f"-I{tmp_path}"]
    command += ["-o", str(program_path), str(tmp_path / "main.c"), str(paths.object)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    run = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(program_path)]
    lines = subprocess.run(run, check=True, capture_output=True, text=True).stdout.splitlines()
    np.testing.assert_allclose([float(v) for v in lines[:3]], expected, rtol=rtol)
    np.testing.assert_allclose([float(v) for v in lines[3].split()], w.value.ravel(), rtol=rtol)


# ---- Cortex-M4F, freestanding, under qemu-system-arm ----

# libgcc's soft float (__adddf3, __truncdfsf2 ...) and run-time ABI (__aeabi_*) helpers
FREESTANDING_HELPERS = re.compile(r"__aeabi_\w+|__\w+[sd]f[23]")


def m4_exports(directory: pathlib.Path, rows: int = 4):
    """The max-of-five training step (batch 32) and predictor (`rows` rows), exported for
    the Cortex-M4F; the JIT executables and the artifacts."""
    from graphc.demo import build_max_of_five

    net = build_max_of_five(seed=0, batch=32, test_size=rows)
    train = gc.aot.export(net.train, directory, target=THUMB)
    predict = gc.aot.export(net.predict, directory, target=THUMB)
    return net, train, predict


def test_cortex_m4_objects_are_freestanding(tmp_path):
    _, train, predict = m4_exports(tmp_path)
    for paths in (train, predict):
        assert paths.shared is None and paths.object.read_bytes()[4] == 1  # ELF32, no .so
        for symbol in aot.external_symbols(paths.object.read_bytes()):
            assert symbol in ("memcpy", "memset") or FREESTANDING_HELPERS.fullmatch(symbol)
        header = paths.header.read_text()
        assert "freestanding code" in header and "aligned_alloc" not in header
        assert re.search(r"#define MAX_OF_FIVE_\w+_MEM_SIZE \d+", header)
    # the float32 training step's Adam pow is computed in float64: soft float, no libm
    assert "fma" not in aot.external_symbols(train.object.read_bytes())


@needs(M4_GCC, M4_QEMU)
def test_cortex_m4_training_under_qemu_matches_jit(tmp_path):
    net, train, predict = m4_exports(tmp_path)
    rng = np.random.default_rng(3)
    data = [(x, x.max(axis=1, keepdims=True)) for x in rng.uniform(-1, 1, (3, 32, 5))]
    data = [(x.astype(np.float32), y.astype(np.float32)) for x, y in data]
    x_test = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    losses = [float(net.train(x, y)) for x, y in data]
    prediction = net.predict(x_test).ravel()

    source = '#include <stdint.h>\n#include <string.h>\n#include "board.h"\n'
    source += '#include "max_of_five_train.h"\n#include "max_of_five_predict.h"\n'
    for i, (x, y) in enumerate(data):
        source += c_array(f"x{i}", x, "float") + "\n" + c_array(f"y{i}", y, "float") + "\n"
    source += c_array("x_test", x_test, "float") + "\n"
    source += "static uint8_t train[MAX_OF_FIVE_TRAIN_MEM_SIZE] __attribute__((aligned(64)));\n"
    source += "static uint8_t predict[MAX_OF_FIVE_PREDICT_MEM_SIZE] __attribute__((aligned(64)));\n"
    source += "static void out(float value) { uint32_t bits; memcpy(&bits, &value, 4); "
    source += "put_hex(bits); }\n"
    source += (
        "int main(void) {\n    float loss, prediction[4];\n    max_of_five_train_init(train);\n"
    )
    for i in range(3):
        source += f"    max_of_five_train_run(train, x{i}, y{i}, &loss);\n    out(loss);\n"
    source += "    max_of_five_predict_init(predict);\n"
    for param, count in (("dense1_w", 160), ("dense1_b", 32), ("dense2_w", 512)):
        source += f"    memcpy(max_of_five_predict_state_{param}(predict), "
        source += f"max_of_five_train_state_{param}(train), {count} * 4);\n"
    for param, count in (("dense2_b", 16), ("dense3_w", 16), ("dense3_b", 1)):
        source += f"    memcpy(max_of_five_predict_state_{param}(predict), "
        source += f"max_of_five_train_state_{param}(train), {count} * 4);\n"
    source += "    max_of_five_predict_run(predict, x_test, prediction);\n"
    source += "    for (int i = 0; i < 4; i++) out(prediction[i]);\n"
    source += '    put_text("\\n");\n    return 0;\n}\n'
    (tmp_path / "main.c").write_text(source)
    elf = tmp_path / "main.elf"
    command = ["arm-none-eabi-gcc", *M4_FLAGS, "-O1", "-Wall", "-Werror", "-std=c11"]
    command += ["-ffreestanding", "-nostartfiles", "-T", str(M4_EXAMPLE / "mps2_an386.ld")]
    command += [f"-I{tmp_path}", f"-I{M4_EXAMPLE}", "-o", str(elf), str(tmp_path / "main.c")]
    command += [str(M4_EXAMPLE / "startup.c"), str(train.object), str(predict.object)]
    built = subprocess.run([*command, "-lc", "-lgcc"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    qemu = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none"]
    qemu += ["-serial", "none", "-semihosting-config", "enable=on,target=native"]
    result = subprocess.run(
        [*qemu, "-kernel", str(elf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    words = result.stderr.split()  # QEMU writes semihosting output to stderr
    values = np.array([int(word, 16) for word in words], np.uint32).view(np.float32)
    np.testing.assert_allclose(values[:3], losses, rtol=1e-5)
    np.testing.assert_allclose(values[3:], prediction, rtol=1e-4, atol=1e-6)


@needs(M4_GCC, M4_QEMU, ("make", "make"))
def test_cortex_m4_example_trains(tmp_path):
    result = subprocess.run(
        ["make", "-s", "-C", str(M4_EXAMPLE), "run", f"BUILD={tmp_path}", "PYTHON=python"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr  # QEMU writes semihosting output to stderr
    losses = [float(m) for m in re.findall(r"loss (\S+)", output)]
    assert len(losses) == 7 and losses[-1] < 0.1 * losses[0]
    pairs = re.findall(r"max (\S+)\s+predicted (\S+)", output)
    assert len(pairs) == 4 and all(abs(float(a) - float(b)) < 0.2 for a, b in pairs)
