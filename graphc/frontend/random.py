"""Random numbers inside the graph (`gc.random`), and the explicit keys and weight
initializers of init.py.

    key = gc.random.key("noise", seed=0)         # state: int64 [seed, step]
    u = gc.random.uniform(key, (32, 64))          # float32 in [0, 1)
    z = gc.random.normal(key, (32, 64), "float64")
    keep = gc.random.bernoulli(key, 0.9, (32, 64))

Counter-based: every element is Threefry-2x32-20 (ir/ops.py `threefry`) of a key for the
draw and the element's flat index, so a draw is elementwise, vectorizes, and the interpreter,
the JIT and AOT C compute the same bits. The draw's key folds in the key's step and the
draw's call site (0, 1, 2 ... for successive draws from one key while a graph is built):

    k_step = threefry(seed, step)        k_draw = threefry(k_step, site)
    bits[i] = threefry(k_draw, i)        (normal: bits at 2i and 2i + 1)

A Program that reads a key updates it to [seed, step + 1] (unless it updates the key
itself), so every call of a compiled step draws new numbers; `gc.evaluate` applies no
updates and draws what the next call will. uniform: float32 from 24 random bits, float64
from 52; normal: Box-Muller on two uniforms; bernoulli: uniform < p.
"""

from __future__ import annotations

import itertools
import math
import numbers
import weakref

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.frontend.functions import ADVANCES, MATH_FUNCTIONS
from graphc.frontend.init import Key, as_key, glorot_uniform, kaiming_uniform, zeros
from graphc.frontend.tensor import Tensor, as_tensor, broadcast_to, param
from graphc.ir.graph import Node, user_location
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS, canonical_dtype, check_shape

__all__ = [
    "Key",
    "as_key",
    "bernoulli",
    "glorot_uniform",
    "kaiming_uniform",
    "key",
    "normal",
    "uniform",
    "zeros",
]

# the next call site of each key (a draw's number among the draws from that key)
_SITES: weakref.WeakKeyDictionary[Node, itertools.count] = weakref.WeakKeyDictionary()


def key(name: str, seed=0) -> Tensor:
    """A random key: the state tensor `name`, int64 [seed, step]; every compiled step that
    draws from it advances its step. `seed` is an int (taken modulo 2**64) or a gc.random.Key."""
    if isinstance(seed, Key):
        seed = int(seed.generator().integers(0, 2**64, dtype=np.uint64))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise GraphcError(
            f"gc.random.key({name!r}, seed): seed must be an int or a gc.random.Key, got "
            f"{seed!r} (at {user_location()})"
        )
    state = np.array([int(seed) % 2**64, 0], np.uint64).view(np.int64)
    tensor = param(name, state)
    ADVANCES[tensor.node] = _advanced
    return tensor


def _advanced(state: Node) -> Node:
    """[seed, step + 1]."""
    step = apply("const", value=_readonly(np.array([0, 1], np.int64)))
    return apply("add", state, step)


def uniform(key, shape, dtype="float32", minval=0.0, maxval=1.0) -> Tensor:
    """Samples of U(minval, maxval) of `shape`, drawn from `key` (in [0, 1) exactly when
    the bounds are the defaults: float32 multiples of 2**-24, float64 of 2**-52)."""
    (u,) = _draws(key, shape, dtype, "uniform")
    if (minval, maxval) == (0.0, 1.0):
        return u
    return u * (as_tensor(maxval, u) - minval) + minval


def normal(key, shape, dtype="float32") -> Tensor:
    """Standard normal samples of `shape`, drawn from `key` (Box-Muller on two uniforms,
    with graphc's vectorized log, sqrt and cos)."""
    u1, u2 = _draws(key, shape, dtype, "normal", streams=2)
    radius = MATH_FUNCTIONS["sqrt"](MATH_FUNCTIONS["log"](1.0 - u1) * -2.0)  # 1 - u1 in (0, 1]
    return radius * MATH_FUNCTIONS["cos"](u2 * (2 * math.pi))


def bernoulli(key, p, shape) -> Tensor:
    """Booleans of `shape`, each True with probability `p` (a number or a float Tensor that
    broadcasts to `shape`), drawn from `key`: uniform < p."""
    dtype = p.dtype if isinstance(p, Tensor) and p.dtype in FLOATS else "float32"
    (u,) = _draws(key, shape, dtype, "bernoulli")
    return u < broadcast_to(as_tensor(p, u).astype(dtype), u.shape)


def _draws(key, shape, dtype, function: str, streams: int = 1) -> list[Tensor]:
    """`streams` uniform draws of `shape` and `dtype` from one call site of `key`."""
    where = f"(at {user_location()})"
    if not isinstance(key, Tensor) or key.dtype != "int64" or key.shape != (2,):
        described = key.node.type if isinstance(key, Tensor) else repr(key)
        raise GraphcError(
            f"gc.random.{function}: key must be a gc.random.key(name, seed) tensor (int64 of "
            f"shape (2,)), got {described}; for NumPy initial values use gc.random.Key "
            f"and its initializers {where}"
        )
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = check_shape(shape)
    except ShapeError as error:
        raise ShapeError(f"gc.random.{function}: {error} {where}") from None
    dtype = canonical_dtype(dtype)
    if dtype not in FLOATS:
        raise DTypeError(
            f"gc.random.{function}: dtype must be float32 or float64, got {dtype} {where}"
        )
    state = key.node
    site = next(_SITES.setdefault(state, itertools.count()))
    seed, step = (apply("reshape", _element(state, i), shape=()) for i in (0, 1))
    per_step = apply("threefry", seed, step, dtype="int64")
    per_draw = apply("threefry", per_step, _int64(site), dtype="int64")
    keys = per_draw if not shape else apply("broadcast_to", per_draw, shape=shape)
    index = _flat_index(shape)
    draws = []
    for stream in range(streams):
        counter = index
        if streams > 1:
            counter = _affine(index, streams, stream)
        draws.append(Tensor(apply("threefry", keys, counter, dtype=dtype)))
    return draws


def _element(state: Node, i: int) -> Node:
    return apply("slice", state, starts=(i,), stops=(i + 1,), steps=(1,))


def _flat_index(shape: tuple[int, ...]) -> Node:
    """Each element's row-major flat index, as int64 of `shape` (iotas: index maps)."""
    total, stride = None, 1
    for axis in reversed(range(len(shape))):
        if shape[axis] > 1:
            term = apply("iota", shape=shape, axis=axis, dtype="int64")
            term = _affine(term, stride, 0) if stride > 1 else term
            total = term if total is None else apply("add", term, total)
        stride *= shape[axis]
    if total is None:
        zero = _int64(0)
        return zero if not shape else apply("broadcast_to", zero, shape=shape)
    return total


def _affine(x: Node, scale: int, offset: int) -> Node:
    """x * scale + offset, in int64."""
    result = apply("mul", x, _splat(scale, x.shape))
    return apply("add", result, _splat(offset, x.shape)) if offset else result


def _splat(value: int, shape) -> Node:
    scalar = _int64(value)
    return scalar if not shape else apply("broadcast_to", scalar, shape=tuple(shape))


def _int64(value: int) -> Node:
    return apply("const", value=_readonly(np.array(value, np.int64)))


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
