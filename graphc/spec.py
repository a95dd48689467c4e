"""Model specs for the command line: `graphc dump` and `graphc aot` (DESIGN §7).

A SPEC names a program to compile:

    path/to/model.py:function    the function (called without arguments) returns a
                                 gc.Program or a compiled Executable
    path/to/program.gir          a graph in the text format (`graphc dump --stage graph`);
                                 the text carries shapes, not weights: params start at zero
    path/to/model.onnx           an ONNX model (gc.onnx.load; `--shape NAME=1,3,28,28` fixes
                                 a symbolic dimension), its initializers as params

This module sits above `runtime` (it runs user code built with the frontend), which is why
it is not `graphc.runtime.spec`. Every user mistake surfaces as a `SpecError` or another
GraphcError; `graphc.cli` turns those into one line on stderr and exit code 2.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import json
import pathlib
import re
import shutil
import subprocess
import sys
import traceback

import numpy as np

from graphc.errors import GraphcError
from graphc.frontend.functions import Program
from graphc.frontend.functions import compile as compile_program
from graphc.ir.graph import Graph, Kernel, topological_order
from graphc.ir.parser import parse_graph
from graphc.runtime.executable import STAGES, Executable

_modules = itertools.count()


class SpecError(GraphcError):
    """A SPEC that does not name a loadable program."""


def load_spec(spec: str, shapes=None) -> Executable:
    """The compiled program a SPEC names (`path.py:function`, a `.gir` or an `.onnx` file;
    `shapes` {input name: shape} fixes an ONNX model's symbolic dimensions)."""
    if spec.endswith(".gir"):
        path = pathlib.Path(spec)
        return Executable.build(parse_graph(_read(path), filename=str(path)))
    if spec.endswith(".onnx"):
        from graphc.onnx import load

        return compile_program(load(spec, shapes=shapes))
    if shapes:
        raise SpecError("--shape applies to an .onnx SPEC")
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
#
# A training step is a few hundred nodes; drawn flat, Graphviz lays the forward pass, the
# backward pass and the optimizer's arithmetic side by side into a picture thousands of
# pixels wide. So nodes are clustered by phase and, inside a phase, by layer (the prefix of
# the params a node works for: `dense1` for `dense1.w` and for `adam.m[dense1.w]`):
#
#     forward   ancestors of the outputs; a node's layer is the last whose params it uses
#     backward  ancestors of the adjoints named `grad(...)` that are not forward; a node's
#               layer is the last whose gradient it feeds
#     update    the rest (the optimizer's arithmetic and state); a node's layer is that of
#               the params it updates ("shared" when several, as Adam's step count)
#
# Nodes with no layer of their own (a transpose of an input) join their first user's
# cluster; constant expressions are written into their users' labels; each layer's update
# is one box (the text dump has it op by op); an edge between two phases does not rank its
# nodes, so the phases stand side by side as three columns of about the forward pass's
# height. With kernels (the fused stage), each kernel is a cluster instead.


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a DOT string: \ and " escaped alike


def _layer_of(name: str) -> str:
    """`dense1` for `dense1.w`, `adam.m[dense1.w]` and `grad(dense1.w)`; `adam` for `adam.t`."""
    inner = re.search(r"[\[(](.*)[\])]$", name)
    if inner:
        name = inner.group(1)
    return name.rpartition(".")[0] or name


def _clusters(graph: Graph) -> dict:
    """{node: (phase, layer)} for the nodes drawn inside a cluster (see above)."""
    order = graph.nodes
    users: dict = {node: [] for node in order}
    for node in order:
        for x in node.inputs:
            users[x].append(node)
    forward = set(topological_order(graph.outputs))
    grads = [n for n in order if n.name and n.name.startswith("grad(")]
    backward = set(topological_order(grads)) - forward
    phase = {
        n: "forward" if n in forward else "backward" if n in backward else "update" for n in order
    }
    params = [n for n in order if n.op == "param"]
    rank = {layer: i for i, layer in enumerate(dict.fromkeys(_layer_of(n.name) for n in params))}

    def last(layers):
        return max(layers, key=lambda layer: rank.get(layer, -1)) if layers else None

    depends: dict = {}  # forward: the last layer whose params a node uses
    for node in order:
        found = {depends[x] for x in node.inputs if depends[x]}
        depends[node] = _layer_of(node.name) if node.op == "param" else last(found)
    feeds: dict = {}  # backward, update: the layers whose gradients or new values a node feeds
    seeds = {n: {_layer_of(n.name)} for n in grads}
    seeds.update({value: {_layer_of(target.name)} for target, value in graph.updates})
    for node in reversed(order):
        feeds[node] = set(seeds.get(node, ()))
        for user in users[node]:
            if phase[user] == phase[node]:
                feeds[node] |= feeds[user]

    result: dict = {}
    for node in order:
        if node.op == "param" and phase[node] != "update":
            layer = _layer_of(node.name)
        elif node.op in ("input", "const"):
            layer = None
        elif phase[node] == "forward":
            layer = depends[node]
        elif phase[node] == "backward":
            layer = last(feeds[node])
        else:
            layer = "shared" if len(feeds[node]) > 1 else last(feeds[node])
        if layer:
            result[node] = (phase[node], layer)
    for node in reversed(order):  # constants and the like join their first user's cluster
        first = next((user for user in users[node] if user in result), None)
        if node not in result and node.op != "input" and first is not None:
            result[node] = result[first]
    return result


def _value_text(value: np.ndarray) -> str:
    text = np.array2string(value, threshold=6, edgeitems=2, precision=4)
    return text if len(text) <= 24 else f"{text[:21]}..."


def _label(node, constants=()) -> str:
    """Name, `op: type` (a constant: its value and type), the constants it uses inline and
    the user's source line."""
    parts = [node.name] if node.name else []
    if node.op == "const":
        parts += [_value_text(node.attrs["value"]), str(node.type)]
    else:
        parts.append(f"{node.op}: {node.type}")
    if constants:
        parts.append("with " + ", ".join(dict.fromkeys(constants)))
    if node.loc and node.op not in ("input", "param", "const"):
        parts.append(node.loc.rpartition("/")[2])
    return "\\n".join(_quote(part)[1:-1] for part in parts)


def _inline_constants(graph: Graph) -> dict:
    """{node: its text} for constant expressions (a const, a broadcast of one ...) that are
    not results: they are written into their users' labels instead of drawn."""
    texts: dict = {}
    for node in graph.nodes:
        if node.op == "const":
            texts[node] = _value_text(node.attrs["value"])
        elif node.inputs and all(x in texts for x in node.inputs) and node.op != "param":
            texts[node] = ", ".join(dict.fromkeys(texts[x] for x in node.inputs))
    kept = set(graph.outputs) | {value for _, value in graph.updates}
    return {node: text for node, text in texts.items() if node not in kept}


def _summary(layer: str, nodes) -> str:
    """The label of an update box: its state, how many ops of which kinds, from which lines."""
    state = [n.name for n in nodes if n.op == "param"]
    ops = [n for n in nodes if n.op != "param"]
    counts = collections.Counter(n.op for n in ops)
    parts = [
        f"update of {layer}: {len(ops)} ops",
        " ".join(f"{op}×{n}" for op, n in counts.most_common(4)) + " ..." * (len(counts) > 4),
        f"state: {state[0]}" + (f" +{len(state) - 1}" if len(state) > 1 else "") if state else "",
        ", ".join(dict.fromkeys(n.loc.rpartition("/")[2] for n in ops if n.loc)),
    ]
    return "\\n".join(_quote(part)[1:-1] for part in parts if part)


def to_dot(graph: Graph, kernels: list[Kernel] | None = None) -> str:
    """Graphviz DOT text of `graph`: clusters by phase and layer, the optimizer's arithmetic
    one box per layer (the text dump has it op by op); or, with kernels, one per kernel."""
    outputs = set(graph.outputs)
    inline = {} if kernels else _inline_constants(graph)
    clusters = _clusters(graph)  # with kernels, only for the edges between phases
    drawn, groups, boxes = {}, {}, {}  # node -> DOT id; cluster -> nodes; cluster -> box
    for i, node in enumerate(graph.nodes):
        key = None if kernels else clusters.get(node)
        if node in inline:
            continue
        if key and key[0] == "update":
            drawn[node] = boxes.setdefault(key, f"update{len(boxes)}")
            groups.setdefault(key, [])
        else:
            drawn[node] = f"n{i}"
            groups.setdefault(key, []).append(node)
    for kernel in kernels or []:
        groups[f"{kernel.name} ({kernel.form})"] = [n for n in kernel.nodes if n in drawn]
    in_kernels = {node for kernel in kernels or [] for node in kernel.nodes}
    groups[None] = [node for node in groups.get(None, []) if node not in in_kernels]

    def node_line(node, indent) -> str:
        shape = {"input": "ellipse", "param": "cylinder", "const": "plaintext"}.get(node.op)
        extras = [f"shape={shape}"] if shape else []
        if node in outputs:
            extras.append("peripheries=2")
        label = _label(node, [inline[x] for x in node.inputs if x in inline])
        return f'{indent}{drawn[node]} [label="{label}"{"".join(", " + e for e in extras)}];'

    def box_lines(key, indent) -> list[str]:
        if key not in boxes:
            return []
        members = [n for n in graph.nodes if drawn.get(n) == boxes[key]]
        return [f'{indent}{boxes[key]} [label="{_summary(key[1], members)}", style=""];']

    lines = [
        f"digraph {_quote(graph.name)} {{",
        "  rankdir=TB; nodesep=0.2; ranksep=0.3;",
        '  fontname="Helvetica"; fontsize=10;',
        '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=9, height=0.3,'
        ' margin="0.06,0.02"];',
        "  edge [arrowsize=0.5];",
    ]
    lines.extend(node_line(node, "  ") for node in groups.get(None, []))
    count = itertools.count()
    for label, nodes in groups.items():
        if isinstance(label, str):  # a kernel
            lines.append(f"  subgraph cluster_{next(count)} {{")
            lines.append(f'    label={_quote(label)}; style="dashed";')
            lines.extend(node_line(node, "    ") for node in nodes)
            lines.append("  }")
    for phase in dict.fromkeys(key[0] for key in groups if isinstance(key, tuple)):
        lines.append(f"  subgraph cluster_{phase} {{")
        lines.append(f'    label="{phase}"; style="filled"; fillcolor="grey96"; color="grey70";')
        for key, nodes in groups.items():
            if isinstance(key, tuple) and key[0] == phase:
                lines.append(f"    subgraph cluster_{next(count)} {{")
                lines.append(
                    f'      label={_quote(key[1])}; style="rounded,dashed"; color="grey50";'
                )
                lines.extend(node_line(node, "      ") for node in nodes)
                lines.extend(box_lines(key, "      "))
                lines.append("    }")
        lines.append("  }")
    edges = {}
    updated_by = {(drawn[value], target) for target, value in graph.updates if value in drawn}
    for node in graph.nodes:
        for x in node.inputs:
            if x not in drawn or node not in drawn or drawn[x] == drawn[node]:
                continue
            if (drawn[node], x) in updated_by:  # the update edge back says it already
                continue
            phases = {clusters[n][0] for n in (x, node) if n in clusters}
            free = " [constraint=false]" if len(phases) > 1 else ""
            edges[f"  {drawn[x]} -> {drawn[node]}{free};"] = None
    for target, value in graph.updates:
        if value is not target:
            edges[
                f'  {drawn[value]} -> {drawn[target]} [style=dashed, color="grey60", '
                'constraint=false, label="update", fontsize=8];'
            ] = None
    lines.extend(edges)
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
    executable = load_spec(args.spec, dict(getattr(args, "shape", None) or ()))
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

    executable = load_spec(args.spec, dict(getattr(args, "shape", None) or ()))
    target = getattr(args, "target", None)
    paths = aot.export(executable, args.output, name=args.name, cpu=args.cpu, target=target)
    for path in paths:
        if path is not None:  # a freestanding target has no shared library
            print(path)
    return 0
