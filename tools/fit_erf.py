"""Polynomial coefficients of graphc's mathlib erf, fitted here (mpmath, 60 digits).

Run: python tools/fit_erf.py   (needs mpmath; prints the two coefficient lists mathlib quotes)

erf is computed in two pieces, chosen per lane by |x| < 1:
  small  erf(x) = x S(z), z = x^2 in [0, 1]: S is the Chebyshev interpolant of erf(x)/x
         (an entire function of z), degree 12, in the power basis of z itself (so that
         S(0) = 2/sqrt(pi) dominates and the other terms are small corrections).
  large  erf(x) = 1 - t exp(-x^2 + L(t)), t = 2 / (2 + |x|) in [1/4, 2/3] for |x| in [1, 6]
         (the form of Numerical Recipes' erfccheb): L(t) = log(erfc(x) / t) + x^2 is smooth
         in t; its Chebyshev interpolant of degree 17, in the power basis of
         u = (t - 11/24) * 24/5 in [-1, 1].
Past |x| = 6, erfc(x) < 2.2e-17 and erf rounds to +-1. The printed errors are those of
the interpolants once their coefficients are rounded to float64 (relative to erf(x)/x,
and absolute in L, which is relative in erfc); the evaluation's roundings come on top.
"""

from __future__ import annotations

import mpmath

mpmath.mp.dps = 60

SMALL_DEGREE, LARGE_DEGREE = 12, 17
T_LOW, T_HIGH = mpmath.mpf(1) / 4, mpmath.mpf(2) / 3


def _interpolate(f, degree: int) -> list:
    """Power-basis coefficients in u in [-1, 1] of the Chebyshev interpolant of f(u)."""
    n = degree + 1
    nodes = [mpmath.cos(mpmath.pi * (k + mpmath.mpf(1) / 2) / n) for k in range(n)]
    values = [f(u) for u in nodes]
    cheb = [
        2 * sum(v * mpmath.cos(mpmath.pi * j * (k + mpmath.mpf(1) / 2) / n)
                for k, v in enumerate(values)) / n
        for j in range(n)
    ]  # fmt: skip
    cheb[0] /= 2
    # T_j in the power basis: T_0 = 1, T_1 = u, T_{j+1} = 2u T_j - T_{j-1}
    power = [mpmath.mpf(0)] * n
    previous, current = [mpmath.mpf(1)], [mpmath.mpf(0), mpmath.mpf(1)]
    for j, c in enumerate(cheb):
        basis = previous if j == 0 else current
        if j >= 2:
            following = [mpmath.mpf(0)] + [2 * a for a in current]
            for i, a in enumerate(previous):
                following[i] -= a
            previous, current = current, following
            basis = current
        for i, a in enumerate(basis):
            power[i] += c * a
    return power


def _in_z(coefficients: list) -> list:
    """p(u) as a polynomial in z = (u + 1) / 2, i.e. p(2z - 1), by the binomial theorem."""
    result = [mpmath.mpf(0)] * len(coefficients)
    for n, c in enumerate(coefficients):
        for k in range(n + 1):
            result[k] += c * mpmath.binomial(n, k) * mpmath.mpf(2) ** k * (-1) ** (n - k)
    return result


def small(u):
    z = (u + 1) / 2
    x = mpmath.sqrt(z)
    return mpmath.mpf(2) / mpmath.sqrt(mpmath.pi) if z == 0 else mpmath.erf(x) / x


def large(u):
    t = T_LOW + (u + 1) / 2 * (T_HIGH - T_LOW)
    x = 2 / t - 2
    return mpmath.log(mpmath.erfc(x) / t) + x * x


def _horner(coefficients, u):
    result = mpmath.mpf(0)
    for c in reversed(coefficients):
        result = result * u + mpmath.mpf(c)
    return result


def main() -> None:
    for name, f, degree in (("small", small, SMALL_DEGREE), ("large", large, LARGE_DEGREE)):
        coefficients = _interpolate(f, degree)
        if name == "small":  # in z itself: c0 = 2/sqrt(pi) dominates, the rest corrects it
            coefficients = _in_z(coefficients)
        rounded = [float(c) for c in coefficients]
        grid = [mpmath.mpf(-1) + 2 * mpmath.mpf(i) / 4000 for i in range(4001)]
        error = max(
            abs(_horner(rounded, (u + 1) / 2) - f(u)) / abs(f(u))
            if name == "small"
            else abs(_horner(rounded, u) - f(u))
            for u in grid
        )
        print(f"{name}: degree {degree}, max error {mpmath.nstr(error, 3)}")
        print("    [" + ", ".join(repr(c) for c in rounded) + "]")


if __name__ == "__main__":
    main()
