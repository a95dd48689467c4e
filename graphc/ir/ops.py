"""The op registry: one stanza per primitive, holding everything graphc knows about it.

Each `OpDef` holds the op's name, its fusion kind, type inference (raising `ShapeError` /
`DTypeError`), the NumPy reference `ref` the interpreter runs, and its derivatives as graph
construction: `vjp(node, g) -> one adjoint per input (None = zero)`; `jvp(node, tangents)
-> tangent of the output`. Elementwise ops give `partials(node) -> one ∂out/∂input node
per input` instead, from which both are derived; linear ops (`linear=True`) take their
tangent by applying themselves to the input tangents.

What passes and code generation need is a trait of the stanza too, so that no pass or
emitter ever tests an op's name (tests/test_layering.py checks):
- `cost`: units per element of computing it inside a loop (an add is 1; index maps and
  constants 0), read by fusion's kernel size limit.
- `math`: the name of its vectorizable routine in codegen/mathlib.py (exp, tanh ...); the
  op is then a transcendental (`expensive`), and its `scalar` emitter calls the routine.
  codegen checks when it is imported that every named routine exists.
- `scalar(e, *values, **attrs)`: the elementwise emitter, with `e` the codegen's `Emitter`
  (duck-typed: `ir` never imports llvmlite).
- `index_map(k, node, index)`: a layout op's value at `index` as its inputs' values
  elsewhere, on the codegen's kernel emitter `k` (`k.b` an IRBuilder, `k.value(x, index)`,
  `k.index(shape, values= | flat=)`, `k.i64(n)` an i64 constant, `k.immediate(value,
  dtype)`, `k.e` the Emitter, `k.cases(value, thresholds)` which intervals an index can be
  in over the loops emitted: a concat reads only those pieces, codegen/pieces.py).
  `view(node, offset, strides) -> (offset, strides)` when the map is affine (a strided
  view of its input: a matmul reads such operands in place; an axis may walk several
  strides, and the rule returns None where its result is no view: ir/views.py);
  `flat=True` when it reads its input at the output's own flat index (reshape).
- `reduction`: the identity, combine and (argmax) position rule of a reduction.
- `lower(node)`: an op computed as other ops (conv: a matmul over a window view); simplify
  replaces it, after differentiation (its own vjp stays cheaper than its lowering's).
- `together(node)`: a key; nodes with equal keys are computed by one kernel (the outputs of
  one loop: ir/scan.py), and differentiated by one call `vjp(node, {node: adjoint, ...})`
  with the adjoints of all of them that have one.
- `zeros(node)`: per axis the range outside which the node's values are zero (pad); a
  matmul reading the stored node through a window skips the products with those zeros.
- `fuses_inputs=False`: an anchor whose inputs are never computed inside its kernel;
  `alone=True`: computed by one call in a kernel of its own (allreduce: MPI_Allreduce), or
  by a loop of its own: `kernel_form` names the form (scatter_add: "scatter").
- `checked=True`: its compiled form checks the indices it reads (`k.check(ok)`): an index
  out of range sets the program's run-time status and the call raises InputError; the
  address is clamped, so compiled code never reads or writes out of bounds.
Adding an op touches one stanza (and, for a new transcendental, its math routine): a
unary op with a `math` routine is also public as `gc.<name>`, documented by its `doc`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from math import prod

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.ir import printer, views
from graphc.ir.graph import Node, user_location
from graphc.ir.types import DTYPES, FLOATS, INTS, TensorType


class Kind(IntEnum):
    """Fusion kinds, ordered: fusion decisions are comparisons."""

    ELEMWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCE = 3
    CONTRACTION = 4
    OPAQUE = 5


@dataclass(frozen=True)
class Reduction:
    """How a reduction accumulates, on the codegen's Emitter `e`: `identity(dtype)` is the
    accumulator's start (a Python number), `combine(e, acc, v)` the next accumulator; with
    `better(e, v, acc)` (argmax) the accumulator is replaced where it is true, and the
    position of the value that replaced it is the result."""

    identity: Callable[[str], float | int]
    combine: Callable | None = None
    better: Callable | None = None

    @property
    def positional(self) -> bool:
        return self.better is not None


@dataclass(frozen=True)
class OpDef:
    """One primitive's stanza (the module docstring describes each field)."""

    name: str
    kind: Kind
    infer: Callable
    ref: Callable
    arity: int | None = None  # None: any number of inputs
    vjp: Callable | None = None
    jvp: Callable | None = None
    partials: Callable | None = None
    linear: bool = False
    differentiable: bool = True
    scalar: Callable | None = None
    cost: int = 1
    math: str | None = None
    index_map: Callable | None = None
    view: Callable | None = None
    flat: bool = False
    reduction: Reduction | None = None
    fuses_inputs: bool = True
    memory: bool = False  # a source whose values are read from memory (input, param, const)
    in_names: bool = True  # shown in the names of the kernels computing it (cast: not)
    doc: str = ""  # a math op's public function (gc.exp ...) is documented by this
    alone: bool = False  # computed by a call of its own, in a kernel of its own (collectives)
    kernel_form: str = "collective"  # with `alone`: the kernel form computing it (scatter)
    checked: bool | Callable = False  # its compiled form checks indices at run time (take);
    # a function of the node when that depends on the node (a loop: on its body's ops)
    lower: Callable | None = None  # computed as other ops: lower(node) builds them (conv)
    index_text: Callable | None = None  # a layout op's index map for dumps: (node, input) -> str
    together: Callable | None = None  # nodes of equal together(node) share a kernel (scan)
    zeros: Callable | None = None  # (node) -> per axis [lo, hi): outside, its values are 0 (pad)

    def __post_init__(self):
        if self.math is not None and self.scalar is None:
            routine = self.math
            object.__setattr__(self, "scalar", lambda e, *xs: e.math(routine, *xs))

    @property
    def expensive(self) -> bool:
        """A transcendental: worth storing rather than computing twice."""
        return self.math is not None

    @property
    def anchor(self) -> bool:
        """A reduction, a contraction or a call of its own: a kernel is built around it."""
        return self.kind in (Kind.REDUCE, Kind.CONTRACTION) or self.alone


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add `opdef` to the registry OPS."""
    OPS[opdef.name] = opdef
    if opdef.index_text is not None:
        printer.INDEX_TEXT[opdef.name] = opdef.index_text
    return opdef


def opdef(node: Node) -> OpDef:
    """The stanza of `node`'s op."""
    return OPS[node.op]


def affine_view(node: Node, is_source) -> views.View | None:
    """`node` as a view of the first value down its layout chain for which `is_source` holds,
    if every op on the way has a `view` rule that maps its input's view to its own."""
    chain = []
    while not is_source(node):
        if OPS[node.op].view is None:
            return None
        chain.append(node)
        node = node.inputs[0]
    view = views.View(node, 0, views.strides_of(node.shape))
    for n in reversed(chain):
        mapped = OPS[n.op].view(n, view.offset, view.strides)
        if mapped is None:
            return None
        view = views.View(view.source, mapped[0], tuple(mapped[1]))
    return view


def nonzero_box(node: Node) -> tuple[tuple[int, int], ...] | None:
    """Per axis the range [lo, hi) outside which `node`'s values are known to be zero (a
    zero padding's border), or None where nothing is known."""
    rule = OPS[node.op].zeros
    return rule(node) if rule is not None else None


def is_input(node: Node) -> bool:
    return node.op == "input"


def is_param(node: Node) -> bool:
    return node.op == "param"


def is_const(node: Node) -> bool:
    return node.op == "const"


def is_variable(node: Node) -> bool:
    """An input or a param: a value fed from outside the graph."""
    return node.op in ("input", "param")


def relu_input(node: Node) -> Node | None:
    """`x` when `node` is relu(x) as the frontend builds it, where(x > 0, x, 0); else None.
    (Kernel names say "relu" rather than "where_gt".)"""
    if node.op != "where":
        return None
    cond, a, b = node.inputs
    if cond.op == "gt" and cond.inputs[0] is a and cond.inputs[1] is b and _is_zero(b):
        return a
    return None


