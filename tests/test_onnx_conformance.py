"""ONNX's own conformance suite (the node tests of the installed onnx) through
graphc.onnx.backend, compiled (gc.compile with the on-disk object cache).

Each node test either passes, or is skipped with the importer's reason (an op, attribute,
dtype or opset graphc does not import: `BackendIsNotSupposedToImplementIt`, reported here as
a skip with its message), or is excluded below with its reason. Nothing fails quietly: the
module must collect the whole node suite, and a sample of supported tests must run.
`python tools/onnx_conformance.py` counts the results per op family next to onnxruntime's.
"""

from __future__ import annotations

import contextlib
import re
import unittest
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test")

import onnx.backend.test  # noqa: E402
from onnx.backend.test.runner import BackendIsNotSupposedToImplementIt  # noqa: E402

from graphc.onnx.backend import GraphcBackend  # noqa: E402

# onnx 1.23 has 1884 node tests; fewer means the suite was not enumerated (a silent zero)
MINIMUM_NODE_TESTS = 1800

# Tests graphc imports but cannot pass yet, as {regex: reason}: the one place for them. None
# at present (onnx 1.23.2): every node test the importer accepts passes. Tests of what the
# importer refuses are skipped with its own reason (README, "ONNX": the list and why).
EXCLUDED: dict[str, str] = {}

# Supported tests that must run (not be skipped): a guard against a backend that skips all
MUST_RUN = [
    "test_add", "test_matmul_2d", "test_gemm_default_no_bias", "test_conv_with_strides_padding",
    "test_maxpool_2d_default", "test_averagepool_2d_pads", "test_softmax_axis_1",
    "test_reduce_mean_default_axes_keepdims_example", "test_gather_0",
    "test_layer_normalization_2d_axis0", "test_batchnorm_example", "test_reshape_negative_dim",
    "test_slice_neg_steps", "test_erf", "test_attention_3d",
]  # fmt: skip


class StrictBackend(GraphcBackend):
    """graphc's backend, with what it does not import reported as a pytest skip (the
    suite's runner would count BackendIsNotSupposedToImplementIt as passed)."""

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        with _skipped_if_unsupported():
            return StrictRep(super().prepare(model, device, **kwargs))


class StrictRep:
    """A prepared model whose run skips likewise (a model importable only with its inputs'
    values is imported at its first run)."""

    def __init__(self, rep):
        self.rep = rep

    def run(self, inputs, **kwargs):
        with _skipped_if_unsupported():
            return self.rep.run(inputs, **kwargs)


@contextlib.contextmanager
def _skipped_if_unsupported():
    try:
        yield
    except BackendIsNotSupposedToImplementIt as error:
        raise unittest.SkipTest(f"not supported: {error}") from None


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    backend_test = onnx.backend.test.BackendTest(StrictBackend, __name__)
backend_test.exclude("_cuda$")
for pattern in EXCLUDED:
    backend_test.exclude(pattern)
# the node tests only (not the real, simple and pytorch-* model categories)
OnnxBackendNodeModelTest = backend_test.test_cases["OnnxBackendNodeModelTest"]


def _node_test_names() -> list[str]:
    names = dir(OnnxBackendNodeModelTest)
    return [name for name in names if name.startswith("test_") and name.endswith("_cpu")]


def test_node_suite_is_collected():
    assert len(_node_test_names()) >= MINIMUM_NODE_TESTS, len(_node_test_names())


def test_exclusions_are_current():
    """Each exclusion still names a node test (a stale pattern hides nothing silently)."""
    names = _node_test_names()
    for pattern in EXCLUDED:
        assert any(re.search(pattern, name) for name in names), pattern


@pytest.mark.parametrize("name", MUST_RUN)
def test_supported_tests_run(name):
    """These run (and match ONNX's expected outputs) rather than being skipped."""
    from onnx.backend.test.loader import load_model_tests
    from onnx.backend.test.runner import Runner
    from onnx.backend.test.runner import _normalize_tensor as normalize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (case,) = [t for t in load_model_tests(kind="node") if t.name == name]
    try:
        rep = GraphcBackend.prepare(case.model, "CPU")
        runs = [rep.run([normalize(x) for x in inputs]) for inputs, _ in case.data_sets]
    except BackendIsNotSupposedToImplementIt as error:
        pytest.fail(f"{name} is supported but was skipped: {error}")
    for (_, expected), outputs in zip(case.data_sets, runs):
        Runner.assert_similar_outputs(
            [normalize(x) for x in expected], outputs, rtol=case.rtol, atol=case.atol
        )
    assert all(isinstance(o, np.ndarray) for o in outputs)
