"""`graphc bench [--quick] [--json FILE]`: run the workloads, print the table, check targets.

For every case: build each peer (graphc compiles cold in a fresh GRAPHC_CACHE_DIR, then
warm), check that all peers agree numerically on their first two results, then time them
side by side (timing.py). The table gives median and p10–p90 per call and graphc's speed-up
over each peer (peer median / graphc median; > 1 means graphc is faster); W4 also in
GFLOP/s and as a share of the measured FMA peak; then compile times per phase and the targets,
met or not. The header names the machine, NumPy's BLAS kernel and the FMA peak (host.py).

Peers: graphc, hand-written NumPy (always), PyTorch eager and jax.jit when importable.
`graphc bench --threads N` gives graphc and every peer the same N threads (default 1).
Exit status 1 if some peer disagrees with graphc.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from . import host, models, peers, recurrent, timing, workloads

QUICK = {"sample_seconds": 1e-3, "warmup_seconds": 0.02, "budget_seconds": 0.4}
FULL = {"sample_seconds": 2e-3, "warmup_seconds": 0.1, "budget_seconds": 2.0}
TOLERANCE = {"float32": 2e-3, "float64": 1e-7}


# ---- one case -------------------------------------------------------------------------------


def check(case: workloads.Case, calls: dict) -> dict[str, float]:
    """Relative max error of every peer against graphc over its first two results."""
    results = {
        name: [peers.to_numpy(call()).astype(np.float64) for _ in range(2)]
        for name, call in calls.items()
    }
    reference = results["graphc"]
    errors = {}
    for name, got in results.items():
        error = 0.0
        for ref, value in zip(reference, got):
            scale = max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
            if ref.shape != value.reshape(ref.shape).shape:
                error = float("inf")
                continue
            error = max(error, float(np.max(np.abs(ref - value.reshape(ref.shape)))) / scale)
        errors[name] = error
    return errors


def run_case(case: workloads.Case, settings: dict) -> dict:
    """Build, check and time every peer of `case`; a peer that fails to build is noted."""
    calls, notes = {}, []
    for name in workloads.PEER_ORDER:
        if name != "graphc" and name not in case.factories:
            continue
        try:
            calls[name] = case.build(name)
        except Exception as error:  # noqa: BLE001 - a broken peer must not stop the suite
            if name == "graphc":
                raise
            notes.append(f"{name}: {type(error).__name__}: {error}")
    errors = check(case, calls)
    tolerance = TOLERANCE.get(case.dtype, 2e-3)
    mismatched = [n for n, e in errors.items() if not e <= tolerance]
    stats = timing.measure([timing.Peer(n, call) for n, call in calls.items()], **settings)
    graphc = stats["graphc"].median
    return {
        "id": case.id,
        "group": case.group,
        "dtype": case.dtype,
        "stats": stats,
        "speedup": {n: s.median / graphc for n, s in stats.items() if n != "graphc"},
        "gflops": {n: case.flops / s.median / 1e9 for n, s in stats.items()}
        if case.flops
        else None,
        "errors": errors,
        "mismatched": mismatched,
        "compile": case.compile_timings,
        "notes": notes,
    }


# ---- rendering ------------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _cell(stats: timing.Stats) -> str:
    spread = f"{format_time(stats.p10).split()[0]}–{format_time(stats.p90)}"
    return f"{format_time(stats.median)} ({spread})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return lines


def evaluate_targets(results: list[dict]) -> list[dict]:
    """Every target whose case and peer were measured, with the measured ratio."""
    by_id = {r["id"]: r for r in results}
    out = []
    for t in workloads.TARGETS:
        result = by_id.get(t.case_id)
        if result is None or t.peer not in result["speedup"]:
            continue
        ratio = result["speedup"][t.peer]
        out.append({"case": t.case_id, "peer": t.peer, "target": t.ratio, "ratio": ratio,
                    "met": ratio >= t.ratio})  # fmt: skip
    return out


def render(results: list[dict], machine: dict, notes: list[str]) -> str:
    """The whole report as text: one table per workload, GFLOP/s, compile times, targets."""
    lines = [
        f"graphc bench — {machine['cpu']} ({machine['llvm_cpu']}), {machine['cores']} cores; "
        f"Python {machine['python']}, NumPy {machine['numpy']}, llvmlite {machine['llvmlite']} "
        f"(LLVM {machine['llvm']}), torch {machine['torch'] or '-'}, jax {machine['jax'] or '-'}",
        host.describe_blas(machine.get("blas")),
        *([host.describe_peaks(machine["fma_peak"])] if machine.get("fma_peak") else []),
        "times per call: median (p10–p90); ×peer = peer median / graphc median (> 1: graphc "
        "faster)",
        *notes,
    ]
    peak = host.best_peak(machine["fma_peak"]) if machine.get("fma_peak") else None
    for group, title in workloads.GROUPS.items():
        rows = [r for r in results if r["group"] == group]
        if not rows:
            continue
        names = [n for n in workloads.PEER_ORDER if any(n in r["stats"] for r in rows)]
        others = [n for n in names if n != "graphc"]
        header = ["case", *names, *[f"×{n}" for n in others]]
        table = []
        for r in rows:
            cells = [r["id"] + (" MISMATCH" if r["mismatched"] else "")]
            cells += [_cell(r["stats"][n]) if n in r["stats"] else "-" for n in names]
            cells += [f"{r['speedup'][n]:.2f}" if n in r["speedup"] else "-" for n in others]
            table.append(cells)
        lines += ["", f"{group}  {title}", *_table(header, table)]
        if rows[0]["gflops"]:
            gflops = [
                [r["id"], *[f"{r['gflops'][n]:.1f}" if n in r["gflops"] else "-" for n in names]]
                for r in rows
            ]
            header = ["case", *names]
            if peak:  # float64 FMAs do half the float32 flops
                header.append("graphc % of peak")
                for r, cells in zip(rows, gflops):
                    share = r["gflops"]["graphc"] / (peak / 2 if r["dtype"] == "float64" else peak)
                    cells.append(f"{share:.0%}")
            lines += ["  GFLOP/s (median):", *_table(header, gflops)]
        lines += [f"  note {r['id']}: {n}" for r in rows for n in r["notes"]]
        lines += [
            f"  MISMATCH {r['id']}: relative errors {r['errors']}" for r in rows if r["mismatched"]
        ]
    lines += ["", "compile time (ms): cold = fresh GRAPHC_CACHE_DIR, warm = object-cache hit"]
    phases = ["key", "passes", "emit", "parse", "optimize", "codegen", "load"]
    header = ["case", "kernels", "cold", *phases, "warm", "warm key", "warm load"]
    table = []
    for r in results:
        cold, warm = r["compile"].get("cold", {}), r["compile"].get("warm", {})
        ms = lambda d, k: f"{d[k] * 1e3:.1f}" if k in d else "-"
        table.append(
            [r["id"], str(r["compile"].get("kernels", "-")), ms(cold, "total"),
             *[ms(cold, p) for p in phases], ms(warm, "total"), ms(warm, "key"),
             ms(warm, "load")]
        )  # fmt: skip
    lines += _table(header, table)
    targets = evaluate_targets(results)
    if targets:
        lines += ["", "targets (graphc speed-up, measured in this run):"]
        lines += _table(
            ["case", "vs", "target", "measured", ""],
            [[t["case"], t["peer"], f"≥ {t['target']:g}", f"{t['ratio']:.2f}",
              "met" if t["met"] else "NOT MET"] for t in targets],
        )  # fmt: skip
    return "\n".join(lines)


def to_json(results: list[dict], machine: dict) -> dict:
    def stats(s: timing.Stats) -> dict:
        return {"median": s.median, "p10": s.p10, "p90": s.p90, "inner": s.inner,
                "samples": s.samples}  # fmt: skip

    cases = [
        {**r, "stats": {n: stats(s) for n, s in r["stats"].items()}} for r in results
    ]  # fmt: skip
    return {"machine": machine, "cases": cases, "targets": evaluate_targets(results)}


# ---- the command ----------------------------------------------------------------------------


def run(cases: list[workloads.Case], settings: dict, progress=None) -> list[dict]:
    """Run `cases` with graphc compiling into a fresh cache directory (removed afterwards)."""
    previous = os.environ.get("GRAPHC_CACHE_DIR")
    cache = tempfile.mkdtemp(prefix="graphc-bench-cache-")
    os.environ["GRAPHC_CACHE_DIR"] = cache
    limiter = peers.limit_blas_threads()
    try:
        results = []
        for case in cases:
            if progress:
                progress(case.id)
            results.append(run_case(case, settings))
        return results
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if previous is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = previous
        shutil.rmtree(cache, ignore_errors=True)


def select(cases: list[workloads.Case], prefixes=None) -> list[workloads.Case]:
    """The cases whose id starts with one of `prefixes` (every case when there are none)."""
    return [case for case in cases if not prefixes or case.id.startswith(tuple(prefixes))]


def main(quick: bool = False, json_path: str | None = None, only=None) -> int:
    """Run the suite (a subset with `quick`, or the cases whose id starts with one of the
    prefixes in `only`), print the table, optionally write JSON."""
    start = time.perf_counter()
    versions = peers.available()
    optional = ("torch", "jax", "onnxruntime")
    names = ["graphc", "numpy", *[n for n in optional if versions[n]]]
    notes = [f"note: {n} is not installed; skipped (pip install graphc[bench])"
             for n in optional if not versions[n]]  # fmt: skip
    if peers.PEER_THREADS:
        notes.append(f"graphc and peers held to {peers.PEER_THREADS} thread(s) (graphc bench "
                     "--threads N)")  # fmt: skip
    quiet = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
             if k in os.environ]  # fmt: skip
    if quiet:
        notes.append(f"idle peer threads sleep instead of spinning: {' '.join(quiet)}")
    cases = workloads.all_cases(names, quick=quick)
    if not quick:
        cases += models.model_cases(names) + recurrent.recurrent_cases(names)
    cases = select(cases, only)
    if not cases:
        print(f"graphc bench: no case id starts with {' or '.join(only)}", file=sys.stderr)
        return 2
    machine = host.machine_info(versions, peers.PEER_THREADS)
    overrides = " ".join(f"{k}={v}" for k, v in machine["blas_overrides"].items())
    if overrides:
        notes.append(f"note: NumPy's OpenBLAS loaded with {overrides} (`graphc bench` drops them)")
    progress = lambda case_id: print(f"  {case_id} ...", file=sys.stderr, flush=True)
    results = run(cases, QUICK if quick else FULL, progress)
    print(render(results, machine, notes))
    print(f"\n(total {time.perf_counter() - start:.1f} s)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(results, machine), f, indent=1)
    return 1 if any(r["mismatched"] for r in results) else 0


if __name__ == "__main__":  # through the command, which starts the timed process
    from graphc.cli import main as command

    sys.exit(command(["bench", *sys.argv[1:]]))