def _is_zero(node: Node) -> bool:
    while node.op == "broadcast_to":
        node = node.inputs[0]
    return node.op == "const" and node.type.size == 1 and float(node.attrs["value"].item()) == 0


def apply(op: str, *inputs: Node, name: str | None = None, **attrs) -> Node:
    """Create a node of primitive `op`, inferring its type (errors name op, shapes, line)."""
    loc = user_location()
    where = f" (at {loc})" if loc else ""
    opdef = OPS.get(op)
    if opdef is None:
        raise GraphcError(f"unknown op {op!r}{where}")
    if opdef.arity is not None and len(inputs) != opdef.arity:
        raise GraphcError(f"{op} takes {opdef.arity} inputs, got {len(inputs)}{where}")
    try:
        node_type = opdef.infer([x.type for x in inputs], attrs)
    except GraphcError as error:
        raise type(error)(f"{op}: {error}{where}") from None
    except KeyError as error:
        raise GraphcError(f"{op}: missing attribute {error}{where}") from None
    return Node(op, tuple(inputs), attrs, node_type, name, loc)


# ---- helpers for building adjoint graphs ----------------------------------------------------


def const(value, dtype) -> Node:
    """A constant node holding `value` as `dtype`."""
    return apply("const", value=np.asarray(value, dtype=dtype))


def full(value, like: Node) -> Node:
    """`value` broadcast to the type of `like`."""
    scalar = const(value, like.dtype)
    return scalar if like.shape == () else apply("broadcast_to", scalar, shape=like.shape)


def mul(a, b):
    return apply("mul", a, b)


def div(a, b):
    return apply("div", a, b)


def add(a, b):
    return apply("add", a, b)


def add_all(terms) -> Node | None:
    """The sum of the terms that are not None, added left to right (None if there are none)."""
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = add(total, term)
    return total


def sub(a, b):
    return apply("sub", a, b)


def neg(a):
    return apply("neg", a)


def where(c, a, b):
    return apply("where", c, a, b)


def cast(x, dtype):
    return x if x.dtype == dtype else apply("cast", x, dtype=dtype)


def reshape(x, shape):
    return x if x.shape == tuple(shape) else apply("reshape", x, shape=tuple(shape))


def broadcast_to(x, shape):
    return x if x.shape == tuple(shape) else apply("broadcast_to", x, shape=tuple(shape))


def sum_to(g: Node, shape: tuple[int, ...]) -> Node:
    """Undo NumPy broadcasting: sum `g` down to `shape` (the one place this happens)."""
    if g.shape == shape:
        return g
    lead = len(g.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1
    )
    summed = apply("sum", g, axes=axes, keepdims=True) if axes else g
    return reshape(summed, shape)


def _swap_last(x):
    perm = tuple(range(len(x.shape) - 2)) + (len(x.shape) - 1, len(x.shape) - 2)
    return apply("transpose", x, perm=perm)


# ---- type inference helpers -----------------------------------------------------------------


def _same_shapes(types):
    first = types[0]
    for t in types[1:]:
        if t.shape != first.shape:
            shapes = " vs ".join(str(u) for u in types)
            raise ShapeError(f"elementwise inputs must have equal shapes, got {shapes}")
    return first


def _same_dtypes(types):
    if len({t.dtype for t in types}) > 1:
        raise DTypeError(f"inputs must share one dtype, got {', '.join(map(str, types))}")


def _elementwise(allowed, result=None):
    """Inference for an elementwise op over equal shapes and dtypes in `allowed`."""

    def infer(types, attrs):
        first = _same_shapes(types)
        _same_dtypes(types)
        if first.dtype not in allowed:
            raise DTypeError(f"does not accept {first}; allowed dtypes: {', '.join(allowed)}")
        return first.with_dtype(result or first.dtype)

    return infer


NUMERIC = FLOATS + INTS


