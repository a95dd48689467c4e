"""The `graphc` command: demo, dump, aot, bench (DESIGN §7)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from graphc.demo import main as demo

    return demo(quick=args.quick)


def _dump(args) -> int:
    from graphc.runtime.spec import dump_command

    return dump_command(args)


def _aot(args) -> int:
    from graphc.runtime.spec import aot_command

    return aot_command(args)


def _bench(args) -> int:
    from bench.suite import main as bench

    return bench(quick=args.quick, json_path=args.json)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="graphc", description="A graph compiler for small models.")
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the max-of-five MLP and compare with NumPy")
    demo.add_argument("--quick", action="store_true", help="a few hundred steps only")
    demo.set_defaults(run=_demo)
    dump = commands.add_parser("dump", help="print one stage of IR for a model")
    dump.add_argument("spec", help="path.py:function or a .gir file")
    dump.add_argument("--stage", default="graph")
    dump.add_argument("-o", "--output")
    dump.add_argument("--dot")
    dump.set_defaults(run=_dump)
    aot = commands.add_parser("aot", help="write <name>.o, lib<name>.so and <name>.h")
    aot.add_argument("spec")
    aot.add_argument("-o", "--output", required=True)
    aot.add_argument("--cpu", default="x86-64-v3")
    aot.add_argument("--name")
    aot.set_defaults(run=_aot)
    bench = commands.add_parser("bench", help="the benchmark suite against NumPy/PyTorch/JAX")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--json")
    bench.set_defaults(run=_bench)
    return root


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith(("graphc.demo", "graphc.runtime.spec", "bench")):
            print(f"graphc {args.command}: not built yet ({error.name} is missing)", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
