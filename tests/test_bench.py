"""The benchmark suite's machinery on tiny sizes: peers agree with graphc, the table renders.

Timings are never asserted (DESIGN §8); only that every number is there and positive.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import tomllib

bench = pytest.importorskip("bench.suite", reason="bench/ is not importable")
from bench import host, models, peers, recurrent, workloads  # noqa: E402

TINY = {"sample_seconds": 1e-4, "warmup_seconds": 0.0, "budget_seconds": 0.0,
        "min_rounds": 3, "max_rounds": 3}  # fmt: skip
ROOT = pathlib.Path(__file__).resolve().parents[1]


def peer_names() -> list[str]:
    versions = peers.available()
    return ["graphc", "numpy", *[n for n in ("torch", "jax") if versions[n]]]


def tiny_cases(names):
    return [
        workloads.mlp_train_case("W1 tiny f32", (3, 4, 2, 1), 2, "float32", names),
        workloads.mlp_train_case("W1 tiny f64", (3, 4, 1), 3, "float64", names),
        workloads.mlp_infer_case("W2 tiny", (3, 4, 1), 1, "float32", names),
        workloads.elementwise_case("W3 tiny f64", 8, "float64", names),
        workloads.matmul_case("W4 tiny f32", 4, "float32", names),
        workloads.softmax_case("W5 tiny", (6, 5, 3), 4, names),
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return bench.run(tiny_cases(peer_names()), TINY)


def test_every_peer_agrees_with_graphc(results):
    for r in results:
        assert set(r["stats"]) == set(peer_names()), r["notes"]
        assert r["mismatched"] == [], (r["id"], r["errors"])


def test_stats_and_compile_times_are_complete(results):
    for r in results:
        for stats in r["stats"].values():
            assert 0 < stats.p10 <= stats.median <= stats.p90
            assert len(stats.samples) == 3
        assert set(r["speedup"]) == set(r["stats"]) - {"graphc"}
        cold, warm = r["compile"]["cold"], r["compile"]["warm"]
        assert cold["total"] > 0 and {"key", "passes", "optimize", "load"} <= set(cold)
        # a cache hit (keyed on the printed graph) runs no pass and no LLVM
        assert warm["total"] > 0 and {"key", "load"} <= set(warm) and "passes" not in warm
        assert r["compile"]["kernels"] >= 1
    assert results[4]["gflops"]["graphc"] > 0


def test_table_and_json_render(results):
    machine = host.machine_info(peers.available(), 1)
    text = bench.render(results, machine, ["a note"])
    for r in results:
        assert r["id"] in text
    assert "×numpy" in text and "compile time" in text and "a note" in text
    assert "NumPy's BLAS: " in text and "FMA peak" in text and "% of peak" in text
    data = json.loads(json.dumps(bench.to_json(results, machine)))
    assert [c["id"] for c in data["cases"]] == [r["id"] for r in results]
    assert data["machine"]["fma_peak"]["ymm"]["per_thread"] > 0
    assert "blas" in data["machine"] and "blas_overrides" in data["machine"]


def test_targets_name_measured_cases():
    cases = workloads.all_cases(["graphc", "numpy"]) + models.model_cases(["graphc", "numpy"])
    cases += recurrent.recurrent_cases(["graphc", "numpy"])
    ids = {c.id for c in cases}
    for target in workloads.TARGETS:
        assert target.case_id in ids and target.peer in workloads.PEER_ORDER[1:]
    assert {c.id for c in workloads.all_cases(["graphc"], quick=True)} <= ids


def test_pyproject_packages_every_graphc_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "graphc").rglob("__init__.py")
    }
    assert found | {"graphc.bench"} == set(config["packages"])
    assert config["package-dir"]["graphc.bench"] == "bench"


def test_only_selects_cases_by_id_prefix(capsys):
    cases = workloads.all_cases(["graphc", "numpy"])
    chosen = bench.select(cases, ["W4 3", "W5"])
    assert [c.id for c in chosen] == ["W4 32 f32", "W4 32 f64", "W5"]
    assert bench.select(cases, None) == cases
    assert bench.main(only=["X1"]) == 2
    assert "no case id starts with X1" in capsys.readouterr().err


def test_the_timed_environment_has_quiet_pools_and_openblas_own_kernel():
    preset = {"OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_L2_SIZE": "262144", "PATH": "/bin"}
    assert host.timed_environment(preset) == {**host.QUIET_POOLS, "PATH": "/bin"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
    assert host.timed_environment(mine) == mine  # a pool setting given by the user stays


def test_the_cli_runs_the_suite_with_quiet_worker_pools(monkeypatch, capfd):
    """`graphc bench` re-runs itself with OMP_WAIT_POLICY / OPENBLAS_THREAD_TIMEOUT set, so no
    peer's idle threads spin while another is timed; the child's exit code is returned."""
    from graphc import cli

    for name in host.QUIET_POOLS:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["bench", "--only", "X1"]) == 2
    assert "no case id starts with X1" in capfd.readouterr().err


def test_fma_peak_is_measured_for_ymm_and_zmm_only_with_avx512():
    assert host.fma_peak(256, seconds=0.005) > 0
    text = host._fma_loop_ir(16)  # compiled and run only on a host with AVX-512
    assert '"min-legal-vector-width"="512"' in text and "@llvm.fma.v16f32" in text
    llvm = pytest.importorskip("llvmlite.binding")
    llvm.parse_assembly(text).verify()
    line = host.describe_peaks({"threads": 2, "ymm": {"per_thread": 1.0, "all_threads": 2.0},
                                "zmm": None})  # fmt: skip
    assert "1.0 per thread, 2.0 on 2 threads" in line and host.NO_AVX512 in line
    assert host.best_peak({"threads": 2, "ymm": {"per_thread": 1.5}, "zmm": None}) == 3.0
    assert "threadpoolctl is not installed" in host.describe_blas(None)