def _integer(value, key: str) -> int:
    """One integer of attribute `key`; a bool (an int to Python) or a float is a ShapeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ShapeError(f"attribute {key} must hold integers, got {value!r}")
    return int(value)


def _integers(attrs, key: str, rank: int = 1) -> tuple:
    """Attribute `key` as a tuple of ints (rank 2: of int tuples, as pad's widths)."""
    value = attrs[key]
    if rank == 0:
        return _integer(value, key)
    if not isinstance(value, (tuple, list, np.ndarray)):
        raise ShapeError(f"attribute {key} must be a tuple, got {value!r}")
    return tuple(_integers({key: v}, key, rank - 1) for v in value)


def _flag(attrs, key: str) -> bool:
    """Attribute `key`, which must be a bool."""
    if not isinstance(attrs[key], (bool, np.bool_)):
        raise ShapeError(f"attribute {key} must be True or False, got {attrs[key]!r}")
    return bool(attrs[key])


def _unary(name, ref, partial=None, allowed=FLOATS, linear=False, **extra):
    partials = (lambda n: [partial(n.inputs[0], n)]) if partial else None
    return register(
        OpDef(
            name,
            Kind.ELEMWISE,
            _elementwise(allowed),
            lambda xs, attrs: ref(xs[0]),
            arity=1,
            partials=partials,
            linear=linear,
            differentiable=partial is not None or linear,
            **extra,
        )
    )


def _binary(name, ref, partials=None, allowed=NUMERIC, result=None, linear=False, **extra):
    return register(
        OpDef(
            name,
            Kind.ELEMWISE,
            _elementwise(allowed, result),
            lambda xs, attrs: ref(xs[0], xs[1]),
            arity=2,
            partials=partials,
            linear=linear,
            differentiable=partials is not None or linear,
            **extra,
        )
    )


# ---- elementwise ----------------------------------------------------------------------------

_unary(
    "neg",
    np.negative,
    allowed=NUMERIC,
    linear=True,
    vjp=lambda n, g: [neg(g)],
    scalar=lambda e, x: e.neg(x),
)
_unary("abs", np.abs, lambda x, y: apply("sign", x), allowed=NUMERIC, scalar=lambda e, x: e.abs(x))
_unary("sign", np.sign, allowed=NUMERIC, scalar=lambda e, x: e.sign(x))
_unary(
    "exp",
    np.exp,
    lambda x, y: y,
    math="exp",
    doc="e ** x, elementwise (integers become float64, as in NumPy).",
    cost=12,
)
_unary(
    "log",
    np.log,
    lambda x, y: div(full(1, x), x),
    math="log",
    doc="The natural logarithm, elementwise.",
    cost=14,
)
_unary(
    "log1p",
    np.log1p,
    lambda x, y: div(full(1, x), add(full(1, x), x)),
    math="log1p",
    doc="log(1 + x), accurate for small x.",
    cost=16,
)
_unary(
    "sin", np.sin, lambda x, y: apply("cos", x), math="sin", doc="The sine, elementwise.", cost=20
)
_unary(
    "cos",
    np.cos,
    lambda x, y: neg(apply("sin", x)),
    math="cos",
    doc="The cosine, elementwise.",
    cost=20,
)
_unary(
    "tanh",
    np.tanh,
    lambda x, y: sub(full(1, y), mul(y, y)),
    math="tanh",
    doc="The hyperbolic tangent, elementwise.",
    cost=16,
)
_unary(
    "atan",
    np.arctan,
    lambda x, y: div(full(1, x), add(full(1, x), mul(x, x))),
    math="atan",
    doc="The arctangent, elementwise, in (-pi/2, pi/2).",
    cost=20,
)
_unary(
    "sqrt",
    np.sqrt,
    lambda x, y: div(full(0.5, y), y),
    math="sqrt",
    doc="The square root, elementwise.",
    cost=4,
)


_math_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; Python's: ~1 ulp (vs mpmath)


def _erf_ref(x):
    return np.asarray(_math_erf(x.astype(np.float64)), dtype=np.float64).astype(x.dtype)


_unary(
    "erf",
    _erf_ref,
    # d/dx erf x = 2/sqrt(pi) exp(-x²)
    lambda x, y: mul(full(2 / np.sqrt(np.pi), x), apply("exp", neg(mul(x, x)))),
    math="erf",
    doc="The error function, elementwise: 2/sqrt(pi) times the integral of exp(-t²) to x.",
    cost=40,
)
# floor, ceil and round (half to even, as np.round) are piecewise constant: derivative 0,
# as in PyTorch and JAX. (Integers are their own floor: the frontend returns them as is.)
for _name, _ref, _intrinsic in [
    ("floor", np.floor, "llvm.floor"),
    ("ceil", np.ceil, "llvm.ceil"),
    ("round", np.rint, "llvm.rint"),  # rint rounds half to even in the default mode
]:
    _unary(
        _name,
        _ref,
        lambda x, y: full(0, x),
        scalar=lambda e, x, intrinsic=_intrinsic: e.intrinsic(intrinsic, x),
        cost=2,
    )


def _divmod_ref(function):
    def ref(a, b):
        with np.errstate(all="ignore"):  # x // 0 and x % 0: NumPy's values, no warning
            return function(a, b)

    return ref


# NumPy's % (the sign of the divisor) and // (floor), floats and integers: mathlib's
# routines. a % b = a - (a // b) b, so its partials are 1 and -(a // b); // is piecewise
# constant.
_binary(
    "remainder",
    _divmod_ref(np.remainder),
    lambda n: [full(1, n), neg(apply("floor_divide", *n.inputs))],
    math="remainder",
    cost=16,
)
_binary(
    "floor_divide",
    _divmod_ref(np.floor_divide),
    lambda n: [full(0, n), full(0, n)],
    math="floor_divide",
    cost=16,
)


def _sigmoid_ref(x):
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(x.dtype)


_unary(
    "sigmoid",
    _sigmoid_ref,
    lambda x, y: mul(y, sub(full(1, y), y)),
    math="sigmoid",
    doc="1 / (1 + exp(-x)), elementwise.",
    cost=12,
)
_unary("logical_not", np.logical_not, allowed=("bool",), scalar=lambda e, x: e.logical_not(x))


def _extremum_partials(wins: str):
    """∂max(a,b) (or min): 1 to the input that wins, 1/2 each on ties."""

    def partials(n):
        a, b = n.inputs
        half, one, zero = full(0.5, a), full(1, a), full(0, a)
        on_a = where(apply(wins, a, b), one, where(apply("eq", a, b), half, zero))
        return [on_a, sub(one, on_a)]

    return partials


def _pow_partials(n):
    a, b = n.inputs
    # d/da a^b = b a^(b-1);  d/db a^b = a^b log a  (taken as 0 where a == 0)
    da = mul(b, apply("pow", a, sub(b, full(1, b))))
    safe_a = where(apply("eq", a, full(0, a)), full(1, a), a)
    db = mul(n, apply("log", safe_a))
    return [da, db]


def _pow_ref(a, b):
    with np.errstate(all="ignore"):
        return np.power(a, b)


def _div_ref(a, b):
    with np.errstate(all="ignore"):
        return np.divide(a, b)


_binary("add", np.add, linear=True, vjp=lambda n, g: [g, g], scalar=lambda e, x, y: e.add(x, y))
_binary(
    "sub",
    np.subtract,
    linear=True,
    vjp=lambda n, g: [g, neg(g)],
    scalar=lambda e, x, y: e.sub(x, y),
)
_binary(
    "mul", np.multiply, lambda n: [n.inputs[1], n.inputs[0]], scalar=lambda e, x, y: e.mul(x, y)
)
_binary(
    "div",
    _div_ref,
    lambda n: [div(full(1, n), n.inputs[1]), neg(div(n, n.inputs[1]))],
    allowed=FLOATS,
    scalar=lambda e, x, y: e.div(x, y),
    cost=4,
)
_binary("pow", _pow_ref, _pow_partials, allowed=FLOATS, math="pow", cost=30)
_binary("maximum", np.maximum, _extremum_partials("gt"), scalar=lambda e, x, y: e.maximum(x, y))
_binary("minimum", np.minimum, _extremum_partials("lt"), scalar=lambda e, x, y: e.minimum(x, y))
for _name, _ref, _symbol in [
    ("lt", np.less, "<"),
    ("le", np.less_equal, "<="),
    ("gt", np.greater, ">"),
    ("ge", np.greater_equal, ">="),
    ("eq", np.equal, "=="),
    ("ne", np.not_equal, "!="),
]:
    _binary(
        _name,
        _ref,
        allowed=DTYPES,
        result="bool",
        scalar=lambda e, x, y, symbol=_symbol: e.compare(symbol, x, y),
    )
_binary(
    "logical_and", np.logical_and, allowed=("bool",), scalar=lambda e, x, y: e.logical_and(x, y)
)
_binary("logical_or", np.logical_or, allowed=("bool",), scalar=lambda e, x, y: e.logical_or(x, y))


def _infer_where(types, attrs):
    cond, a, b = types
    _same_shapes(types)
    if cond.dtype != "bool":
        raise DTypeError(f"condition must be bool, got {cond}")
    _same_dtypes([a, b])
    return a


register(
    OpDef(
        "where",
        Kind.ELEMWISE,
        _infer_where,
        lambda xs, attrs: np.where(*xs),
        arity=3,
        scalar=lambda e, c, x, y: e.select(c, x, y),
        vjp=lambda n, g: [
            None,
            where(n.inputs[0], g, full(0, g)),
            where(n.inputs[0], full(0, g), g),
        ],
        jvp=lambda n, t: where(
            n.inputs[0],
            t[1] if t[1] is not None else full(0, n),
            t[2] if t[2] is not None else full(0, n),
        ),
    )
)


def _infer_cast(types, attrs):
    return types[0].with_dtype(attrs["dtype"])


def _cast_vjp(n, g):
    return [cast(g, n.inputs[0].dtype) if n.inputs[0].dtype in FLOATS else None]


register(
    OpDef(
        "cast",
        Kind.ELEMWISE,
        _infer_cast,
        lambda xs, attrs: xs[0].astype(attrs["dtype"]),
        arity=1,
        vjp=_cast_vjp,
        scalar=lambda e, x, dtype: e.cast(x, dtype),  # attrs arrive as keywords
        jvp=lambda n, t: cast(t[0], n.dtype) if n.dtype in FLOATS else None,
        in_names=False,
    )
)
register(
    OpDef(
        "stop_gradient",
        Kind.ELEMWISE,
        lambda types, attrs: types[0],
        lambda xs, attrs: xs[0],
        arity=1,
        differentiable=False,
        scalar=lambda e, x: x,
    )
)


# ---- layout ---------------------------------------------------------------------------------


def _infer_broadcast_to(types, attrs):
    (x,) = types
    shape = _integers(attrs, "shape")
    lead = len(shape) - x.ndim
    if lead < 0 or any(d not in (1, s) for d, s in zip(x.shape, shape[lead:])):
        raise ShapeError(f"cannot broadcast {x} to shape {shape}")
    return x.with_shape(shape)


def _map_broadcast(k, node, index):
    x = node.inputs[0]
    lead = node.ndim - x.ndim
    values = [k.i64(0) if d == 1 else v for d, v in zip(x.shape, index.values[lead:])]
    return k.value(x, k.index(x.shape, values=values))


def _view_broadcast(node, offset, strides):
    in_shape = node.inputs[0].shape
    lead = node.ndim - len(in_shape)
    kept = [
        0 if d == 1 and n != 1 else st for d, n, st in zip(in_shape, node.shape[lead:], strides)
    ]
    return offset, (0,) * lead + tuple(kept)


register(
    OpDef(
        "broadcast_to",
        Kind.BROADCAST,
        _infer_broadcast_to,
        lambda xs, attrs: np.broadcast_to(xs[0], attrs["shape"]).copy(),
        arity=1,
        vjp=lambda n, g: [sum_to(g, n.inputs[0].shape)],
        linear=True,
        cost=0,
        index_map=_map_broadcast,
        view=_view_broadcast,
    )
)


def _map_reshape(k, node, index):
    """The input's index: axes the two shapes share in front and behind keep their values;
    only the axes in between go through a flat index (divisions by constants)."""
    x = node.inputs[0]
    same = min(x.ndim, node.ndim)
    lead = next((i for i in range(same) if x.shape[i] != node.shape[i]), same)
    tail = 0
    while tail < same - lead and x.shape[x.ndim - 1 - tail] == node.shape[node.ndim - 1 - tail]:
        tail += 1
    inner_out = node.shape[lead : node.ndim - tail]
    inner_in = x.shape[lead : x.ndim - tail]
    local = k.index(inner_out, values=index.values[lead : node.ndim - tail]).flat
    values = [
        *index.values[:lead],
        *k.index(inner_in, flat=local).values,
        *index.values[node.ndim - tail :],
    ]
    return k.value(x, k.index(x.shape, values=values, flat=index.flat))  # same flat index


def _view_reshape(node, offset, strides):
    axes = views.reshape(node.inputs[0].shape, strides, node.shape)
    return None if axes is None else (offset, axes)


def _infer_reshape(types, attrs):
    (x,) = types
    shape = _integers(attrs, "shape")
    if prod(shape) != x.size or any(d < 0 for d in shape):
        raise ShapeError(f"cannot reshape {x} ({x.size} elements) to shape {shape}")
    return x.with_shape(shape)


register(
    OpDef(
        "reshape",
        Kind.INJECTIVE,
        _infer_reshape,
        lambda xs, attrs: xs[0].reshape(attrs["shape"]),
        arity=1,
        vjp=lambda n, g: [reshape(g, n.inputs[0].shape)],
        linear=True,
        cost=0,
        index_map=_map_reshape,
        view=_view_reshape,
        flat=True,
    )
)


def _infer_transpose(types, attrs):
    (x,) = types
    perm = _integers(attrs, "perm")
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"perm {perm} is not a permutation of the axes of {x}")
    return x.with_shape([x.shape[p] for p in perm])


