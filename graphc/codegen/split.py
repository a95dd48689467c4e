"""When a kernel runs on several threads, and in which chunks (codegen/parallel.py emits them).

A kernel is split when its estimated time on one core (`work_of`, `matmul_work`) reaches
WORK_THRESHOLD_NS (MATMUL_THRESHOLD_NS for a matmul): with workers kept in a pool, a split
costs ~1-2 us (a futex wake if the worker sleeps; a worker still spinning from the last job
starts at once), and below ~10 us of matmul the chunks' synchronisation eats the gain. Its
outer loop is cut into chunks whose boundaries are multiples of `unit` rows (64 elements for
flat loops: whole vectors; a matmul's register tile rows): about four chunks per thread, one
for a matmul cut by rows, whose chunks each pack their own copy of B. A product with few rows
(tiling.column_tile) is cut by its columns instead (`Split.axis` = 1), two chunks per thread,
each reading or packing only its columns of B. Measurements: docs/performance.md, "Numbers
moved out of the code: graphc/codegen/parallel.py".
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from graphc.ir.graph import Kernel
from graphc.passes.kernels import op_cost

# One core's time per unit of `OpDef.cost` and a matmul's FLOP rate (its micro-kernel runs at
# the FMA peak), measured on one host.
NS_PER_UNIT = {"float32": 0.1, "float64": 0.3}
MATMUL_GFLOPS = {"float32": 36.0, "float64": 18.0}
WORK_THRESHOLD_NS = 30_000
MATMUL_THRESHOLD_NS = 12_000


@dataclass(frozen=True)
class Split:
    """A kernel's outer loop of `rows` iterations, cut into chunks [start, end) of `size`
    rows (the last may be shorter). `axis` is the axis of the kernel's loop nest the chunks
    cut: 0, or 1 for a product split by its columns."""

    rows: int
    chunks: tuple[tuple[int, int], ...]
    axis: int = 0

    @property
    def size(self) -> int:
        return self.chunks[0][1]


def chunks(rows: int, threads: int, unit: int = 1) -> tuple[tuple[int, int], ...]:
    """`rows` cut into at most `threads` chunks, all but the last a multiple of `unit` long."""
    size = -(-rows // threads)
    size = -(-size // unit) * unit
    return tuple((s, min(s + size, rows)) for s in range(0, rows, size))


def element_cost(kernel: Kernel) -> int:
    """Estimated units per element of a kernel's body (`OpDef.cost`): its ops,
    plus one per input and output."""
    return sum(map(op_cost, kernel.nodes)) + len(kernel.inputs) + len(kernel.outputs)


def split_rows(
    outer: int,
    work: float,
    threads: int,
    unit: int = 1,
    per_thread: int = 4,
    threshold: float = WORK_THRESHOLD_NS,
    axis: int = 0,
) -> Split | None:
    """The Split of a kernel with `outer` rows and `work` (ns on one core) into about
    `per_thread` chunks per thread, or None if one thread is better: threading off, less
    work than `threshold`, or too few rows for two chunks."""
    if threads <= 1 or work < threshold or outer < 2 * unit:
        return None
    cut = chunks(outer, threads * per_thread, unit)
    return Split(outer, cut, axis) if len(cut) > 1 else None


def work_of(kernel: Kernel, domain) -> float:
    """Estimated ns on one core of a kernel evaluating its body over `domain` (a shape)."""
    wide = any(n.dtype in ("float64", "int64") for n in kernel.nodes)
    return prod(domain) * element_cost(kernel) * NS_PER_UNIT["float64" if wide else "float32"]


def matmul_work(m: int, n: int, k: int, dtype: str) -> float:
    """Estimated ns on one core of an m x k x n matmul: 2mnk FLOP at the FMA peak."""
    return 2 * m * n * k / MATMUL_GFLOPS.get(dtype, 4.0)
