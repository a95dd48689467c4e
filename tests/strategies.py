"""Hypothesis strategies for random graphc programs, shared by the test modules.

`programs()` draws a random DAG built through the public frontend: elementwise ops
(domain-safe: `log` and `sqrt` see positive values, `pow` a bounded base and exponent),
NumPy broadcasting, layout ops (transpose, reshape, slice, pad, concat, broadcast_to),
reductions (sum, max, mean, argmax as a float), matmul (2-D and batched), casts between
float32 and float64, comparisons through `where`, consts and params. Shapes stay small
(at most `max_size` elements per value) so the interpreter and compiled code are quick.

    @given(programs())
    def test_something(case):
        program, feed = case          # gc.Program, {input name: ndarray}
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st
from optable import FLOATS, SPECS, Spec, is_elementwise

import graphc as gc
from graphc.frontend.tensor import Tensor
from graphc.ir.ops import OPS, apply

DIMS = st.integers(1, 4)
# Names that exercise the printer: dots, parentheses, digits, collisions, spaces, quotes.
ODD_NAMES = ("h", "h", "h.1", "dense1.w", "grad(dense1.w)", "0", "x y", 'q"uote', "True")


def _shape(draw, min_rank=0, max_rank=3):
    return tuple(draw(st.lists(DIMS, min_size=min_rank, max_size=max_rank)))


def _pick(draw, pool, want=None):
    candidates = [t for t in pool if want is None or want(t)]
    if not candidates:
        return None
    return candidates[draw(st.integers(0, len(candidates) - 1))]


# ---- one generator per family of ops: (draw, pool, ctx) -> Tensor or None --------------------


# The elementwise ops come from the op table (tests/optable.py), by primitive name: an op
# added there is drawn here too. Inputs are moved into the op's domain (`INTO_DOMAIN`;
# kinks are fine here, only finite differences avoid them), or by a wrapper of its own
# (`UNARY_WRAPPERS`, `BINARY_WRAPPERS`) that keeps values small.
INTO_DOMAIN = {
    "real": lambda x: x,
    "nonzero": lambda x: x,
    "ties": lambda x: x,
    "positive": lambda x: abs(x) + 0.5,
}
UNARY_WRAPPERS = {
    "exp": lambda x: gc.exp(gc.tanh(x)),  # a bounded argument
    "log": lambda x: gc.log(x * x + 1),  # a positive argument
    "log1p": lambda x: gc.log1p(abs(x)),
}
BINARY_WRAPPERS = {
    "div": lambda a, b: a / (abs(b) + 1),
    "pow": lambda a, b: (gc.sigmoid(a) + 1) ** (gc.tanh(b) if isinstance(b, Tensor) else b),
}


def _float_elementwise(arity: int) -> dict[str, Spec]:
    """Specs of the table's elementwise primitives of `arity` float inputs, by op name:
    casts have a family of their own (`_cast`), comparisons go through `where` (`_select`),
    so of two-input ops only the differentiable (arithmetic) ones are drawn here."""
    found = {}
    for spec in SPECS:
        if (
            is_elementwise(spec)
            and len(spec.domains) == arity
            and not spec.fixed
            and set(FLOATS) <= set(spec.dtypes)
            and spec.op != "cast"
            and (arity == 1 or OPS[spec.op].differentiable)
        ):
            found.setdefault(spec.op, spec)
    return found


def _in_domain(spec: Spec):
    """`spec.fn` on inputs moved into its domains (a domain missing from INTO_DOMAIN fails
    when drawn; tests/test_optable.py checks there is none)."""
    return lambda *xs: spec.fn(
        *(INTO_DOMAIN[domain](x) for domain, x in zip(spec.domains, xs, strict=True))
    )


UNARY = {op: _in_domain(spec) for op, spec in _float_elementwise(1).items()}
UNARY |= UNARY_WRAPPERS | {"relu": gc.relu}
BINARY = {op: _in_domain(spec) for op, spec in _float_elementwise(2).items()} | BINARY_WRAPPERS


def _unary(draw, pool, ctx):
    return UNARY[draw(st.sampled_from(sorted(UNARY)))](_pick(draw, pool))


def _broadcastable(a, b):
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return False
    return True


def _binary(draw, pool, ctx):
    a = _pick(draw, pool)
    b = _pick(draw, pool, lambda t: _broadcastable(a, t))
    if draw(st.booleans()):  # a weak Python scalar or a small const array instead
        b = draw(st.sampled_from([0.5, 2.0, -1.0, 3]))
    elif b is None or draw(st.integers(0, 3)) == 0:
        shape = a.shape[draw(st.integers(0, len(a.shape))) :]
        b = gc.const(ctx["rng"].uniform(-1, 1, shape).astype(a.dtype))
    return BINARY[draw(st.sampled_from(sorted(BINARY)))](a, b)


def _select(draw, pool, ctx):
    a = _pick(draw, pool)
    b = _pick(draw, pool, lambda t: t.shape == a.shape and t.dtype == a.dtype and t is not a)
    b = -a if b is None else b
    compare = draw(st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne"]))
    cond = {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b, "eq": a == b, "ne": a != b}
    if draw(st.booleans()):
        return cond[compare].astype(a.dtype)
    return gc.where(cond[compare], a, b)


def _layout(draw, pool, ctx):
    x = _pick(draw, pool, lambda t: t.ndim > 0)
    if x is None:
        return None
    kind = draw(st.sampled_from(["transpose", "reshape", "slice", "pad", "concat", "broadcast"]))
    if kind == "transpose":
        return x.transpose(*draw(st.permutations(range(x.ndim))))
    if kind == "reshape":
        choices = [(x.size,), x.shape[::-1], (1, *x.shape)]
        return x.reshape(*choices[draw(st.integers(0, 2))])
    if kind == "slice":
        index = []
        for d in x.shape:
            start = draw(st.integers(0, d - 1))
            index.append(slice(start, draw(st.integers(start + 1, d)), draw(st.integers(1, 2))))
        return x[tuple(index)]
    if kind == "pad":
        widths = tuple(tuple(draw(st.integers(0, 1)) for _ in range(3)) for _ in x.shape)
        value = draw(st.sampled_from([0.0, 1.5]))
        return Tensor(apply("pad", x.node, widths=widths, value=value))
    if kind == "concat":
        axis = draw(st.integers(0, x.ndim - 1))

        def fits(t):  # equal dtype, rank and shape except along `axis`
            others = [(a, b) for i, (a, b) in enumerate(zip(t.shape, x.shape)) if i != axis]
            return t.dtype == x.dtype and t.ndim == x.ndim and all(a == b for a, b in others)

        return gc.concat([x, _pick(draw, pool, fits)], axis=axis)
    lead = draw(st.integers(0, 1))
    target = (draw(DIMS),) * lead + tuple(draw(DIMS) if d == 1 else d for d in x.shape)
    return Tensor(apply("broadcast_to", x.node, shape=target))


def _reduce(draw, pool, ctx):
    x = _pick(draw, pool, lambda t: t.ndim > 0)
    if x is None:
        return None
    axes = tuple(sorted(draw(st.sets(st.integers(0, x.ndim - 1), min_size=1))))
    keepdims = draw(st.booleans())
    kind = draw(st.sampled_from(["sum", "max", "mean", "argmax"]))
    if kind == "argmax":
        return x.argmax(axis=axes[0], keepdims=keepdims).astype(x.dtype)
    return getattr(x, kind)(axis=axes, keepdims=keepdims)


def _matmul(draw, pool, ctx):
    a = _pick(draw, pool, lambda t: t.ndim in (2, 3))
    if a is None:
        return None
    n = draw(DIMS)
    b = _pick(draw, pool, lambda t: t.shape == a.shape[:-2] + (a.shape[-1], n))
    if b is None:
        value = ctx["rng"].uniform(-1, 1, a.shape[:-2] + (a.shape[-1], n)).astype(a.dtype)
        b = gc.param(f"w{len(ctx['params'])}", value)
        ctx["params"].append(b)
    return a @ b


def _cast(draw, pool, ctx):
    x = _pick(draw, pool)
    return x.astype("float64" if x.dtype == "float32" else "float32")


GENERATORS = {
    "unary": _unary,
    "binary": _binary,
    "select": _select,
    "layout": _layout,
    "reduce": _reduce,
    "matmul": _matmul,
    "cast": _cast,
}


# Default draw weights: layout ops come in six kinds, so they are drawn twice as often.
FAMILIES = ("unary", "binary", "select", "layout", "layout", "reduce", "matmul", "cast")


def _rename(tensor: Tensor, name: str) -> Tensor:
    """The same computation under a user name (nodes are immutable: a renamed copy)."""
    return Tensor(dataclasses.replace(tensor.node, name=name))


@st.composite
def programs(
    draw,
    max_ops: int = 10,
    dtypes=("float32", "float64"),
    families=FAMILIES,
    max_size: int = 64,
    names: bool = False,
    updates: bool = True,
):
    """(gc.Program, {input name: ndarray}) for a random DAG over `families` of ops."""
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    ctx = {"rng": np.random.default_rng(seed), "params": []}
    inputs = [gc.input(f"x{i}", _shape(draw), dtype) for i in range(draw(st.integers(1, 3)))]
    pool: list[Tensor] = list(inputs)
    for i in range(draw(st.integers(0, 2))):
        param = gc.param(f"p{i}", ctx["rng"].uniform(-1, 1, _shape(draw)).astype(dtype))
        ctx["params"].append(param)
        pool.append(param)
    for _ in range(draw(st.integers(1, max_ops))):
        family = draw(st.sampled_from(families))
        result = GENERATORS[family](draw, pool, ctx)
        if result is None or result.size > max_size:
            continue
        if names and result.node.op not in ("input", "param") and draw(st.integers(0, 3)) == 0:
            result = _rename(result, draw(st.sampled_from(ODD_NAMES)))
        pool.append(result)
    computed = pool[len(inputs) :]
    outputs = [pool[-1]] + [draw(st.sampled_from(pool))] * draw(st.integers(0, 1))
    update_map = {}
    if updates and ctx["params"] and computed:
        target = ctx["params"][0]
        value = _pick(draw, computed, lambda t: _broadcastable(t, target))
        if value is not None and np.broadcast_shapes(value.shape, target.shape) == target.shape:
            update_map[target] = target - 0.1 * value
    program = gc.Program(inputs, outputs, update_map, name=draw(st.sampled_from(["main", "step"])))
    feed = {x.name: ctx["rng"].uniform(-2, 2, x.shape).astype(x.dtype) for x in inputs}
    return program, feed