def _map_transpose(k, node, index):
    x = node.inputs[0]
    values = [None] * x.ndim
    for out_axis, in_axis in enumerate(node.attrs["perm"]):
        values[in_axis] = index.values[out_axis]
    return k.value(x, k.index(x.shape, values=values))


register(
    OpDef(
        "transpose",
        Kind.INJECTIVE,
        _infer_transpose,
        lambda xs, attrs: np.transpose(xs[0], attrs["perm"]),
        arity=1,
        vjp=lambda n, g: [apply("transpose", g, perm=tuple(np.argsort(n.attrs["perm"]).tolist()))],
        linear=True,
        cost=0,
        index_map=_map_transpose,
        view=lambda node, offset, strides: (offset, tuple(strides[p] for p in node.attrs["perm"])),
    )
)


def _infer_slice(types, attrs):
    (x,) = types
    starts, stops, steps = (_integers(attrs, key) for key in ("starts", "stops", "steps"))
    if not len(starts) == len(stops) == len(steps) == x.ndim:
        raise ShapeError(f"slice of {x} needs one start/stop/step per axis")
    shape = []
    for d, start, stop, step in zip(x.shape, starts, stops, steps):
        if step < 1 or not 0 <= start <= stop <= d:
            raise ShapeError(f"slice {start}:{stop}:{step} out of range for axis of {d} in {x}")
        shape.append(len(range(start, stop, step)))
    return x.with_shape(shape)


def _slice_ref(xs, attrs):
    index = tuple(
        slice(a, b, c) for a, b, c in zip(attrs["starts"], attrs["stops"], attrs["steps"])
    )
    return xs[0][index].copy()


def _slice_vjp(n, g):
    x = n.inputs[0]
    widths = []
    for d, start, size, step in zip(x.shape, n.attrs["starts"], n.shape, n.attrs["steps"]):
        used = (size - 1) * step + 1 if size else 0
        widths.append((start, d - start - used, step - 1) if size else (d, 0, 0))
    return [apply("pad", g, widths=tuple(widths), value=0.0)]


def _map_slice(k, node, index):
    x, b = node.inputs[0], k.b
    values = [
        b.add(k.i64(start), b.mul(v, k.i64(step)))
        for v, start, step in zip(index.values, node.attrs["starts"], node.attrs["steps"])
    ]
    return k.value(x, k.index(x.shape, values=values))


def _view_slice(node, offset, strides):
    attrs, shape = node.attrs, node.inputs[0].shape
    new_strides = []
    for d, start, stop, step, stride in zip(
        shape, attrs["starts"], attrs["stops"], attrs["steps"], strides
    ):
        if isinstance(stride, int):
            offset += start * stride
            new_strides.append(stride * step)
        elif (start, stop, step) == (0, d, 1):
            new_strides.append(stride)  # all of an axis of (size, stride) pairs
        else:
            return None
    return offset, tuple(new_strides)


register(
    OpDef(
        "slice",
        Kind.INJECTIVE,
        _infer_slice,
        _slice_ref,
        arity=1,
        vjp=_slice_vjp,
        linear=True,
        cost=0,
        index_map=_map_slice,
        view=_view_slice,
    )
)


def _infer_pad(types, attrs):
    (x,) = types
    widths = _integers(attrs, "widths", rank=2)
    if len(widths) != x.ndim or any(len(w) != 3 or min(w) < 0 for w in widths):
        raise ShapeError(f"pad widths {widths} must be (low, high, interior) >= 0 per axis of {x}")
    shape = [
        lo + hi + d + max(d - 1, 0) * interior for d, (lo, hi, interior) in zip(x.shape, widths)
    ]
    return x.with_shape(shape)


def _pad_ref(xs, attrs):
    x = xs[0]
    out_type = _infer_pad([TensorType(x.shape, x.dtype.name)], attrs)
    out = np.full(out_type.shape, attrs["value"], dtype=x.dtype)
    index = tuple(
        slice(lo, lo + (d - 1) * (i + 1) + 1 if d else lo, i + 1)
        for d, (lo, hi, i) in zip(x.shape, attrs["widths"])
    )
    out[index] = x
    return out


def _pad_vjp(n, g):
    x = n.inputs[0]
    starts = tuple(lo for lo, hi, i in n.attrs["widths"])
    steps = tuple(i + 1 for lo, hi, i in n.attrs["widths"])
    stops = tuple(lo + (d - 1) * s + 1 if d else lo for d, lo, s in zip(x.shape, starts, steps))
    return [apply("slice", g, starts=starts, stops=stops, steps=steps)]


def _pad_jvp(n, t):
    # pad is affine in its input: the tangent is padded with 0, not with the fill value
    return apply("pad", t[0], widths=n.attrs["widths"], value=0.0)


def _map_pad(k, node, index):
    """The input where the index is over it, else the fill value: per axis, `k.cases` says
    whether the index can be below the input (case 0), over it (1) or past it (2) in the
    loops being emitted, and only the tests for the cases it can be in are emitted."""
    x, b = node.inputs[0], k.b
    fill = k.immediate(node.attrs["value"], node.dtype)
    axes = []
    for v, d, (low, _, interior) in zip(index.values, x.shape, node.attrs["widths"]):
        shifted = b.sub(v, k.i64(low))
        where = k.cases(shifted, (0, (d - 1) * (interior + 1) + 1)) if d else range(0)
        if 1 not in where:
            return fill  # outside the input along this axis everywhere here
        axes.append((shifted, d, interior + 1, where))
    inside, values = None, []
    for shifted, d, step, where in axes:
        source = b.sdiv(shifted, k.i64(step)) if step > 1 else shifted
        tests = []
        if 0 in where:
            tests.append(b.icmp_signed(">=", shifted, k.i64(0)))
        if 2 in where:
            tests.append(b.icmp_signed("<", source, k.i64(d)))
        if step > 1:
            tests.append(b.icmp_signed("==", b.srem(shifted, k.i64(step)), k.i64(0)))
        if not tests:
            values.append(source)
            continue
        ok = tests[0]
        for test in tests[1:]:
            ok = b.and_(ok, test)
        inside = ok if inside is None else b.and_(inside, ok)
        values.append(b.select(ok, source, k.i64(0)))  # clamp: the load stays in bounds
    value = k.value(x, k.index(x.shape, values=values))
    return b.select(inside, value, fill) if inside is not None else value


def _pad_zeros(node: Node):
    """A zero padding without interior steps is zero outside the box its input fills."""
    widths = node.attrs["widths"]
    if node.attrs["value"] != 0 or any(lo < 0 or hi < 0 or step for lo, hi, step in widths):
        return None
    return tuple((lo, size - hi) for (lo, hi, _), size in zip(widths, node.shape))


