"""Affine views: a layout chain read in place as offset + strides over a stored buffer.

A matmul reads its operands through views (a transpose, a slice, a broadcast cost nothing),
and a convolution reads its input through a window view: element (n, c, oh, ow, kh, kw) of
`window(x)` is x[n, c, oh*s + kh*d, ow*s + kw*d], an offset and one stride per axis. Once such
a view is reshaped into a matrix (rows (n, oh, ow), columns (c, kh, kw)), an axis of the matrix
walks several strides: each axis of a `View` is therefore either one stride (an int) or a
tuple of (size, stride) pairs, outermost first, where index i of the axis is the mixed-radix
digits of i over the sizes, each times its stride::

    window(x): x f32[1,3,8,8] -> f32[1,3,6,6,3,3], strides (192, 64, 8, 1, 8, 1)
    reshape to [1, 27, 36] after transposing the kernel axes in front of the output axes:
        axis 1 (c, kh, kw) = ((3, 64), (3, 8), (3, 1))   -- 27 rows
        axis 2 (oh, ow)    = ((6, 8), (6, 1))            -- 36 columns

Each layout op's `view(node, offset, strides)` rule maps its input's view to its own, or
returns None where its result is no such view (then the operand is stored first);
`ops.affine_view` follows a layout chain through those rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.ir.graph import Node

Axis = int | tuple[tuple[int, int], ...]


def strides_of(shape) -> tuple[int, ...]:
    """Row-major element strides."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def pairs(size: int, axis: Axis) -> list[tuple[int, int]]:
    """An axis of `size` elements as (size, stride) pairs, outermost first."""
    return [(size, axis)] if isinstance(axis, int) else list(axis)


def normal(parts) -> Axis:
    """Pairs as the simplest axis: size-1 pairs dropped, pairs that step evenly merged
    ((2, 8), (8, 1) is (16, 1)), one pair left as its stride."""
    merged: list[tuple[int, int]] = []
    for size, stride in parts:
        if size == 1:
            continue
        if merged and merged[-1][1] == size * stride:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    if not merged:
        return 0
    return merged[0][1] if len(merged) == 1 else tuple(merged)


def is_simple(axis: Axis) -> bool:
    return isinstance(axis, int)


def offset_at(axis: Axis, index: int) -> int:
    """The element offset of index `index` along `axis` (a Python int)."""
    if isinstance(axis, int):
        return index * axis
    offset = 0
    for size, stride in reversed(axis):
        index, digit = divmod(index, size)
        offset += digit * stride
    return offset


def reshape(shape, strides, new_shape) -> tuple[Axis, ...] | None:
    """The axes of a view of `shape` with `strides` reshaped to `new_shape` (row-major), or
    None where an axis of the new shape would need a stride pattern that pairs cannot say
    (a pair split at a size that does not divide it)."""
    queue = [p for d, axis in zip(shape, strides) if d != 1 for p in pairs(d, axis)]
    queue = [p for p in queue if p[0] != 1]
    result = []
    for d in new_shape:
        need, taken = d, []
        while need > 1:
            if not queue:
                return None
            size, stride = queue[0]
            if need % size == 0:
                taken.append(queue.pop(0))
                need //= size
            elif size % need == 0:
                taken.append((need, stride * (size // need)))
                queue[0] = (size // need, stride)
                need = 1
            else:
                return None
        result.append(normal(taken) if d != 1 else 0)
    return None if queue else tuple(result)


@dataclass(frozen=True)
class View:
    """An affine view of a buffer: element offset and per-axis `Axis` strides (0 =
    broadcast)."""

    source: Node
    offset: int
    strides: tuple[Axis, ...]

    @property
    def simple(self) -> bool:
        """One stride per axis (what every layout op's own rule can read)."""
        return all(isinstance(s, int) for s in self.strides)
