"""Which code computes a matmul on a target: the path, the register tile, blocking, packing.

`define_matmul` (codegen/matmul.py) emits what these functions choose, from Python ints
alone: the shape, the dtype, the operands' strides and the target (codegen/target.py).

Paths (`choose_path`): integers, k = 0 and elements wider than the target's registers
(float64 on a Cortex-M4F, whose FPU is single precision) take a plain loop nest (LLVM
vectorizes what it can); matrix-vector products with A rows and B columns contiguous
(n <= 2) a dot-product kernel; a C narrower than one vector with more rows than columns
is computed transposed (C^T = B^T A^T) so that the vector lanes run along m; everything
else is blocked.

The tile follows the target: NR is two of its widest vectors and MR the rows whose
accumulators fit its vector registers beside two B vectors and a broadcast,
MR = (registers - 4) / 2: 6 rows on AVX2 (16 ymm), 14 rows of two zmm vectors on AVX-512
(32 zmm: 28 accumulators; BLIS's Skylake-X dgemm kernel is the same 14 x 16). A C narrower
than one vector takes a single vector column of registers - 6 rows (10 on AVX2: a window
view's broadcasts, each from its own row address, need the room; with 12 rows LLVM spilled
five accumulators and a convolution's weight gradient ran 1.5x slower); a C with fewer rows
than a tile takes more vectors per row, so that enough FMA chains run in parallel.

Packing is done only where it was measured to pay: B when it is reused by several row tiles
and its in-place reads would be a gather (column stride != 1) or rows >= 2 KiB apart, or it is
larger than L1 and reused by at least PACK_B_ROWS rows; A only when its rows are >= 4 KiB
apart and it is large. Measurements: docs/performance.md,
"Numbers moved out of the code: graphc/codegen/matmul.py".
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.codegen.target import Target, host
from graphc.ir.views import Axis, is_simple

ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8}
INTS = ("int32", "int64")
_L1_BYTES = 32 * 1024
COLUMN_ROWS = 32  # rows per thread up to which a split product is cut by its columns
PACK_B_ROWS = 48  # rows from which a B larger than L1 is packed wherever its rows lie


@dataclass(frozen=True)
class Operand:
    """How a matrix operand is addressed, in elements: one axis per (batch..., rows, cols),
    each a stride or (size, stride) pairs (ir/views.py). `zeros` says where its buffer is
    known to be zero (a zero padding's border): the element at offset f is zero unless
    lo <= (f // stride) % period < hi for each (stride, period, lo, hi)."""

    strides: tuple[Axis, ...]
    offset: int = 0
    zeros: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Tiling:
    """Register tile (mr x nr, vectors of width lanes) and cache blocks of one float kernel."""

    mr: int
    nr: int
    lanes: int
    kc: int
    mc: int
    nc: int
    pack_a: bool
    pack_b: bool


def _vectors_per_row(rows: int, registers: int) -> int:
    """Accumulator vectors per row that fit the registers with `rows` rows, one B vector per
    column and a broadcast: 7, 5, 3, 3, 2 for 1-5 rows of 16 registers."""
    return (registers - 1) // (rows + 1)


def tile_rows(n: int, dtype: str, cpu: Target | None = None) -> int:
    """Rows of the register tile `choose_tiling` picks for a C with n columns and many rows."""
    cpu = cpu or host()
    single_vector = n <= cpu.lanes(ITEMSIZE.get(dtype, 8))
    return cpu.registers - 6 if single_vector else (cpu.registers - 4) // 2


def choose_tiling(
    m: int,
    n: int,
    k: int,
    dtype: str,
    a_strides: tuple[int, int],
    b_strides: tuple[int, int],
    cpu: Target | None = None,
) -> Tiling:
    """The tile and blocking used for a float matmul of this shape and layout on `cpu`
    (default: the JIT's target; blocking tuned on AVX2)."""
    cpu = cpu or host()
    itemsize = ITEMSIZE[dtype]
    lanes = min(cpu.lanes(itemsize), 1 << max(n - 1, 0).bit_length())
    vectors = -(-n // lanes)
    rows = tile_rows(n, dtype, cpu)
    if m < rows:  # few rows: more vectors per row so that enough FMA chains run in parallel
        mr, nv = m, min(vectors, _vectors_per_row(m, cpu.registers))
    elif vectors == 1:
        mr, nv = rows, 1
    else:
        mr, nv = rows, 2
    nr = nv * lanes
    kc = 256
    mc = max(mr, (144 if itemsize == 4 else 72) // mr * mr)
    nc = max(nr, (256 * 1024 // (kc * itemsize)) // nr * nr)
    # Packing pays only for an operand that is reused (B across row tiles, A across column
    # tiles) and only when the micro-kernel's reads in place would be slow: a gather (B column
    # stride != 1) or rows 2 KiB (B) / 4 KiB (A) apart, where L1 sets and the TLB run out.
    # An A read transposed (a weight gradient x^T @ g) with its k steps 2 KiB apart puts
    # every k of a tile in the same two L1 sets: packing it pays too.
    # A B larger than L1 read in place by many rows is slower than packing it even with rows
    # closer (on Zen 3, f32 64x384x128 1.10x, 256x256x256 1.21x, f64 1.09-1.35x): packing
    # costs about 4 rows of the product, so it pays from PACK_B_ROWS rows (32: 0.95x, 12: 0.76x).
    # (An axis of (size, stride) pairs -- a window view's -- is a gather: always scattered.)
    b_row_bytes = _reach(b_strides[0]) * itemsize
    b_far = b_row_bytes >= 2048 or m >= PACK_B_ROWS
    b_scattered = b_strides[1] != 1 or (b_far and k * n * itemsize > _L1_BYTES)
    pack_b = (m > mr and b_scattered) or _gathered(b_strides[-1:])
    a_far = _reach(a_strides[0]) * itemsize >= 4096 or _reach(a_strides[1]) * itemsize >= 2048
    pack_a = n > nr and a_far and m * k * itemsize > 8 * _L1_BYTES
    return Tiling(mr, nr, lanes, kc, mc, nc, pack_a, pack_b)


def _gathered(axes) -> bool:
    """Whether any of `axes` is one of (size, stride) pairs: read element by element, each
    address from the digits of its index (a window view's)."""
    return not all(isinstance(axis, int) for axis in axes)


def _reach(axis: Axis) -> int:
    """How far apart in elements consecutive steps along an axis may be."""
    return abs(axis) if isinstance(axis, int) else max(abs(stride) for _, stride in axis)


def choose_path(
    m: int, n: int, k: int, dtype: str, a: Operand, b: Operand, tiling, cpu: Target
) -> str:
    """Which code computes the product: "loop" (integers, k = 0, or floats wider than the
    target's float registers: a plain loop nest), "dot"
    (matrix-vector with A rows and B columns contiguous: dot products, vectors along k),
    "dot transposed" (the same with one or two rows of A: C^T = B^T A^T as dot products),
    "transposed" (C^T = B^T A^T, blocked: n is narrower than a vector and m is not, or B's
    columns are gathered (a window view) and A's rows are not or are fewer: then the window
    view is the operand whose elements the micro-kernel broadcasts one by one, and the
    other is packed), or
    "blocked". An explicit `tiling` always means "blocked" for floats."""
    if dtype in INTS or k == 0 or cpu.vector_bytes < ITEMSIZE[dtype]:
        return "loop"
    if tiling is not None:
        return "blocked"
    lanes = cpu.lanes(ITEMSIZE[dtype])
    if k >= lanes and a.strides[-1] == 1 and b.strides[-2] == 1:
        if n <= 2:
            return "dot"
        if m <= 2:  # one row times a transposed weight (x @ W^T): dot products of W's rows
            return "dot transposed"
    if _gathered(b.strides[-1:]) and (not _gathered(a.strides[-2:-1]) or n > m):
        return "transposed"
    return "transposed" if n < lanes and m > n else "blocked"


def takes_row_count(
    m: int,
    n: int,
    k: int,
    dtype: str,
    a: Operand,
    b: Operand,
    batch: tuple[int, ...] = (),
    cpu: Target | None = None,
    tiling: Tiling | None = None,
) -> bool:
    """Whether `define_matmul(..., rows=...)` can take its row count at run time: an
    unbatched, non-empty product on the blocked path (always, for floats, with a `tiling`)."""
    if batch or m == 0 or n == 0 or dtype not in ITEMSIZE:
        return False
    return choose_path(m, n, k, dtype, a, b, tiling, cpu or host()) == "blocked"


def column_tile(
    m: int, n: int, k: int, dtype: str, a: Operand, b: Operand, threads: int, cpu: Target
) -> int | None:
    """The columns of C a chunk's width is a multiple of, when a product shared by `threads`
    threads should be cut by its columns (C[:, j0:j1] = A @ B[:, j0:j1]); None to cut it by
    its rows.

    A chunk of rows reads (or packs) all of B, a chunk of columns only its own columns; every
    chunk reads A in place either way. With few rows B is most of what a product reads:
    packing it costs about as much as 4 rows of the product (0.26 cycles per element against
    4 for 64 rows of FMAs, on AVX2), over 12 % of a chunk of at most COLUMN_ROWS rows, and a
    B read in place is streamed from L2 by every row chunk. So a product with at most
    COLUMN_ROWS rows per thread, whose columns make whole register tiles, is cut by its
    columns. Two threads, against rows: 1.04-1.18x on the encoder's products (64 rows), the
    whole encoder layer 1.075-1.09x; at 128 rows 0.85x (W4 128 f32) and 0.97x (W1-B f32), at
    256 rows 0.97-1.02x."""
    if dtype not in ITEMSIZE or 0 in (m, n, k) or m > COLUMN_ROWS * threads:
        return None
    if not all(map(is_simple, b.strides)):
        return None
    if choose_path(m, n, k, dtype, a, b, None, cpu) != "blocked":
        return None
    t = choose_tiling(m, n, k, dtype, a.strides[-2:], b.strides[-2:], cpu)
    whole = n % t.nr == 0 and n >= threads * t.nr
    return t.nr if not t.pack_a and whole else None