register(
    OpDef(
        "pad",
        Kind.INJECTIVE,
        _infer_pad,
        _pad_ref,
        arity=1,
        vjp=_pad_vjp,
        jvp=_pad_jvp,
        linear=True,
        index_map=_map_pad,
        zeros=_pad_zeros,
    )
)


def _infer_concat(types, attrs):
    if not types:
        raise ShapeError("concat needs at least one input")
    axis = _integers(attrs, "axis", rank=0)
    first = types[0]
    if not 0 <= axis < first.ndim:
        raise ShapeError(f"axis {axis} out of range for {first}")
    _same_dtypes(types)
    for t in types[1:]:
        if t.ndim != first.ndim or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis
        ):
            raise ShapeError(f"cannot concat {', '.join(map(str, types))} along axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return first.with_shape(shape)


def _concat_vjp(n, g):
    axis, start, grads = n.attrs["axis"], 0, []
    for x in n.inputs:
        starts = [0] * g.type.ndim
        stops = list(g.shape)
        starts[axis], stops[axis] = start, start + x.shape[axis]
        grads.append(
            apply("slice", g, starts=tuple(starts), stops=tuple(stops), steps=(1,) * len(stops))
        )
        start += x.shape[axis]
    return grads


def _map_concat(k, node, index):
    """The input whose piece holds the index: only the pieces `k.cases` says it can be in
    over the loops being emitted are read (one, where the loops are cut at the pieces)."""
    axis, b = node.attrs["axis"], k.b
    position = index.values[axis]
    starts = [0]
    for x in node.inputs:
        starts.append(starts[-1] + x.shape[axis])
    # an empty piece starts where the next one does: the index is never in it
    pieces = [j for j in k.cases(position, starts[1:-1]) if starts[j + 1] > starts[j]]
    result = None
    for j in pieces:
        x, start, size = node.inputs[j], starts[j], starts[j + 1] - starts[j]
        local = b.sub(position, k.i64(start))
        if len(pieces) > 1:  # clamp: the load of a piece not chosen stays in bounds
            local = b.select(b.icmp_unsigned("<", local, k.i64(size)), local, k.i64(0))
        values = list(index.values)
        values[axis] = local
        v = k.value(x, k.index(x.shape, values=values))
        before = b.icmp_unsigned("<", position, k.i64(start))
        result = v if result is None else b.select(before, result, v)
    return result


register(
    OpDef(
        "concat",
        Kind.INJECTIVE,
        _infer_concat,
        lambda xs, attrs: np.concatenate(xs, axis=attrs["axis"]),
        vjp=_concat_vjp,
        linear=True,
        index_map=_map_concat,
    )
)


# ---- reductions -----------------------------------------------------------------------------


def _reduced_shape(x, axes, keepdims):
    if any(not 0 <= a < x.ndim for a in axes) or len(set(axes)) != len(axes):
        raise ShapeError(f"axes {tuple(axes)} invalid for {x}")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _infer_reduce(allowed):
    def infer(types, attrs):
        (x,) = types
        if x.dtype not in allowed:
            raise DTypeError(f"does not accept {x}")
        axes = _integers(attrs, "axes")
        return x.with_shape(_reduced_shape(x, axes, _flag(attrs, "keepdims")))

    return infer


def _expand_back(g: Node, x: Node, axes) -> Node:
    """Broadcast a reduced value back over the reduced axes of `x`."""
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return broadcast_to(reshape(g, kept), x.shape)


def _max_mask(n):
    x = n.inputs[0]
    mask = cast(apply("eq", x, _expand_back(n, x, n.attrs["axes"])), x.dtype)
    count = apply("sum", mask, axes=n.attrs["axes"], keepdims=True)
    return div(mask, broadcast_to(count, x.shape))


def _sum_ref(xs, attrs):
    x = xs[0]
    return np.sum(x, axis=tuple(attrs["axes"]), keepdims=attrs["keepdims"], dtype=x.dtype)


def _max_ref(xs, attrs):
    x = xs[0]
    if x.size == 0:
        out_shape = _reduced_shape(
            TensorType(x.shape, x.dtype.name), attrs["axes"], attrs["keepdims"]
        )
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        return np.full(out_shape, fill, x.dtype)
    return np.max(x, axis=tuple(attrs["axes"]), keepdims=attrs["keepdims"])


def _lowest(dtype: str) -> float | int:
    """The identity of max: -inf, or the smallest integer of `dtype`."""
    return float("-inf") if dtype in FLOATS else int(np.iinfo(dtype).min)


register(
    OpDef(
        "sum",
        Kind.REDUCE,
        _infer_reduce(NUMERIC),
        _sum_ref,
        arity=1,
        vjp=lambda n, g: [_expand_back(g, n.inputs[0], n.attrs["axes"])],
        linear=True,
        reduction=Reduction(
            identity=lambda dtype: 0, combine=lambda e, acc, v: e.accumulate(acc, v)
        ),
    )
)
register(
    OpDef(
        "max",
        Kind.REDUCE,
        _infer_reduce(NUMERIC),
        _max_ref,
        arity=1,
        vjp=lambda n, g: [mul(_expand_back(g, n.inputs[0], n.attrs["axes"]), _max_mask(n))],
        jvp=lambda n, t: apply(
            "sum", mul(t[0], _max_mask(n)), axes=n.attrs["axes"], keepdims=n.attrs["keepdims"]
        ),
        reduction=Reduction(identity=_lowest, combine=lambda e, acc, v: e.maximum(acc, v)),
    )
)


def _infer_argmax(types, attrs):
    (x,) = types
    axis = _integers(attrs, "axis", rank=0)
    if x.dtype == "bool":
        raise DTypeError(f"does not accept {x}")
    shape = _reduced_shape(x, (axis,), _flag(attrs, "keepdims"))
    if x.shape[axis] == 0:  # as NumPy: no maximum to point at
        raise ShapeError(f"argmax over axis {axis} of {x}, which has no elements")
    return TensorType(shape, "int64")


register(
    OpDef(
        "argmax",
        Kind.REDUCE,
        _infer_argmax,
        lambda xs, attrs: np.argmax(xs[0], axis=attrs["axis"], keepdims=attrs["keepdims"]),
        arity=1,
        differentiable=False,
        reduction=Reduction(identity=_lowest, better=lambda e, v, acc: e.first_greater(v, acc)),
        fuses_inputs=False,
    )
)


# ---- contraction ----------------------------------------------------------------------------


def _infer_matmul(types, attrs):
    a, b = types
    _same_dtypes(types)
    if a.dtype not in NUMERIC:
        raise DTypeError(f"does not accept {a}")
    if a.ndim < 2 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"shapes {a} and {b} are not aligned for matmul")
    return a.with_shape(a.shape[:-1] + b.shape[-1:])


register(
    OpDef(
        "matmul",
        Kind.CONTRACTION,
        _infer_matmul,
        lambda xs, attrs: np.matmul(xs[0], xs[1]),
        arity=2,
        vjp=lambda n, g: [
            apply("matmul", g, _swap_last(n.inputs[1])),
            apply("matmul", _swap_last(n.inputs[0]), g),
        ],
        jvp=lambda n, t: add_all(
            [
                apply("matmul", t[0], n.inputs[1]) if t[0] is not None else None,
                apply("matmul", n.inputs[0], t[1]) if t[1] is not None else None,
            ]
        ),
        fuses_inputs=False,
    )
)


# ---- windows and convolution ----------------------------------------------------------------
# Channels-first layouts (N, C, *spatial). A window view reads the kernel's taps in place; a
# convolution is lowered (its `lower` trait, applied by simplify) to a batched matmul over the
# window view of its input, so codegen's matmul reads the taps straight from the input: no
# im2col buffer. Its input gradient is a convolution too, its weight gradient a matmul over
# the same window view; only their padding differs.


