"""Minimax coefficients of P in e^r - 1 = r + r^2 P(r) on |r| <= ln2/2, for graphc's mathlib.

Run: python tools/fit_exp_polynomial.py [DEGREE ...]   (default: 10 for float64, 5 for float32)

P(r) = 1/2 + r P1(r): the leading coefficient is Taylor's 1/2, exact in any format, and P1
minimizes the error relative to e^r - 1 (the strictest of its users: expm1 and tanh near 0
need that, exp and sigmoid only the error relative to e^r, which is smaller). With c0 fixed
the error is r^3 / (e^r - 1) (P1(r) - f(r)), a weight >= 0 times a polynomial minus a smooth
function, so the plain Remez exchange applies (with c0 free the weight would change sign at
r = 0, where the error is 0 for any P, and the exchange would take that zero for an
alternation). Each step solves the n + 1 equations "error = +-E at n + 1 points" (n
coefficients of P1 and the level E) exactly in fractions.Fraction, e^r in 50-digit
decimal.Decimal, then moves the points to the extrema of the new error (the largest of each
run of one sign on a grid of 2000 points, refined by golden-section search).

Prints the coefficients of P rounded to float64 and float32 and the maximum errors after the
rounding, relative to e^r - 1 and to e^r, also in units of half an ulp (2^-53, 2^-24): the
approximation's share of the error; the evaluation's roundings come on top. mathlib.py
quotes the output.
"""

from __future__ import annotations

import math
import struct
import sys
from decimal import Decimal, getcontext
from fractions import Fraction

getcontext().prec = 50
HALF_LN2 = Decimal(2).ln() / 2
GRID = 2000
HALF = Decimal(1) / 2


def relative_error(coefficients: list, r: Decimal, of_exp: bool = False) -> Decimal:
    """(r + r^2 P(r)) / (e^r - 1) - 1, or with of_exp (1 + r + r^2 P(r)) / e^r - 1."""
    p = Decimal(0)
    for c in reversed(coefficients):
        p = p * r + Decimal(c)
    if of_exp:
        return (1 + r + r * r * p) / r.exp() - 1
    return (r + r * r * p) / (r.exp() - 1) - 1


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gauss-Jordan elimination, exact."""
    n = len(rhs)
    rows = [row[:] + [value] for row, value in zip(matrix, rhs)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if rows[i][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for i in range(n):
            if i != col and rows[i][col] != 0:
                factor = rows[i][col] / rows[col][col]
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[col])]
    return [rows[i][n] / rows[i][i] for i in range(n)]


def _levelled(points: list[Decimal]) -> list[Decimal]:
    """P = 1/2 + r P1(r) whose relative error is -E, +E, -E, ... at the points.

    (r + r^2/2 + r^3 P1(r)) / m - 1 = -+E, m = e^r - 1, is linear in P1 and E:
    r^3 P1(r) +- E m = m - r - r^2/2."""
    matrix, rhs = [], []
    for i, r in enumerate(points):
        m = Fraction(r.exp() - 1)
        r = Fraction(r)
        matrix.append([r ** (j + 3) for j in range(len(points) - 1)] + [(-1) ** i * m])
        rhs.append(m - r - r * r / 2)
    solution = _solve(matrix, rhs)[:-1]
    return [HALF] + [Decimal(c.numerator) / Decimal(c.denominator) for c in solution]


def _refine(coefficients, low: Decimal, high: Decimal, sign: int) -> Decimal:
    """Golden-section search for the largest sign * error on [low, high]."""
    ratio = (Decimal(5).sqrt() - 1) / 2
    for _ in range(60):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if sign * relative_error(coefficients, a) > sign * relative_error(coefficients, b):
            high = b
        else:
            low = a
    return (low + high) / 2


def _grid() -> list[Decimal]:
    """Even count: r = 0, where the relative error is 0/0, is not among them."""
    return [-HALF_LN2 + 2 * HALF_LN2 * i / (GRID - 1) for i in range(GRID)]


def _extrema(coefficients, count: int) -> list[Decimal]:
    """`count` alternating extrema of the error: the largest |error| of each run of one sign."""
    grid = _grid()
    errors = [relative_error(coefficients, r) for r in grid]
    runs = []  # (index of the largest |error|, sign), one per run of one sign
    for i, e in enumerate(errors):
        sign = 1 if e > 0 else -1
        if runs and runs[-1][1] == sign:
            if abs(e) > abs(errors[runs[-1][0]]):
                runs[-1] = (i, sign)
        else:
            runs.append((i, sign))
    while len(runs) > count:  # drop the smaller end
        runs.pop(0 if abs(errors[runs[0][0]]) < abs(errors[runs[-1][0]]) else -1)
    if len(runs) < count:
        raise ValueError(f"only {len(runs)} alternations, need {count}")
    points = []
    for i, sign in runs:
        if i in (0, GRID - 1):  # an end point is an extremum as it stands
            points.append(grid[i])
        else:
            points.append(_refine(coefficients, grid[i - 1], grid[i + 1], sign))
    return points


def fit(n: int, iterations: int = 8) -> list[Decimal]:
    """Minimax P = 1/2 + r P1(r), n coefficients in all, from Chebyshev points.

    A start point at r = 0 (odd n) is moved aside: there the error is 0 for any P."""
    cosines = [math.cos(math.pi * (n - 1 - i) / (n - 1)) for i in range(n)]
    points = [HALF_LN2 * Decimal(c if abs(c) > 1e-9 else 0.5 / n) for c in cosines]
    coefficients = _levelled(points)
    for _ in range(iterations):
        coefficients = _levelled(_extrema(coefficients, n))
    return coefficients


def _round32(value) -> float:
    return struct.unpack("f", struct.pack("f", float(value)))[0]


def max_error(coefficients, of_exp: bool = False) -> float:
    return float(max(abs(relative_error(coefficients, r, of_exp)) for r in _grid()))


def main() -> None:
    degrees = [int(a) for a in sys.argv[1:]] or [10, 5]
    for degree in degrees:
        exact = fit(degree + 1)
        print(f"P of degree {degree}: minimax relative error {max_error(exact):.3e}")
        for bits, rounding, unit in ((64, float, 2.0**-53), (32, _round32, 2.0**-24)):
            rounded = [rounding(c) for c in exact]
            print(f"  float{bits}:", ", ".join(repr(c) for c in rounded))
            for label, of_exp in (("e^r - 1", False), ("e^r", True)):
                error = max_error(rounded, of_exp)
                print(f"    error relative to {label}: {error:.3e} = {error / unit:.3f} half-ulp")


if __name__ == "__main__":
    main()
