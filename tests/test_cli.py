"""The `graphc dump` and `graphc aot` commands (graphc/cli.py, graphc/spec.py), run in process."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from graphc import spec
from graphc.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent

MODEL = textwrap.dedent(
    """
    import numpy as np
    import graphc as gc

    def parts():
        x = gc.input("x", (2, 3), "float64")
        w = gc.param("layer.w", np.full((3, 1), 0.5))
        loss = (gc.tanh(x @ w) ** 2).mean()
        (gw,) = gc.grad(loss, [w])
        return x, w, loss, gw

    def program():
        x, w, loss, gw = parts()
        return gc.Program([x], loss, {w: w - 0.1 * gw}, name="tiny")

    def executable():
        x, w, loss, gw = parts()
        return gc.compile(inputs=[x], outputs=loss, name="compiled")

    def wrong():
        return 42

    def raises():
        return 1 / 0

    def shape_error():
        return gc.input("a", (2, 3)) @ gc.input("b", (2, 3))

    not_a_function = 3
    """
)


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "broken.py").write_text("def program(:\n    pass\n")
    (tmp_path / "broken.gir").write_text("graph g(%x: f32[2]) {\n  %y: f32[2] = nope %x\n}\n")
    (tmp_path / "notes.txt").write_text("not a model\n")
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- dump ----


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("graph", "graph tiny(%x: f64[2,3]) state(%layer.w: f64[3,1])"),
        ("optimized", "update %layer.w <-"),
        ("fused", "kernel "),
        ("memory", "arena_bytes="),
        ("llvm", "define void @"),
        ("asm", "ret"),
    ],
)
def test_dump_stages_of_a_python_spec(model, capsys, stage, expected):
    code, out, err = run(capsys, "dump", "model.py:program", "--stage", stage)
    assert code == 0 and err == ""
    assert expected in out


def test_dump_of_an_executable_spec_to_a_file(model, capsys):
    code, out, err = run(capsys, "dump", "model.py:executable", "-o", "compiled.txt")
    assert (code, out, err) == (0, "", "")
    assert (model / "compiled.txt").read_text().startswith("graph compiled(")


def test_gir_written_by_dump_reads_back(model, capsys):
    assert run(capsys, "dump", "model.py:program", "--stage", "graph", "-o", "tiny.gir")[0] == 0
    text = (model / "tiny.gir").read_text()
    code, out, _ = run(capsys, "dump", "tiny.gir", "--stage", "graph")
    assert code == 0 and out == text  # the round trip prints the same graph
    code, out, _ = run(capsys, "dump", "tiny.gir", "--stage", "fused")
    assert code == 0 and "kernel " in out
    code, out, err = run(capsys, "aot", "tiny.gir", "-o", "gir_build")
    assert code == 0 and err == ""
    assert out.split() == [f"gir_build/{f}" for f in ("tiny.o", "libtiny.so", "tiny.h")]
    header = (model / "gir_build" / "tiny.h").read_text()
    assert "void tiny_run(void *mem, const double *x, double *out0);" in header
    assert "double *tiny_state_layer_w(void *mem);" in header


def test_dot_of_graph_and_fused_kernels(model, capsys):
    code, _, err = run(capsys, "dump", "model.py:program", "--dot", "graph.dot")
    assert code == 0 and "wrote DOT text to graph.dot" in err
    dot = (model / "graph.dot").read_text()
    assert dot.startswith('digraph "tiny" {')
    for phase in ("forward", "backward", "update"):  # clustered by phase, then by layer
        assert f'subgraph cluster_{phase} {{\n    label="{phase}";' in dot
    assert dot.count('label="layer"; style="rounded,dashed"') == 3
    assert 'label="layer.w\\nparam: f64[3,1]", shape=cylinder' in dot
    assert '[label="div: f64[]\\nwith 2.\\nmodel.py:8", peripheries=2]' in dot  # .mean()
    assert 'label="grad(layer.w)\\nmatmul: f64[3,1]\\nmodel.py:8"' in dot
    assert 'update0 [label="update of layer: 2 ops\\nmul×1 sub×1\\nmodel.py:14"' in dot
    assert "update0 -> n1 [style=dashed" in dot and 'label="update"' in dot
    code, out, _ = run(capsys, "dump", "model.py:program", "--stage", "fused", "--dot", "k.dot")
    fused = (model / "k.dot").read_text()
    kernels = [line.split()[1] for line in out.splitlines() if line.startswith("  kernel ")]
    assert code == 0 and fused.count("subgraph cluster_") == len(kernels) > 0
    for name in kernels:  # `fused_...[layer]` is quoted in the text format
        assert f'label="{name.strip(chr(34))} (' in fused


def test_dot_image_without_graphviz_writes_dot_text(model, capsys, monkeypatch):
    monkeypatch.setattr(spec.shutil, "which", lambda name: None)
    code, _, err = run(capsys, "dump", "model.py:program", "--dot", "graph.svg")
    assert code == 0
    assert err.strip() == (
        "graphc dump: Graphviz 'dot' is not on PATH: wrote DOT text to graph.dot instead"
    )
    assert (model / "graph.dot").read_text().startswith("digraph")
    assert not (model / "graph.svg").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_dot_rendered_to_svg(model, capsys):
    code, _, _ = run(capsys, "dump", "model.py:program", "--dot", "graph.svg")
    assert code == 0 and "<svg" in (model / "graph.svg").read_text()


# ---- aot ----


def test_aot_of_a_python_spec(model, capsys):
    code, out, err = run(
        capsys, "aot", "model.py:program", "-o", "build", "--name", "step", "--cpu", "x86-64"
    )
    assert code == 0 and err == ""
    for name in ("step.o", "libstep.so", "step.h"):
        assert (model / "build" / name).stat().st_size > 0
    header = (model / "build" / "step.h").read_text()
    assert "cpu=x86-64;" in header and "size_t step_mem_size(void);" in header


# ---- errors: one line on stderr, exit code 2, never a traceback ----


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dump", "model.py"], "bad SPEC 'model.py': expected path.py:function or a .gir file"),
        (["dump", "notes.txt:program"], "bad SPEC 'notes.txt:program'"),
        (["dump", "model.py:"], "bad SPEC 'model.py:'"),
        (["dump", "missing.py:program"], "no such file: missing.py"),
        (["dump", "missing.gir"], "no such file: missing.gir"),
        (["dump", "model.py:nope"], "model.py defines no function 'nope'"),
        (["dump", "model.py:not_a_function"], "model.py: not_a_function is a int, not a function"),
        (["dump", "model.py:wrong"], "model.py:wrong returned int; expected a gc.Program"),
        (["dump", "model.py:raises"], "model.py:24: ZeroDivisionError: division by zero"),
        (["dump", "model.py:shape_error"], "matmul"),
        (["dump", "broken.py:program"], "broken.py:1: SyntaxError:"),
        (["dump", "broken.gir"], "broken.gir:2:16: unknown op 'nope'"),
        (["dump", "model.py:program", "--stage", "bytecode"], "unknown stage 'bytecode'"),
        (["dump", "model.py:program", "-o", "no/such/dir/out.txt"], "no/such/dir/out.txt"),
        (["aot", "model.py:program", "-o", "notes.txt"], "notes.txt"),
        (["aot", "broken.gir", "-o", "build"], "unknown op 'nope'"),
        (["aot", "model.py:program", "-o", "build", "--cpu", "pentium9"], "unknown CPU 'pentium9'"),
    ],
)
def test_errors_are_one_line_and_exit_code_2(model, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"graphc {argv[0]}: error: ")
    assert message in err


BAD_UPDATES = {
    # an update value larger than its param: the step would write 400 kB into 8 bytes
    "larger": "%x: f32[100000]) state(%w: f32[2]) {\n  %1: f32[100000] = add %x, %x\n",
    "wider": "%x: f32[4]) state(%w: f32[4]) {\n  %1: f64[4] = cast %x {dtype=float64}\n",
    "smaller": "%x: f32[2]) state(%w: f32[4]) {\n  %1: f32[2] = neg %x\n",
}


@pytest.mark.parametrize("command", ["dump", "aot"])
@pytest.mark.parametrize("kind", BAD_UPDATES)
def test_gir_update_of_another_type_is_refused(model, capsys, command, kind):
    text = f"graph g({BAD_UPDATES[kind]}  return %1\n  update %w <- %1\n}}\n"
    (model / "bad.gir").write_text(text)
    code, out, err = run(capsys, command, "bad.gir", *["-o", "build"] * (command == "aot"))
    assert code == 2 and out == "" and "bad.gir:4:3: update %w: update value is" in err
    assert not (model / "build").exists() or not any((model / "build").iterdir())


def test_gir_param_updated_twice_is_refused(model, capsys):
    (model / "twice.gir").write_text(
        "graph g(%x: f32[4]) state(%w: f32[4]) {\n  return %x\n"
        "  update %w <- %x\n  update %w <- %x\n}\n"
    )
    code, _, err = run(capsys, "aot", "twice.gir", "-o", "build")
    assert code == 2 and "twice.gir:4:3: update %w: param updated twice (first on line 3)" in err


def test_missing_arguments_are_usage_errors(model, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["aot", "model.py:program"])  # -o is required
    assert exit_.value.code == 2
    assert "-o/--output" in capsys.readouterr().err


@pytest.mark.parametrize("threads", ["0", "-2", "two", "1.5"])
def test_bench_threads_must_be_a_positive_integer(capsys, threads):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--threads", threads])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "argument --threads: " in err and threads in err


# ---- the command as a process ----


def test_command_line_process(model):
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "graphc.cli"]
    result = subprocess.run(
        [*command, "dump", "model.py:program", "--stage", "memory"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 0 and "arena_bytes=" in result.stdout
    result = subprocess.run(
        [*command, "aot", "broken.gir", "-o", "build"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("graphc aot: error: broken.gir:2:16: unknown op 'nope'")
