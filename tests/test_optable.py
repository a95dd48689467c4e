"""The tests' op table (tests/optable.py) and the registry agree: every primitive of OPS has
a spec, every spec names a primitive OPS has and builds a graph that applies it, with the
primitive's arity, in float32 and float64, gradient-checked when the primitive is
differentiable."""

from __future__ import annotations

import pytest
import strategies
from optable import FLOATS, SPECS, build, specs_of

from graphc.ir.graph import topological_order
from graphc.ir.ops import OPS

# differentiable primitives whose gradient is checked elsewhere, and where
GRADIENT_ELSEWHERE = {"cast": "test_ops.py::test_cast_gradient (finite differences lose digits)"}
BOOL_ONLY = {"logical_and", "logical_or", "logical_not"}  # no float32/float64 to try

PRIMITIVE_SPECS = [spec for spec in SPECS if spec.op is not None]


def test_every_primitive_of_the_registry_has_a_spec():
    missing = set(OPS) - {spec.op for spec in PRIMITIVE_SPECS}
    assert not missing, f"ops of OPS without a spec in tests/optable.py: {sorted(missing)}"


def test_every_spec_names_a_primitive_of_the_registry():
    unknown = {spec.name: spec.op for spec in PRIMITIVE_SPECS if spec.op not in OPS}
    assert not unknown, f"specs of ops that OPS does not have: {unknown}"


def test_spec_names_are_unique():
    names = [spec.name for spec in SPECS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("spec", PRIMITIVE_SPECS, ids=lambda spec: spec.name)
def test_spec_applies_its_primitive_with_its_arity(spec):
    assert spec.shapes and spec.dtypes
    arity = OPS[spec.op].arity
    if arity:  # sources (arity 0) are mixed into an input
        assert len(spec.domains) == arity, f"{spec.op} takes {arity} inputs"
    seen = set()  # some cases may skip the primitive: a cast to the same dtype, a scalar sum
    for shapes in spec.shapes:
        assert len(shapes) == len(spec.domains)
        for dtype in spec.dtypes:
            _, y, _, _ = build(spec, shapes, dtype)
            seen |= {node.op for node in topological_order([y.node])}
    assert spec.op in seen, f"{spec.name} never applies {spec.op}, only {sorted(seen)}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_primitive_is_tried_in_float32_and_float64(op):
    dtypes = {dtype for spec in specs_of(op) for dtype in spec.dtypes}
    if op in BOOL_ONLY:
        assert dtypes == {"bool"}
    else:
        assert set(FLOATS) <= dtypes, f"{op}: only {sorted(dtypes)}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_gradient_checked_exactly_where_the_primitive_is_differentiable(op):
    checked = [spec.name for spec in specs_of(op) if spec.grad]
    if not OPS[op].differentiable:
        assert not checked, f"{op} has no gradient, yet {checked} claim one"
    elif op not in GRADIENT_ELSEWHERE:
        assert checked, f"{op} is differentiable: some spec of it needs grad=True"


def test_random_programs_draw_every_float_elementwise_primitive_in_its_domain():
    """tests/strategies.py takes its unary and binary ops from the table."""
    for arity, drawn, wrappers in [
        (1, strategies.UNARY, strategies.UNARY_WRAPPERS),
        (2, strategies.BINARY, strategies.BINARY_WRAPPERS),
    ]:
        for op, spec in strategies._float_elementwise(arity).items():
            assert op in drawn
            if op not in wrappers:
                assert set(spec.domains) <= set(strategies.INTO_DOMAIN), spec.name
