"""Model specs for the command line: `graphc dump` and `graphc aot` (DESIGN §7).

A SPEC names a program to compile:

    path/to/model.py:function    the function (called without arguments) returns a
                                 gc.Program or a compiled Executable
    path/to/program.gir          a graph in the text format (`graphc dump --stage graph`);
                                 the text carries shapes, not weights: params start at zero

This module sits above `runtime` (it runs user code built with the frontend), which is why
it is not `graphc.runtime.spec`. Every user mistake surfaces as a `SpecError` or another
GraphcError; `graphc.cli` turns those into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import pathlib
import shutil
import subprocess
import sys
import traceback

from graphc.errors import GraphcError
from graphc.frontend.functions import Program
from graphc.frontend.functions import compile as compile_program
from graphc.ir.graph import Graph, Kernel
from graphc.ir.parser import parse_graph
from graphc.runtime.executable import STAGES, Executable

_modules = itertools.count()


class SpecError(GraphcError):
    """A SPEC that does not name a loadable program."""


def load_spec(spec: str) -> Executable:
    """The compiled program a SPEC names (`path.py:function` or a `.gir` file)."""
    if spec.endswith(".gir"):
        path = pathlib.Path(spec)
        return Executable.build(parse_graph(_read(path), filename=str(path)))
    path_text, colon, function_name = spec.rpartition(":")
    if not colon or not path_text.endswith(".py") or not function_name.isidentifier():
        raise SpecError(f"bad SPEC {spec!r}: expected path.py:function or a .gir file")
    path = pathlib.Path(path_text)
    module = _run_module(path)
    function = getattr(module, function_name, None)
    if function is None:
        raise SpecError(f"{path} defines no function {function_name!r}")
    if not callable(function):
        raise SpecError(f"{path}: {function_name} is a {type(function).__name__}, not a function")
    return as_executable(_user_code(path, function), spec)


def as_executable(result, origin: str) -> Executable:
    """An Executable from what a spec function returned (a Program is compiled)."""
    if isinstance(result, Executable):
        return result
    if isinstance(result, Program):
        return compile_program(result)
    raise SpecError(
        f"{origin} returned {type(result).__name__}; expected a gc.Program or an Executable"
    )


def _read(path: pathlib.Path) -> str:
    if not path.is_file():
        raise SpecError(f"no such file: {path}")
    try:
        return path.read_text()
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not a text file ({error.reason})") from None


def _run_module(path: pathlib.Path):
    """Import the model file as a fresh module (its directory importable while it runs)."""
    source = _read(path)
    name = f"graphc_spec_{next(_modules)}_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    code = compile(source, str(path), "exec")  # a SyntaxError names the file and line
    directory = str(path.resolve().parent)
    sys.path.insert(0, directory)
    sys.modules[name] = module  # dataclasses and pickling look their module up
    try:
        _user_code(path, exec, code, module.__dict__)
    finally:
        sys.path.remove(directory)
    return module


def _user_code(path: pathlib.Path, function, *args):
    """Run user code; an error that is not graphc's becomes one line naming the user's line."""
    try:
        return function(*args)
    except GraphcError:
        raise
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(path)]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        raise SpecError(f"{where}: {type(error).__name__}: {error}") from None


# ---- DOT ----


def _quote(text: str) -> str:
    return json.dumps(text)  # a DOT string: backslash and quote escaped the same way


def to_dot(graph: Graph, kernels: list[Kernel] | None = None) -> str:
    """Graphviz DOT text of `graph`; with `kernels`, each kernel is a cluster."""
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    outputs = set(graph.outputs)
    lines = [
        f"digraph {_quote(graph.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
        "  edge [arrowsize=0.6];",
    ]

    def node_line(node, indent="  ") -> str:
        parts = [node.name] if node.name else []
        parts.append(f"{node.op}: {node.type}")
        label = '"' + "\\n".join(_quote(part)[1:-1] for part in parts) + '"'
        shape = {"input": "ellipse", "param": "cylinder", "const": "plaintext"}.get(node.op)
        extras = [f"shape={shape}"] if shape else []
        if node in outputs:
            extras.append("peripheries=2")
        return f"{indent}{ids[node]} [label={label}{''.join(', ' + e for e in extras)}];"

    clustered = set()
    for k, kernel in enumerate(kernels or []):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f"    label={_quote(f'{kernel.name} ({kernel.form})')};")
        lines.append('    style="dashed"; fontname="Helvetica"; fontsize=10;')
        for node in kernel.nodes:
            lines.append(node_line(node, "    "))
            clustered.add(node)
        lines.append("  }")
    for node in graph.nodes:
        if node not in clustered:
            lines.append(node_line(node))
    for node in graph.nodes:
        for x in node.inputs:
            lines.append(f"  {ids[x]} -> {ids[node]};")
    for target, value in graph.updates:
        if value is not target:
            lines.append(f'  {ids[value]} -> {ids[target]} [style=dashed, label="update"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(dot: str, path: pathlib.Path) -> str:
    """Write DOT text, or render it if `path` is .svg/.png and Graphviz is installed."""
    kind = path.suffix.lower().lstrip(".")
    if kind in ("svg", "png"):
        program = shutil.which("dot")
        if program:
            result = subprocess.run(
                [program, f"-T{kind}", "-o", str(path)], input=dot, text=True, capture_output=True
            )
            if result.returncode != 0:
                message = (result.stderr.strip().splitlines() or ["failed"])[0]
                raise SpecError(f"Graphviz dot: {message}")
            return f"rendered {path}"
        path = path.with_suffix(".dot")
        path.write_text(dot)
        return f"Graphviz 'dot' is not on PATH: wrote DOT text to {path} instead"
    path.write_text(dot)
    return f"wrote DOT text to {path}"


# ---- commands ----


def dump_command(args) -> int:
    """`graphc dump SPEC --stage STAGE [-o FILE] [--dot FILE]`."""
    if args.stage not in STAGES:
        raise SpecError(f"unknown stage {args.stage!r}; stages are {', '.join(STAGES)}")
    executable = load_spec(args.spec)
    text = executable.dump(args.stage)
    if not text.endswith("\n"):
        text += "\n"
    if args.output:
        pathlib.Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if args.dot:
        if args.stage == "graph":
            dot = to_dot(executable.graph)
        elif args.stage == "optimized":
            dot = to_dot(executable.optimized)
        else:
            dot = to_dot(executable.optimized, executable.kernel_list)
        print(f"graphc dump: {write_dot(dot, pathlib.Path(args.dot))}", file=sys.stderr)
    return 0


def aot_command(args) -> int:
    """`graphc aot SPEC -o DIR [--target TRIPLE] [--cpu NAME] [--name NAME]`."""
    from graphc.runtime import aot

    executable = load_spec(args.spec)
    target = getattr(args, "target", None)
    paths = aot.export(executable, args.output, name=args.name, cpu=args.cpu, target=target)
    for path in paths:
        if path is not None:  # a freestanding target has no shared library
            print(path)
    return 0
