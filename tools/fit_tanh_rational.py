"""Minimax coefficients of graphc's float32 tanh: tanh(x) ~ x P(z) / Q(z), z = x^2.

Run: python tools/fit_tanh_rational.py [P_DEGREE Q_DEGREE LIMIT]   (default: 4 4 8.32)
Needs scipy (pip install scipy), for its linear-programming solver; graphc itself does not.

P(0) = Q(0) = 1, so x P/Q returns tiny x (and -0, and subnormals) unchanged; the other
coefficients minimize the error relative to tanh on 0 < x <= LIMIT (past 8.3178 graphc
returns +-1). That error, x P/Q / tanh - 1, is not linear in Q's coefficients, so each step
minimizes the linearized error |x P(z) - tanh(x) Q(z)| / (tanh(x) Q_prev(z)) with Q_prev
the previous step's denominator (the differential-correction / Loeb iteration), a linear
program over a grid of 6000 points plus 500 geometric ones near 0; tanh comes from 40-digit
decimal.Decimal. The error of the result is then measured on a 10x finer grid, after
rounding the coefficients to float32.

Prints P and Q (float64, to paste into mathlib.py, which rounds them to float32) and the
maximum relative error: the approximation's share. graphc's evaluation in float32 (about
ten roundings) comes on top: tests/test_mathlib.py and mathlib's error table measure the
whole.
"""

from __future__ import annotations

import struct
import sys
from decimal import Decimal, getcontext

import numpy as np
from scipy.optimize import linprog

getcontext().prec = 40


def tanh(x: float) -> float:
    e = (2 * Decimal(x)).exp()
    return float((e - 1) / (e + 1))


def to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def evaluate(p: list[float], q: list[float], x: np.ndarray) -> np.ndarray:
    z = x * x
    return x * np.polyval(p[::-1], z) / np.polyval(q[::-1], z)


def fit(p_degree: int, q_degree: int, limit: float, steps: int = 15):
    x = np.unique(np.concatenate([np.linspace(1e-4, limit, 6000), np.geomspace(1e-6, 0.5, 500)]))
    t = np.array([tanh(v) for v in x])
    z = x * x
    columns = [x * z**i for i in range(1, p_degree + 1)]
    columns += [-t * z**j for j in range(1, q_degree + 1)]
    basis = np.stack(columns, axis=1)
    q_previous = np.ones_like(x)
    for _ in range(steps):
        weight = 1 / (t * q_previous)
        # minimize e subject to -e <= weight (x - t + basis @ v) <= e
        rows = basis * weight[:, None]
        offset = (x - t) * weight
        ones = np.ones((len(x), 1))
        constraints = np.vstack([np.hstack([rows, -ones]), np.hstack([-rows, -ones])])
        bounds = np.concatenate([-offset, offset])
        cost = np.zeros(basis.shape[1] + 1)
        cost[-1] = 1
        solution = linprog(cost, A_ub=constraints, b_ub=bounds, bounds=(None, None), method="highs")
        v = solution.x[:-1]
        p = [1.0, *v[:p_degree]]
        q = [1.0, *v[p_degree:]]
        q_previous = np.polyval(q[::-1], z)
    return p, q


def main() -> None:
    p_degree, q_degree, limit = 4, 4, 8.32
    if len(sys.argv) == 4:
        p_degree, q_degree, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    p, q = fit(p_degree, q_degree, limit)
    x = np.unique(np.concatenate([np.linspace(1e-5, limit, 60000), np.geomspace(1e-7, 0.5, 5000)]))
    t = np.array([tanh(v) for v in x])
    rounded = [to_float32(c) for c in p], [to_float32(c) for c in q]
    for label, (pp, qq) in {"float64": (p, q), "float32": rounded}.items():
        error = np.max(np.abs(evaluate(pp, qq, x) / t - 1))
        print(f"coefficients in {label}: max relative error {error:.3e}", end=" ")
        print(f"({error / 2**-24:.2f} x 2^-24)")
    print("P =", [float(c) for c in p])
    print("Q =", [float(c) for c in q])


if __name__ == "__main__":
    main()
