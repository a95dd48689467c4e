# Over 500 lines on purpose: the Tensor class with every operator and method NumPy users
# expect, and beside it the helpers that apply one primitive NumPy's way (promotion,
# broadcasting, reductions, indexing), which the operators call.
"""The symbolic Tensor: NumPy-like operators that build IR nodes.

A Tensor wraps one IR node. Operators follow NumPy: broadcasting becomes explicit
`broadcast_to` nodes, and dtypes promote by NumPy 2's rules (NEP 50: Python scalars are
weak and take the tensor's dtype; float32 with float64 gives float64). Every node
records the user's `file:line`, so errors and dumps point at the user's code.

This is the frontend's lowest layer: the Tensor with its operators and the methods that
apply one primitive, the sources (`input`, `param`, `const`) and the helpers that apply a
primitive NumPy's way (`binary`, `reduce`, `getitem`, `matmul` ...). It imports nothing
from the rest of the frontend; functions.py and composites.py build on it, and Tensor
methods that are composites (`mean`) are bound by composites.py.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.ir.graph import Node, Storage, user_location
from graphc.ir.ops import apply
from graphc.ir.types import DTYPES, FLOATS, canonical_dtype, check_shape


def _numpy_keywords(method: str, x: Tensor, dtype, out) -> Tensor:
    """What NumPy's functions pass to a method (np.sum(t) calls t.sum(dtype=, out=)): `x`
    cast to `dtype`, or an error for `out`, which a symbolic tensor cannot fill."""
    if out is not None:
        raise GraphcError(f"{method}: out= is not supported (a Tensor is symbolic: use the result)")
    return x if dtype is None else x.astype(dtype)


class Tensor:
    """A symbolic, statically shaped value in a graphc graph."""

    __hash__ = object.__hash__

    def __init__(self, node: Node):
        self.node = node

    # ---- description ----
    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)
    ndim = property(lambda self: len(self.node.shape))
    size = property(lambda self: self.node.type.size)
    name = property(lambda self: self.node.name)
    type = property(lambda self: self.node.type)

    def __repr__(self) -> str:
        label = self.node.name or self.node.op
        return f"Tensor({label}: {self.node.type}, {self.node.loc})"

    def __bool__(self):
        raise GraphcError(
            f"a symbolic Tensor ({self!r}) has no truth value; use gc.where for conditions"
        )

    def __len__(self):
        if not self.shape:
            raise ShapeError("len() of a scalar Tensor")
        return self.shape[0]

    @property
    def value(self) -> np.ndarray:
        """The ndarray behind a param (its live storage) or const."""
        if self.node.op == "param":
            return self.node.attrs["storage"].value
        if self.node.op == "const":
            return self.node.attrs["value"]
        raise GraphcError(f"{self!r} is computed; it has no stored value")

    @value.setter
    def value(self, array):
        if self.node.op != "param":
            raise GraphcError(f"only params can be assigned, not {self!r}")
        storage = self.node.attrs["storage"].value
        array = np.asarray(array)
        if array.shape != storage.shape:
            raise ShapeError(f"param {self.name}: cannot assign shape {array.shape} to {self.type}")
        if not np.can_cast(array.dtype, storage.dtype, "same_kind"):
            raise DTypeError(f"param {self.name}: cannot assign {array.dtype} to {self.type}")
        storage[...] = array

    # ---- arithmetic ----
    def __add__(self, other):
        return binary("add", self, other)

    def __radd__(self, other):
        return binary("add", other, self)

    def __sub__(self, other):
        return binary("sub", self, other)

    def __rsub__(self, other):
        return binary("sub", other, self)

    def __mul__(self, other):
        return binary("mul", self, other)

    def __rmul__(self, other):
        return binary("mul", other, self)

    def __truediv__(self, other):
        return binary("div", self, other)

    def __rtruediv__(self, other):
        return binary("div", other, self)

    def __pow__(self, other):
        return power(self, other)

    def __rpow__(self, other):
        return power(other, self)

    def __mod__(self, other):
        return binary("remainder", self, other)

    def __rmod__(self, other):
        return binary("remainder", other, self)

    def __floordiv__(self, other):
        return binary("floor_divide", self, other)

    def __rfloordiv__(self, other):
        return binary("floor_divide", other, self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __neg__(self):
        return unary("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return unary("abs", self)

    def __invert__(self):
        if self.dtype != "bool":
            raise DTypeError(f"~ needs a bool Tensor, got {self.type}")
        return unary("logical_not", self)

    def __and__(self, other):
        return binary("logical_and", self, other)

    def __or__(self, other):
        return binary("logical_or", self, other)

    __rand__ = lambda self, other: binary("logical_and", other, self)
    __ror__ = lambda self, other: binary("logical_or", other, self)

    def __lt__(self, other):
        return binary("lt", self, other)

    def __le__(self, other):
        return binary("le", self, other)

    def __gt__(self, other):
        return binary("gt", self, other)

    def __ge__(self, other):
        return binary("ge", self, other)

    def __eq__(self, other):
        return binary("eq", self, other)

    def __ne__(self, other):
        return binary("ne", self, other)

    # ---- methods ----
    def sum(self, axis=None, keepdims=False, *, dtype=None, out=None) -> Tensor:
        """The sum over `axis` (all axes by default); `dtype` as NumPy's (np.sum(t) works)."""
        source = _numpy_keywords("sum", self, dtype, out)
        return reduce("sum", source, axis, keepdims)

    def max(self, axis=None, keepdims=False, *, out=None) -> Tensor:
        """The maximum over `axis` (all axes by default)."""
        return reduce("max", _numpy_keywords("max", self, None, out), axis, keepdims)

    # composites, bound by composites.py
    mean: Callable[..., Tensor]
    min: Callable[..., Tensor]
    var: Callable[..., Tensor]
    std: Callable[..., Tensor]

    def argmax(self, axis=-1, keepdims=False) -> Tensor:
        (axis,) = normalize_axes(axis, self.ndim, "argmax")
        return Tensor(apply("argmax", self.node, axis=axis, keepdims=keepdims))

    def reshape(self, *shape) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if shape.count(-1) == 1:
            known = int(np.prod([d for d in shape if d != -1]))
            shape = tuple(self.size // known if d == -1 and known else d for d in shape)
        try:
            shape = check_shape(shape)
        except ShapeError as error:
            raise ShapeError(f"reshape of {self.type}: {error} (at {user_location()})") from None
        if shape == self.shape:
            return self
        return Tensor(apply("reshape", self.node, shape=shape))

    def transpose(self, *axes) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        perm = tuple(a % self.ndim for a in axes) if axes else tuple(reversed(range(self.ndim)))
        if perm == tuple(range(self.ndim)):
            return self
        return Tensor(apply("transpose", self.node, perm=perm))

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def astype(self, dtype) -> Tensor:
        dtype = canonical_dtype(dtype)
        return self if dtype == self.dtype else Tensor(apply("cast", self.node, dtype=dtype))

    def __getitem__(self, index) -> Tensor:
        return getitem(self, index)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        """NumPy ufuncs build graph nodes: `np.exp(t)` is `gc.exp(t)` and `array + t` is
        `t.__radd__(array)`; a ufunc graphc lacks, `out=` and the like, and ufunc methods
        (`np.add.reduce`) are a GraphcError saying what to use instead."""
        name = ufunc.__name__
        function = UFUNCS.get(name)
        if method != "__call__":
            raise GraphcError(
                f"np.{name}.{method} does not work on a symbolic Tensor; use Tensor methods "
                f"(t.sum(axis), t.max(axis)) or gc functions (at {user_location()})"
            )
        if kwargs:
            raise GraphcError(
                f"np.{name}(..., {', '.join(kwargs)}=...): graphc Tensors are immutable "
                f"values; call gc.{getattr(function, '__name__', name)}(...) without them "
                f"(at {user_location()})"
            )
        if function is None:
            raise GraphcError(
                f"np.{name} has no graphc equivalent for a symbolic Tensor; build it from gc "
                f"functions (gc.exp, gc.log, gc.where, ...) and Tensor operators "
                f"(at {user_location()})"
            )
        return function(*args)


# ---- sources --------------------------------------------------------------------------------


def input(name: str, shape, dtype="float32") -> Tensor:  # noqa: A001 (the public name)
    """A placeholder fed at each call: `gc.input("x", (32, 5))`.

    `shape` is a tuple (or list) of non-negative ints; a lone int `n` means `(n,)`, as in
    `np.zeros(n)`. Anything else (a string, a float dimension) is a ShapeError.
    """
    if not isinstance(name, str) or not name:
        raise GraphcError("gc.input needs a non-empty name")
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise ShapeError(
            f"input {name!r}: the shape must be a tuple of ints such as (32, 5), got {shape!r} "
            f"(at {user_location()})"
        )
    try:
        shape = check_shape(shape)
    except ShapeError as error:
        raise ShapeError(f"input {name!r}: {error} (at {user_location()})") from None
    return Tensor(apply("input", name=name, shape=shape, dtype=canonical_dtype(dtype)))


def param(name: str, value, dtype=None) -> Tensor:
    """Trainable state with an initial value; its `.value` is the live ndarray."""
    try:
        array = np.array(
            value, dtype=canonical_dtype(dtype) if dtype else None, order="C", copy=True
        )
    except (TypeError, ValueError) as error:  # a ragged list, strings for a float dtype
        raise InputError(f"param {name!r}: {error} (at {user_location()})") from None
    try:
        canonical_dtype(array.dtype)
    except DTypeError as error:
        raise DTypeError(f"param {name!r}: {error} (at {user_location()})") from None
    return Tensor(
        apply("param", name=name, shape=array.shape, dtype=array.dtype.name, storage=Storage(array))
    )


def const(value, dtype=None) -> Tensor:
    """A constant; the dtype follows the array (Python floats become float64)."""
    array = np.array(value, dtype=canonical_dtype(dtype) if dtype else None, copy=True)
    if array.dtype.name not in DTYPES:
        if array.dtype.kind in "iu":
            array = array.astype("int64")
        else:
            canonical_dtype(array.dtype)
    array.setflags(write=False)
    return Tensor(apply("const", value=array))


# ---- promotion and broadcasting ------------------------------------------------------------


def _is_weak(value) -> bool:
    return isinstance(value, (bool, numbers.Number)) and not isinstance(value, np.generic)


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """A Tensor for `value`; a weak Python scalar takes the dtype of `like` when compatible."""
    if isinstance(value, Tensor):
        return value
    if _is_weak(value) and like is not None:
        return const(value, weak_dtype(value, like.dtype))
    if isinstance(value, (np.ndarray, np.generic, list, tuple, numbers.Number)):
        return const(value)
    raise GraphcError(f"cannot use {type(value).__name__} {value!r} as a Tensor")


def weak_dtype(value, dtype: str) -> str:
    """NEP 50: a Python scalar's dtype next to a tensor of `dtype`."""
    if isinstance(value, bool):
        return dtype
    if isinstance(value, numbers.Integral):
        return dtype if dtype != "bool" else "int64"
    if isinstance(value, numbers.Real):
        return dtype if dtype in FLOATS else "float64"
    raise DTypeError(f"complex value {value!r} is not supported")


def promote(*values) -> list[Tensor]:
    """Tensors of one dtype (NumPy 2 promotion) for a mix of Tensors and scalars."""
    strong = [as_tensor(v) for v in values if not _is_weak(v)]
    if strong:
        dtype = np.result_type(*[t.dtype for t in strong]).name
    else:
        dtype = np.result_type(*values).name
    for v in values:
        if _is_weak(v):
            dtype = weak_dtype(v, dtype)
    if dtype not in DTYPES:
        raise DTypeError(f"promotion of {', '.join(map(repr, values))} gives unsupported {dtype}")
    return [(const(v, dtype) if _is_weak(v) else as_tensor(v)).astype(dtype) for v in values]


def broadcast(op: str, *tensors: Tensor) -> list[Tensor]:
    """Make NumPy broadcasting explicit with broadcast_to nodes."""
    try:
        shape = np.broadcast_shapes(*[t.shape for t in tensors])
    except ValueError:
        shapes = " and ".join(str(t.type) for t in tensors)
        raise ShapeError(f"{op}: cannot broadcast {shapes} (at {user_location()})") from None
    return [broadcast_to(t, shape) for t in tensors]


def broadcast_to(x: Tensor, shape) -> Tensor:
    """`x` broadcast to `shape` (itself when it has that shape)."""
    shape = tuple(shape)
    return x if x.shape == shape else Tensor(apply("broadcast_to", x.node, shape=shape))


_FLOAT_ONLY = {"div", "pow"}


def binary(op: str, a, b) -> Tensor:
    """An elementwise binary op with promotion and broadcasting."""
    a, b = promote(a, b)
    if op in _FLOAT_ONLY and a.dtype not in FLOATS:
        a, b = a.astype("float64"), b.astype("float64")
    a, b = broadcast(op, a, b)
    return Tensor(apply(op, a.node, b.node))


def unary(op: str, x) -> Tensor:
    """An elementwise unary op on any Tensor or scalar."""
    x = as_tensor(x)
    return Tensor(apply(op, x.node))


def float_unary(op: str, x) -> Tensor:
    """A transcendental: integers become float64 as in NumPy."""
    x = as_tensor(x)
    if x.dtype not in FLOATS:
        x = x.astype("float64")
    return Tensor(apply(op, x.node))


def power(base, exponent) -> Tensor:
    """`base ** exponent`; small integer powers of integer tensors multiply out."""
    if (
        isinstance(base, Tensor)
        and base.dtype not in FLOATS
        and isinstance(exponent, numbers.Integral)
        and 0 <= exponent <= 16
    ):
        result = as_tensor(1, base) + base * 0 if exponent == 0 else base
        for _ in range(int(exponent) - 1):
            result = result * base
        return result
    return binary("pow", base, exponent)


def matmul(a, b) -> Tensor:
    """NumPy matmul: 1-D operands are promoted and squeezed, batch dims broadcast."""
    a, b = promote(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: scalar operand ({a.type}, {b.type}) (at {user_location()})")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ShapeError(
            f"matmul: inner dimensions of {a.type} and {b.type} differ "
            f"({a2.shape[-1]} != {b2.shape[-2]}) (at {user_location()})"
        )
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ShapeError(
            f"matmul: batch dims of {a.type} and {b.type} do not broadcast (at {user_location()})"
        ) from None
    a2 = broadcast_to(a2, batch + a2.shape[-2:])
    b2 = broadcast_to(b2, batch + b2.shape[-2:])
    result = Tensor(apply("matmul", a2.node, b2.node))
    shape = result.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return result.reshape(shape)


# NumPy ufunc name -> the graphc function `Tensor.__array_ufunc__` calls for it; functions.py
# adds the math functions (np.exp -> gc.exp, np.arctan -> gc.atan ...).
def _binary_op(op: str) -> Callable:
    return lambda a, b: binary(op, a, b)


# indexing by an integer index tensor, `x[i]`: gc.take, registered by functions.py
ARRAY_INDEXING: dict[str, Callable] = {}

UFUNCS: dict[str, Callable] = {
    "power": power,
    "matmul": matmul,
    "negative": lambda x: -as_tensor(x),
    "positive": as_tensor,
    "logical_not": lambda x: ~as_tensor(x),
    "invert": lambda x: ~as_tensor(x),  # `~array` on bools, as Tensor.__invert__
    **{
        name: _binary_op(op)
        for name, op in [
            ("add", "add"),
            ("subtract", "sub"),
            ("multiply", "mul"),
            ("divide", "div"),
            ("less", "lt"),
            ("less_equal", "le"),
            ("greater", "gt"),
            ("greater_equal", "ge"),
            ("equal", "eq"),
            ("not_equal", "ne"),
            ("logical_and", "logical_and"),
            ("logical_or", "logical_or"),
            ("bitwise_and", "logical_and"),  # `array & t`, as Tensor.__and__
            ("bitwise_or", "logical_or"),
        ]
    },
}


def normalize_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """NumPy's `axis` argument (None, an int or a sequence, negatives allowed) of `op` on a
    tensor of rank `ndim`, sorted."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ShapeError(
                f"{op}: axis {a} is out of range for rank {ndim} (at {user_location()})"
            )
    return tuple(sorted(a % max(ndim, 1) for a in axes))


def reduce(op: str, x: Tensor, axis, keepdims) -> Tensor:
    """A sum or max over NumPy's `axis` (bools count as int64)."""
    x = as_tensor(x)
    if x.dtype == "bool":
        x = x.astype("int64")
    axes = normalize_axes(axis, x.ndim, op)
    if not axes and not keepdims:
        return x
    return Tensor(apply(op, x.node, axes=axes, keepdims=bool(keepdims)))


def getitem(x: Tensor, index) -> Tensor:
    """Basic indexing: integers, slices with positive steps, None and Ellipsis."""
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (Tensor, np.ndarray, list)) for i in index):
        return ARRAY_INDEXING["take"](x, index)  # x[indices]: gc.take (functions.py)
    if index.count(Ellipsis) > 1:
        raise ShapeError("an index can only have a single ellipsis")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > x.ndim:
        raise ShapeError(f"too many indices ({used}) for {x.type} (at {user_location()})")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.ndim - used) + index[at + 1 :]
    index = index + (slice(None),) * (x.ndim - sum(1 for i in index if i is not None))
    starts, stops, steps, out_shape = [], [], [], []
    axis = 0
    for item in index:
        if item is None:
            out_shape.append(1)
            continue
        size = x.shape[axis]
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            if step < 1:
                raise GraphcError(f"negative slice steps are not supported (at {user_location()})")
            stop = max(stop, start)
            starts.append(start), stops.append(stop), steps.append(step)
            out_shape.append(len(range(start, stop, step)))
        elif isinstance(item, numbers.Integral):
            if not -size <= item < size:
                raise ShapeError(
                    f"index {item} out of range for axis {axis} of {x.type} (at {user_location()})"
                )
            item = operator.index(item) % size
            starts.append(item), stops.append(item + 1), steps.append(1)
        else:
            raise GraphcError(f"unsupported index {item!r} (at {user_location()})")
        axis += 1
    node = x.node
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * x.ndim, x.shape, (1,) * x.ndim):
        node = apply("slice", node, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    result = Tensor(node)
    return result.reshape(tuple(out_shape)) if tuple(out_shape) != result.shape else result