def _window_params(x, attrs, key="kernel"):
    kernel = _integers(attrs, key)
    rank = len(kernel)
    stride = _integers(attrs, "stride")
    dilation = _integers(attrs, "dilation")
    if not 0 < rank <= x.ndim or len(stride) != rank or len(dilation) != rank:
        raise ShapeError(
            f"{key} {kernel}, stride {stride}, dilation {dilation} must give one size per "
            f"spatial axis of {x}"
        )
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ShapeError(
            f"{key} {kernel}, stride {stride} and dilation {dilation} must be positive"
        )
    spatial = x.shape[x.ndim - rank :]
    out = []
    for size, k, s, d in zip(spatial, kernel, stride, dilation):
        reach = (k - 1) * d + 1
        if reach > size:
            raise ShapeError(
                f"{key} {kernel} (dilation {dilation}) reaches {reach} elements, more than "
                f"the {size} of {x}'s spatial axes {spatial}"
            )
        out.append((size - reach) // s + 1)
    return kernel, stride, dilation, tuple(out)


def _infer_window(types, attrs):
    (x,) = types
    kernel, _, _, out = _window_params(x, attrs)
    return x.with_shape(x.shape[: x.ndim - len(kernel)] + out + kernel)


def _window_ref(xs, attrs):
    x = xs[0]
    kernel, stride, dilation = attrs["kernel"], attrs["stride"], attrs["dilation"]
    rank = len(kernel)
    lead = x.ndim - rank
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    windows = np.lib.stride_tricks.sliding_window_view(x, reach, axis=tuple(range(lead, x.ndim)))
    index = (
        (slice(None),) * lead
        + tuple(slice(None, None, s) for s in stride)
        + tuple(slice(None, None, d) for d in dilation)
    )
    return np.ascontiguousarray(windows[index])


def _map_window(k, node, index):
    x, b = node.inputs[0], k.b
    rank = len(node.attrs["kernel"])
    lead = x.ndim - rank
    out = index.values[lead : lead + rank]
    taps = index.values[lead + rank :]
    values = list(index.values[:lead]) + [
        b.add(b.mul(o, k.i64(s)), b.mul(t, k.i64(d)))
        for o, t, s, d in zip(out, taps, node.attrs["stride"], node.attrs["dilation"])
    ]
    return k.value(x, k.index(x.shape, values=values))


def _window_text(node, source: str) -> str:
    """`%x[i0, i1, 2*i2 + i4, ...]`: which input element each output index reads."""
    rank = len(node.attrs["kernel"])
    lead = node.ndim - 2 * rank
    terms = [f"i{a}" for a in range(lead)]
    for axis, (s, d) in enumerate(zip(node.attrs["stride"], node.attrs["dilation"])):
        out, tap = f"i{lead + axis}", f"i{lead + rank + axis}"
        terms.append(f"{out if s == 1 else f'{s}*{out}'} + {tap if d == 1 else f'{d}*{tap}'}")
    return f"{source}[{', '.join(terms)}]"


def _view_window(node, offset, strides):
    rank = len(node.attrs["kernel"])
    lead, spatial = strides[: len(strides) - rank], strides[len(strides) - rank :]
    if not all(isinstance(s, int) for s in spatial):
        return None
    outer = tuple(st * s for st, s in zip(spatial, node.attrs["stride"]))
    taps = tuple(st * d for st, d in zip(spatial, node.attrs["dilation"]))
    return offset, (*lead, *outer, *taps)


def _window_vjp(n, g):
    """The input gradient: every tap's slice of g padded back to where it was read from
    (strided by the window's stride), summed; where the windows tile the input (stride =
    kernel, no dilation) it is g's taps put back in place, a transpose and a reshape."""
    x = n.inputs[0]
    kernel, stride, dilation = n.attrs["kernel"], n.attrs["stride"], n.attrs["dilation"]
    rank = len(kernel)
    lead = x.ndim - rank
    out = n.shape[lead : lead + rank]
    if tuple(stride) == tuple(kernel) and set(dilation) == {1}:
        interleaved = [a for i in range(rank) for a in (lead + i, lead + rank + i)]
        tiles = apply("transpose", g, perm=(*range(lead), *interleaved))
        covered = reshape(tiles, (*x.shape[:lead], *(o * k for o, k in zip(out, kernel))))
        rest = tuple(size - o * k for size, o, k in zip(x.shape[lead:], out, kernel))
        if not any(rest):
            return [covered]
        widths = ((0, 0, 0),) * lead + tuple((0, r, 0) for r in rest)
        return [apply("pad", covered, widths=widths, value=0.0)]
    terms = []
    for tap in np.ndindex(*kernel):
        starts = (0,) * (lead + rank) + tap
        stops = n.shape[: lead + rank] + tuple(t + 1 for t in tap)
        piece = apply("slice", g, starts=starts, stops=stops, steps=(1,) * n.ndim)
        piece = reshape(piece, n.shape[: lead + rank])
        widths = ((0, 0, 0),) * lead + tuple(
            (t * d, size - t * d - (o - 1) * s - 1, s - 1)
            for t, d, s, o, size in zip(tap, dilation, stride, out, x.shape[lead:])
        )
        terms.append(apply("pad", piece, widths=widths, value=0.0))
    return [add_all(terms)]


register(
    OpDef(
        "window",
        Kind.INJECTIVE,
        _infer_window,
        _window_ref,
        arity=1,
        vjp=_window_vjp,
        linear=True,
        cost=0,
        index_map=_map_window,
        view=_view_window,
        index_text=_window_text,
    )
)


def _infer_reverse(types, attrs):
    (x,) = types
    _reduced_shape(x, _integers(attrs, "axes"), True)  # the axes' check
    return x


def _map_reverse(k, node, index):
    axes, b = node.attrs["axes"], k.b
    values = [
        b.sub(k.i64(d - 1), v) if a in axes else v
        for a, (v, d) in enumerate(zip(index.values, node.shape))
    ]
    return k.value(node.inputs[0], k.index(node.shape, values=values))


def _view_reverse(node, offset, strides):
    axes = node.attrs["axes"]
    if not all(isinstance(strides[a], int) for a in axes):
        return None
    offset += sum((node.shape[a] - 1) * strides[a] for a in axes)
    return offset, tuple(-s if a in axes else s for a, s in enumerate(strides))


register(
    OpDef(
        "reverse",
        Kind.INJECTIVE,
        _infer_reverse,
        lambda xs, attrs: np.flip(xs[0], axis=tuple(attrs["axes"])).copy(),
        arity=1,
        vjp=lambda n, g: [apply("reverse", g, axes=n.attrs["axes"])],
        linear=True,
        cost=0,
        index_map=_map_reverse,
        view=_view_reverse,
    )
)


def _infer_conv(types, attrs):
    x, w = types
    _same_dtypes(types)
    if x.dtype not in FLOATS:
        raise DTypeError(f"does not accept {x}; convolution takes float32 or float64")
    groups = _integers(attrs, "groups", rank=0)
    rank = w.ndim - 2
    if rank < 1 or x.ndim != rank + 2:
        raise ShapeError(
            f"input {x} and weight {w}: expected input (N, C, *spatial) and weight "
            f"(out_channels, in_channels // groups, *kernel) of the same rank"
        )
    channels = x.shape[1]
    if groups < 1 or channels % groups or w.shape[0] % groups or w.shape[1] * groups != channels:
        raise ShapeError(
            f"input {x} has {channels} channels; weight {w} with groups={groups} expects "
            f"{w.shape[1] * groups} (in_channels // groups = {w.shape[1]}, and out_channels "
            f"{w.shape[0]} divisible by groups)"
        )
    _, _, _, out = _window_params(x, {**attrs, "kernel": w.shape[2:]})
    return x.with_shape((x.shape[0], w.shape[0], *out))


def _conv_ref(xs, attrs):
    x, w = xs
    groups = attrs["groups"]
    rank = w.ndim - 2
    cols = _window_ref([x], {**attrs, "kernel": w.shape[2:]})  # (N, C, *out, *kernel)
    n, out = x.shape[0], cols.shape[2 : 2 + rank]
    cols = cols.reshape(n, groups, x.shape[1] // groups, *out, *w.shape[2:])
    wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    spatial = list(range(3 + rank, 3 + 2 * rank))  # the kernel axes of cols
    result = np.einsum(
        cols, [0, 1, 2, *range(3, 3 + rank), *spatial],
        wg, [1, 50, 2, *spatial],
        [0, 1, 50, *range(3, 3 + rank)],
        optimize=True,
    )  # fmt: skip
    return result.reshape(n, w.shape[0], *out).astype(x.dtype)


def _conv_matrices(x: Node, w: Node, attrs) -> tuple[Node, Node]:
    """(A, B) of conv as a batched matmul per (sample, group): A = the weights (G, COg, K)
    broadcast over the samples, B = the window view (N, G, K, out) with K = (Cg, *kernel)."""
    groups, kernel = attrs["groups"], w.shape[2:]
    rank = len(kernel)
    n, channels = x.shape[:2]
    windows = apply("window", x, kernel=kernel, stride=attrs["stride"], dilation=attrs["dilation"])
    out = windows.shape[2 : 2 + rank]
    cg = channels // groups
    grouped = reshape(windows, (n, groups, cg, *out, *kernel))
    taps = tuple(range(3 + rank, 3 + 2 * rank))
    cols = apply("transpose", grouped, perm=(0, 1, 2, *taps, *range(3, 3 + rank)))
    b = reshape(cols, (n, groups, cg * prod(kernel), prod(out)))
    a = reshape(w, (groups, w.shape[0] // groups, cg * prod(kernel)))
    return broadcast_to(a, (n, *a.shape)), b


def _lower_conv(node: Node) -> Node:
    x, w = node.inputs
    a, b = _conv_matrices(x, w, node.attrs)
    return reshape(apply("matmul", a, b), node.shape)


def _conv_input_grad(n, g):
    """dx = g dilated by the stride, padded by the kernel's reach, convolved with the
    weights flipped and their channel axes swapped (per group)."""
    x, w = n.inputs
    stride, dilation, groups = n.attrs["stride"], n.attrs["dilation"], n.attrs["groups"]
    kernel = w.shape[2:]
    rank = len(kernel)
    widths = ((0, 0, 0),) * 2 + tuple(
        ((k - 1) * d, size - (o - 1) * s - 1, s - 1)
        for k, d, s, o, size in zip(kernel, dilation, stride, n.shape[2:], x.shape[2:])
    )
    spread = apply("pad", g, widths=widths, value=0.0)
    co, cg = w.shape[:2]
    flipped = apply("reverse", w, axes=tuple(range(2, 2 + rank)))
    swapped = apply(
        "transpose",
        reshape(flipped, (groups, co // groups, cg, *kernel)),
        perm=(0, 2, 1, *range(3, 3 + rank)),
    )
    w_t = reshape(swapped, (groups * cg, co // groups, *kernel))
    return apply("conv", spread, w_t, stride=(1,) * rank, dilation=dilation, groups=groups)


# A weight gradient of at most this many elements sums its samples in WEIGHT_GRAD_PARTS
# parts: one product per part (the parts run on threads like a batch), then their sum. The
# parts do not depend on the thread count, so every thread count gives the same bits.
# LeNet's conv1 and conv2 (150 and 2,400 weights, 64 samples: products of 50,176 and 6,400
# terms) were the two largest kernels left on one thread.
WEIGHT_GRAD_PARTS = 4
WEIGHT_GRAD_SPLIT_SIZE = 16384


def _conv_weight_grad(n, g):
    """dw[g] = sum over samples and output positions of g times the window view of x: a
    matmul (G, COg, N*out) @ (G, N*out, Cg*kernel) over views, no buffer in between; a small
    dw is summed in parts of the samples (WEIGHT_GRAD_PARTS)."""
    x, w = n.inputs
    groups = n.attrs["groups"]
    _, b = _conv_matrices(x, w, n.attrs)  # (N, G, K, out)
    size_n, size_k, size_out = b.shape[0], b.shape[2], b.shape[3]
    cog = w.shape[0] // groups
    parts = WEIGHT_GRAD_PARTS
    if size_n % parts or size_n < 2 * parts or w.type.size > WEIGHT_GRAD_SPLIT_SIZE:
        parts = 1
    rows = size_n // parts * size_out  # the terms of one part
    gg = reshape(g, (parts, size_n // parts, groups, cog, size_out))
    a = reshape(apply("transpose", gg, perm=(0, 2, 3, 1, 4)), (parts, groups, cog, rows))
    bb = reshape(b, (parts, size_n // parts, groups, size_k, size_out))
    b_t = reshape(apply("transpose", bb, perm=(0, 2, 1, 4, 3)), (parts, groups, rows, size_k))
    product = apply("matmul", a, b_t)  # (parts, G, COg, K)
    if parts > 1:
        product = apply("sum", product, axes=(0,), keepdims=False)
    return reshape(product, w.shape)


register(
    OpDef(
        "conv",
        Kind.CONTRACTION,
        _infer_conv,
        _conv_ref,
        arity=2,
        vjp=lambda n, g: [_conv_input_grad(n, g), _conv_weight_grad(n, g)],
        jvp=lambda n, t: add_all(
            [
                apply("conv", t[0], n.inputs[1], **n.attrs) if t[0] is not None else None,
                apply("conv", n.inputs[0], t[1], **n.attrs) if t[1] is not None else None,
            ]
        ),
        fuses_inputs=False,
        lower=_lower_conv,
    )
)


# ---- collectives ----------------------------------------------------------------------------

# Communicators of the collectives built in this process, by handle (the `comm` attribute is
# the MPI handle, an int that prints, hashes and compiles into the code; the interpreter
# needs the mpi4py object itself). graphc.distributed fills it.
COMMUNICATORS: dict[int, object] = {}


def _infer_allreduce(types, attrs):
    (x,) = types
    _integer(attrs["comm"], "comm")
    if x.dtype not in FLOATS:
        raise DTypeError(f"does not accept {x}; allreduce sums float32 or float64")
    return x


def _allreduce_ref(xs, attrs):
    comm = COMMUNICATORS.get(attrs["comm"])
    if comm is None:
        raise GraphcError(f"allreduce: no communicator with handle {attrs['comm']} here")
    out = np.empty_like(xs[0])
    comm.Allreduce(np.ascontiguousarray(xs[0]), out)  # MPI_SUM
    return out


register(
    OpDef(
        "allreduce",
        Kind.OPAQUE,
        _infer_allreduce,
        _allreduce_ref,
        arity=1,
        # the sum over ranks is linear, and its own adjoint: every rank's adjoint of its input
        # is the sum of all ranks' output adjoints
        vjp=lambda n, g: [apply("allreduce", g, comm=n.attrs["comm"])],
        linear=True,
        fuses_inputs=False,
        alone=True,
    )
)


# ---- gather and scatter ---------------------------------------------------------------------


def _infer_take(types, attrs):
    a, indices = types[:2]
    if indices.dtype not in INTS:
        raise DTypeError(f"indices must be int32 or int64, got {indices}")
    axis = _integers(attrs, "axis", rank=0)
    if not 0 <= axis < a.ndim:
        raise ShapeError(f"axis {axis} out of range for {a}")
    if a.shape[axis] == 0 and indices.size:
        raise ShapeError(f"cannot take indices {indices} from the empty axis {axis} of {a}")
    return a.with_shape(a.shape[:axis] + indices.shape + a.shape[axis + 1 :])


def in_range(indices: np.ndarray, size: int, op: str, axis: int) -> np.ndarray:
    """`indices` with negative ones counted from the end; one outside [-size, size) is an
    InputError naming it."""
    bad = (indices < -size) | (indices >= size)
    if bad.any():
        raise InputError(
            f"{op}: index {int(indices[bad].flat[0])} is out of range for axis {axis} of "
            f"size {size} ({int(bad.sum())} of {indices.size} indices are)"
        )
    return np.where(indices < 0, indices + size, indices)


def checked_index(k, position, size: int):
    """An index value read in a kernel (negative: from the end) as an i64 in [0, size): one
    out of range fails the kernel's check (`k.check`) and reads or writes element 0."""
    b, position = k.b, k.e.cast(position, "int64")
    negative = b.icmp_signed("<", position, k.i64(0))
    wrapped = b.select(negative, b.add(position, k.i64(size)), position)
    ok = b.icmp_unsigned("<", wrapped, k.i64(size))
    k.check(ok)
    return b.select(ok, wrapped, k.i64(0))


def _map_take(k, node, index):
    """a[..., indices[i...], ...]: the index is read at the output's index, then the table."""
    a, indices = node.inputs
    axis, rank = node.attrs["axis"], indices.ndim
    where = k.value(indices, k.index(indices.shape, values=index.values[axis : axis + rank]))
    values = [*index.values[:axis], checked_index(k, where, a.shape[axis])]
    values += index.values[axis + rank :]
    return k.value(a, k.index(a.shape, values=values))


def _take_ref(xs, attrs):
    a, indices = xs
    axis = attrs["axis"]
    return np.take(a, in_range(indices, a.shape[axis], "take", axis), axis=axis)


register(
    OpDef(
        "take",
        Kind.INJECTIVE,
        _infer_take,
        _take_ref,
        arity=2,
        # the adjoint of a gather is a scatter-add of the gradient into zeros
        vjp=lambda n, g: [
            apply("scatter_add", full(0, n.inputs[0]), n.inputs[1], g, axis=n.attrs["axis"]),
            None,
        ],
        jvp=lambda n, t: (
            None if t[0] is None else apply("take", t[0], n.inputs[1], axis=n.attrs["axis"])
        ),
        cost=2,
        index_map=_map_take,
        checked=True,
    )
)


def _infer_scatter_add(types, attrs):
    a, indices, updates = types
    expected = _infer_take([a, indices], attrs)
    if updates.shape != expected.shape:
        raise ShapeError(
            f"updates {updates} must have the shape {expected.shape} of take(a, indices, "
            f"axis={attrs['axis']}) for a {a} and indices {indices}"
        )
    _same_dtypes([a, updates])
    if a.dtype not in NUMERIC:
        raise DTypeError(f"does not accept {a}")
    return a


def _scatter_add_ref(xs, attrs):
    a, indices, updates = xs
    axis = attrs["axis"]
    out = a.copy()
    where = in_range(indices, a.shape[axis], "scatter_add", axis)
    np.add.at(out, (slice(None),) * axis + (where,), updates)  # in order, repeats accumulate
    return out


def _scatter_add_jvp(n, t):
    a, indices, updates = n.inputs
    t_a = t[0] if t[0] is not None else full(0, a)
    t_updates = t[2] if t[2] is not None else full(0, updates)
    return apply("scatter_add", t_a, indices, t_updates, axis=n.attrs["axis"])


register(
    OpDef(
        "scatter_add",
        Kind.OPAQUE,
        _infer_scatter_add,
        _scatter_add_ref,
        arity=3,
        vjp=lambda n, g: [g, None, apply("take", g, n.inputs[1], axis=n.attrs["axis"])],
        jvp=_scatter_add_jvp,
        fuses_inputs=False,
        alone=True,  # a loop of its own: a copy of a, then one add per update, in order
        kernel_form="scatter",
        checked=True,
    )
)


# ---- random numbers ---------------------------------------------------------------------------

# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
# SC 2011; Random123's threefry2x32_20): a keyed bijection of a 64-bit counter, so each
# element of a draw is computed from (key, its index) alone and a draw vectorizes. Words are
# 32-bit; an int64 holds two, the low one first.
THREEFRY_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
THREEFRY_PARITY = 0x1BD11BDA
RANDOM_DTYPES = ("int64", "float32", "float64")


def threefry2x32(key: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Threefry-2x32-20 of int64 `key` and `counter` arrays: the 64 output bits as uint64
    (word 1 high). The reference codegen's Emitter.random_bits must match bit for bit."""
    key = np.atleast_1d(np.asarray(key, np.int64)).view(np.uint64)
    counter = np.atleast_1d(np.asarray(counter, np.int64)).view(np.uint64)
    low, high = np.uint64(0xFFFFFFFF), np.uint64(32)
    k = [(key & low).astype(np.uint32), (key >> high).astype(np.uint32)]
    k.append(k[0] ^ k[1] ^ np.uint32(THREEFRY_PARITY))
    x0 = (counter & low).astype(np.uint32) + k[0]
    x1 = (counter >> high).astype(np.uint32) + k[1]
    for r in range(20):
        x0 = x0 + x1
        rotation = THREEFRY_ROTATIONS[r % 8]
        x1 = (x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation))
        x1 = x1 ^ x0
        if r % 4 == 3:
            i = (r + 1) // 4
            x0 = x0 + k[i % 3]
            x1 = x1 + k[(i + 1) % 3] + np.uint32(i)
    return (x1.astype(np.uint64) << high) | x0.astype(np.uint64)


def random_values(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Threefry output bits as `dtype`: int64, the bits; float32, the top 24 bits of word 0
    over 2**24; float64, the top 52 bits over 2**52 (uniform in [0, 1), exactly)."""
    if dtype == "int64":
        return bits.view(np.int64)
    if dtype == "float32":
        top = ((bits & np.uint64(0xFFFFFFFF)) >> np.uint64(8)).astype(np.float32)
        return top * np.float32(2.0**-24)
    return (bits >> np.uint64(12)).astype(np.float64) * 2.0**-52


def _infer_threefry(types, attrs):
    _same_shapes(types)
    if any(t.dtype != "int64" for t in types):
        raise DTypeError(f"key and counter must be int64, got {', '.join(map(str, types))}")
    if attrs["dtype"] not in RANDOM_DTYPES:
        raise DTypeError(f"dtype must be one of {', '.join(RANDOM_DTYPES)}, got {attrs['dtype']!r}")
    return types[0].with_dtype(attrs["dtype"])


def _threefry_ref(xs, attrs):
    bits = threefry2x32(*np.broadcast_arrays(*xs)).reshape(np.shape(xs[0]))
    return random_values(bits, attrs["dtype"])


register(
    OpDef(
        "threefry",
        Kind.ELEMWISE,
        _infer_threefry,
        _threefry_ref,
        arity=2,
        differentiable=False,
        scalar=lambda e, key, counter, dtype: e.random_bits(key, counter, dtype),
        cost=100,  # 20 rounds of add, rotate (3 ops on AVX2), xor; 5 key injections
    )
)


# ---- sources --------------------------------------------------------------------------------

SOURCES = ("input", "param", "const", "iota")  # the ops without inputs


def _infer_source(types, attrs):
    shape = _integers(attrs, "shape")
    if any(d < 0 for d in shape):
        raise ShapeError(f"negative dimension in shape {shape}")
    return TensorType(shape, attrs["dtype"])


def _no_ref(xs, attrs):
    raise GraphcError("sources are fed by the interpreter, not computed")


for _name in ("input", "param"):
    register(
        OpDef(
            _name, Kind.OPAQUE, _infer_source, _no_ref, arity=0, differentiable=False, memory=True
        )
    )
register(
    OpDef(
        "const",
        Kind.ELEMWISE,
        lambda types, attrs: TensorType(attrs["value"].shape, attrs["value"].dtype.name),
        lambda xs, attrs: attrs["value"],
        arity=0,
        differentiable=False,
        cost=0,
        memory=True,
    )
)


def _iota_ref(xs, attrs):
    shape, axis = tuple(attrs["shape"]), attrs["axis"]
    line = np.arange(shape[axis], dtype=attrs["dtype"])
    return np.broadcast_to(
        line.reshape([-1 if i == axis else 1 for i in range(len(shape))]), shape
    ).copy()


def _infer_iota(types, attrs):
    if not 0 <= _integers(attrs, "axis", rank=0) < len(_integers(attrs, "shape")):
        raise ShapeError(f"axis {attrs['axis']} out of range for shape {tuple(attrs['shape'])}")
    return _infer_source(types, attrs)


def _map_iota(k, node, index):
    position = index.values[node.attrs["axis"]]
    return position if node.dtype == "int64" else k.e.cast(position, node.dtype)


register(
    OpDef(
        "iota",
        Kind.INJECTIVE,
        _infer_iota,
        _iota_ref,
        arity=0,
        differentiable=False,
        cost=0,
        index_map=_map_iota,
    )
)
