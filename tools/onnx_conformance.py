"""Count ONNX's node conformance tests that graphc and onnxruntime pass, in one run.

    python tools/onnx_conformance.py [--mode compile|interpret] [--no-ort] [--filter REGEX]
                                     [--failures] [--json FILE]

Every node test of the installed onnx (built in memory, as BackendTest does) runs through
graphc.onnx.backend and onnxruntime's backend, compared with the runner's own tolerances.
A test counts for "graphc dtypes" when all its graph inputs and outputs are float32, float64,
int32, int64 or bool. Prints passed / not supported / failed per op family (the op a test is
named after) and the totals; --failures lists each failure with its first error line.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import warnings

import numpy as np

GRAPHC_DTYPES = {1, 6, 7, 9, 11}


def node_tests():
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(load_model_tests(kind="node"), key=lambda t: t.name)


def uses_graphc_dtypes(model) -> bool:
    values = list(model.graph.input) + list(model.graph.output)
    return all(
        v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in GRAPHC_DTYPES
        for v in values
    )


def family(model) -> str:
    """The op a node test is about: its graph's op that is not plumbing, else its first."""
    ops = [n.op_type for n in model.graph.node]
    plumbing = {"Constant", "Identity", "Shape", "Cast", "CastLike", "Reshape", "Concat"}
    return next((op for op in ops if op not in plumbing), ops[0] if ops else "?")


def run_one(backend, test, **kwargs) -> tuple[str, str]:
    """('pass' | 'unsupported' | 'fail', detail) of one test case through `backend`."""
    from onnx.backend.test.runner import BackendIsNotSupposedToImplementIt, Runner
    from onnx.backend.test.runner import _normalize_tensor as normalize

    try:
        rep = backend.prepare(test.model, "CPU", **kwargs)
        for inputs, expected in test.data_sets:
            outputs = rep.run([normalize(x) for x in inputs])
            Runner.assert_similar_outputs(
                [normalize(x) for x in expected], outputs, rtol=test.rtol, atol=test.atol
            )
    except BackendIsNotSupposedToImplementIt as error:
        return "unsupported", str(error).splitlines()[0] if str(error) else ""
    except Exception as error:  # a failure of any kind counts as failed, with its message
        text = f"{type(error).__name__}: {error}".strip().splitlines()
        return "fail", text[0][:300] if text else type(error).__name__
    return "pass", ""


def ort_backend():
    try:
        import onnxruntime.backend as backend
    except ImportError:
        return None
    return backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("compile", "interpret"), default="compile")
    parser.add_argument("--no-ort", action="store_true", help="graphc only")
    parser.add_argument("--filter", default=None, help="only tests whose name matches")
    parser.add_argument("--failures", action="store_true", help="list graphc's failures")
    parser.add_argument("--json", default=None, help="write every test's result here")
    args = parser.parse_args(argv)
    import graphc.onnx.backend as graphc_backend

    np.seterr(all="ignore")
    peers = {"graphc": (graphc_backend, {"mode": args.mode})}
    ort = None if args.no_ort else ort_backend()
    if ort is not None:
        peers["onnxruntime"] = (ort, {})
    results = {}
    for test in node_tests():
        if args.filter and not re.search(args.filter, test.name):
            continue
        row = {"family": family(test.model), "graphc_dtypes": uses_graphc_dtypes(test.model)}
        for peer, (backend, kwargs) in peers.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row[peer] = run_one(backend, test, **kwargs)
        results[test.name] = row
    report(results, list(peers), args.failures)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1, sort_keys=True)
    return 0


def report(results: dict, peers: list[str], failures: bool) -> None:
    families = collections.defaultdict(collections.Counter)
    for row in results.values():
        families[row["family"]][row["graphc"][0]] += 1
    print(f"{'family':28s} {'pass':>5s} {'unsup':>5s} {'fail':>5s}")
    for name in sorted(families):
        c = families[name]
        print(f"{name:28s} {c['pass']:5d} {c['unsupported']:5d} {c['fail']:5d}")
    for subset, keep in (("all node tests", lambda r: True),
                         ("graphc's dtypes", lambda r: r["graphc_dtypes"])):  # fmt: skip
        rows = [r for r in results.values() if keep(r)]
        counts = ", ".join(
            f"{peer} {sum(r[peer][0] == 'pass' for r in rows)}"
            f" ({100 * sum(r[peer][0] == 'pass' for r in rows) / max(len(rows), 1):.1f} %)"
            for peer in peers
        )
        print(f"{subset}: {len(rows)} tests; passed: {counts}")
    if failures:
        for name, row in sorted(results.items()):
            if row["graphc"][0] == "fail":
                print(f"FAIL {name}: {row['graphc'][1]}")


if __name__ == "__main__":
    sys.exit(main())
