"""The `graphc` command: demo, dump, aot, bench (DESIGN §7)."""

from __future__ import annotations

import argparse
import os
import sys


def _demo(args) -> int:
    from graphc.demo import main as demo

    return demo(quick=args.quick, steps_per_call=args.steps_per_call)


def _positive(text: str) -> int:
    """An argparse type: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def _dump(args) -> int:
    from graphc.spec import dump_command

    return _reporting_errors("dump", dump_command, args)


def _aot(args) -> int:
    from graphc.spec import aot_command

    return _reporting_errors("aot", aot_command, args)


def _reporting_errors(command: str, run, args) -> int:
    """Run a command; a user's mistake is one line on stderr and exit code 2, no traceback."""
    from graphc.errors import GraphcError

    try:
        return run(args)
    except (GraphcError, OSError, SyntaxError) as error:
        if isinstance(error, SyntaxError) and not isinstance(error, GraphcError):
            message = f"{error.filename}:{error.lineno}: SyntaxError: {error.msg}"
        elif isinstance(error, OSError) and error.filename:
            message = f"{error.filename}: {error.strerror or error}"
        else:
            message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"graphc {command}: error: {message}", file=sys.stderr)
        return 2


def _bench_module(name: str):
    """bench/<name>.py: installed, bench/ is packaged as graphc.bench; in a checkout it is also
    importable as `bench`."""
    import importlib

    try:
        return importlib.import_module(f"graphc.bench.{name}")
    except ModuleNotFoundError as error:
        if error.name not in ("graphc.bench", f"graphc.bench.{name}"):
            raise
        return importlib.import_module(f"bench.{name}")


def _bench(args) -> int:
    # NumPy and its OpenBLAS are loaded already, and OpenBLAS read its environment as it
    # loaded: the timed process is a new one with quiet worker pools and OpenBLAS's own kernel
    # choice (bench/host.py says why).
    environment = _bench_module("host").timed_environment(os.environ)
    if environment != dict(os.environ):
        import subprocess

        argv = ["bench", "--threads", str(args.threads), *["--quick"] * args.quick]
        argv += [*(["--json", args.json] if args.json else [])]
        argv += [word for prefix in args.only or () for word in ("--only", prefix)]
        command = [sys.executable, "-m", "graphc.cli", *argv]
        return subprocess.call(command, env=environment)
    # one thread count for everyone: graphc's large kernels and every peer's pool
    os.environ["GRAPHC_THREADS"] = os.environ["GRAPHC_BENCH_PEER_THREADS"] = str(args.threads)
    bench = _bench_module("suite").main
    return bench(quick=args.quick, json_path=args.json, only=args.only)


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a usage error otherwise, not a traceback later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """An argparse type: NAME=1,3,28,28 -> ("NAME", (1, 3, 28, 28))."""
    name, equals, dims = text.partition("=")
    parts = dims.split(",")
    if not equals or not name or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected NAME=1,3,28,28, got {text!r}")
    return name, tuple(int(p) for p in parts)


def parser() -> argparse.ArgumentParser:
    """The argument parser of `graphc` and its four subcommands."""
    root = argparse.ArgumentParser(prog="graphc", description="A graph compiler for small models.")
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the max-of-five MLP and compare with NumPy")
    demo.add_argument("--quick", action="store_true", help="1000 steps and shorter timings")
    demo.add_argument(
        "--steps-per-call",
        type=_positive,
        default=1,
        metavar="K",
        help="also compile K training steps into one native call (gc.compile steps=K), "
        "train with it and time it per step beside the one-step call",
    )
    demo.set_defaults(run=_demo)
    spec_help = (
        "path.py:function (returning a gc.Program or an Executable), a .gir or an .onnx file"
    )
    shape_help = "an .onnx SPEC's input shape, fixing its symbolic dimensions (repeatable)"
    dump = commands.add_parser("dump", help="print one stage of IR for a model")
    dump.add_argument("spec", help=spec_help)
    dump.add_argument(
        "--stage", default="graph", help="graph, optimized, fused, memory, llvm or asm"
    )
    dump.add_argument("-o", "--output", metavar="FILE", help="write the dump to FILE")
    dump.add_argument(
        "--dot", metavar="FILE", help="also the graph as Graphviz DOT (.svg/.png: rendered)"
    )
    dump.add_argument("--shape", action="append", type=_input_shape, metavar="NAME=1,3,28,28",
                      help=shape_help)  # fmt: skip
    dump.set_defaults(run=_dump)
    aot = commands.add_parser("aot", help="write <name>.o, lib<name>.so and <name>.h")
    aot.add_argument("spec", help=spec_help)
    aot.add_argument("-o", "--output", required=True, metavar="DIR")
    aot.add_argument(
        "--target",
        metavar="TRIPLE",
        help="cross-compile: host x86_64 (default), aarch64-linux-gnu (64-bit ARM Linux), "
        "thumbv7em-none-eabihf (Cortex-M4F, freestanding: .o and .h only)",
    )
    aot.add_argument(
        "--cpu",
        help="CPU baseline (default: x86-64-v3; generic on aarch64, cortex-m4 on thumbv7em)",
    )
    aot.add_argument("--name", help="export name (default: the program's name)")
    aot.add_argument("--shape", action="append", type=_input_shape, metavar="NAME=1,3,28,28",
                     help=shape_help)  # fmt: skip
    aot.set_defaults(run=_aot)
    bench = commands.add_parser("bench", help="the benchmark suite against NumPy/PyTorch/JAX")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument(
        "--only",
        action="append",
        metavar="PREFIX",
        help="run only the cases whose id starts with PREFIX (repeatable: --only W3 --only W5)",
    )
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="threads for graphc and for every peer alike (default 1)",
    )
    bench.set_defaults(run=_bench)
    return root


def main(argv=None) -> int:
    """Run the `graphc` command line; returns the exit code."""
    args = parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
