# Over 500 lines on purpose: one routine per function over shared constants and helpers, and
# the one accuracy table (tests/test_mathlib.py reads it); a new routine goes here.
"""Branch-free, vectorizable transcendental functions emitted inline as LLVM IR.

Every public function takes an ``ir.IRBuilder`` and a ``float``/``double`` value or a vector
of either (``<8 x float>``, ``<4 x double>``, ...) and returns a value of the same type. The
code is straight-line: arithmetic, float<->int bitcasts, ``select`` and intrinsics that are
single instructions on x86-64-v3 (``llvm.fma``, ``llvm.fabs``, ``llvm.rint``, ``llvm.floor``,
``llvm.copysign``, ``llvm.sqrt``). There are no calls into libm and no branches, so the loop
vectorizer turns a loop calling these functions into vector code (ymm on AVX2, zmm where the
target prefers 512-bit vectors); sin and cos alone branch, once per vector, to an out-of-line
routine for arguments past 2^50 (f32: 2^22), and reach the loops as calls that `link_trig`
resolves after optimization (see sin/cos below). Special cases are computed
alongside and chosen with ``fcmp`` + ``select``. No fast-math flags are set on anything: the
double-double steps below rely on exact IEEE rounding, and NaN/Inf propagate as in NumPy.

The caller needs a target with hardware FMA (``llvm.fma`` is fused by definition; without
FMA hardware LLVM turns it into a call to ``fma()``). float32 is computed in float32 with
float32 polynomials, except ``pow`` (see below).

Algorithms
----------
exp     x = k ln2 + r, k = rint(x / ln2) (from the low bits of x/ln2 + 1.5*2^52, which also
        hold k for building 2^k without int<->float conversions, which AVX2 lacks for 64-bit
        lanes), |r| <= ln2/2, r = (x - k hi) - k lo with fdlibm's ln2 = hi + lo and FMA, in
        plain arithmetic. e^r = 1 + (r + r^2 P(r)), P = 1/2 + r P1(r) minimax relative to
        e^r - 1 (tools/fit_exp_polynomial.py: Remez, c0 kept at 1/2), degree 10 for f64
        (error 1.5e-18 once rounded, 0.014 x 2^-53; the Taylor series to r^13/13!, one
        term more, was 0.11 x 2^-53), degree 4 for f32 exp and sigmoid, which need the
        error relative to e^r only (5.4e-9, 0.09 x 2^-24; degree 5, which expm1 keeps:
        0.018 x 2^-24, but slower; Cephes ``expf`` 0.13), evaluated as E(r^2) +
        r O(r^2). Overflow and underflow need no selects: x is clamped to [-746, 710]
        (f32: [-110, 89]) and 2^k is applied in two halves 2^floor(k/2) 2^ceil(k/2), so the
        product overflows to inf or is rounded once to a subnormal, then 0.
expm1   x = k ln2 + r as above but with r kept as a double-double r + r_low (for pow too);
        2^k (expm1(r) + 1) - 1 = fma(2^k, expm1(r), 2^k - 1), exact for k = 0; where that
        cancels (ln2/2 < |x| < 0.45) h (h + 2) with h = expm1(x/2).
log     x = 2^k m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact); log(1+f) as in fdlibm:
        s = f / (2 + f), log(1+f) = f - f^2/2 + s (f^2/2 + R(s^2)), R from fdlibm/musl
        (``Lg1..Lg7`` for f64, ``Lg1..Lg4`` from musl ``logf`` for f32). Subnormals are
        scaled by 2^54 (2^25) first.
log1p   u = 1 + x rounded, c = the exact rounding error of that sum (Fast2Sum), then
        log(u) + c/u through the same kernel, c/u injected into the low-order sum.
tanh    f32: x P(z)/Q(z), z = x^2, one division (the form of Eigen's/XLA's fast tanh, with
        coefficients fitted here, tools/fit_tanh_rational.py: minimax relative on |x| <=
        8.32, P and Q of degree 4 in z, P(0) = Q(0) = 1 so tiny x, subnormals and -0 come
        back unchanged; a 15/6 rational (P of degree 7, Q of 3) was 6.1 ulp and slower);
        P and Q as 1 + z P1(z) so each rounds once near 1; the quotient is clamped to
        [-1, 1] and is +-1 for |x| > 8.3178, where tanh is within 2^-23 of 1. f64: |x|
        clamped to 20, past which e^(2|x|) swallows the +2 below; m/(m + 2) with m =
        expm1(2|x|) = fma(2^k, e^r - 1, 2^k - 1) (k >= 0, so it cancels at most 2.4 : 1),
        sign restored with copysign. (Cephes' rational below |x| = 0.625 plus 1 - 2/(e^(2|x|)
        + 1) above was 1.2 ulp but slower.)
sigmoid e = e^-|x| (with 2^k applied as 2^(k + c) 2^-c: rounded once, subnormal results
        kept); x >= 0: 1/(1 + e), x < 0: e/(1 + e), one division. (f64 used to keep 1 + e
        exact and correct the quotient with a Newton step: 1.46 instead of 2.2 ulp, for
        8 more operations.)
sin/cos q = nearest integer to x 2/pi (a double-length product, so q is the true nearest
        integer), r = x - q pi/2 with pi/2 split into three floats and FMA: the first step
        is exact, the rest is carried as a double-double r + r_low: the reduction is good
        to ~2^-100 (f32: ~2^-45) relative to r, plus |q| 2^-163 (f32: |q| 2^-76) from the
        three-float pi/2, also next to the zeros of sin/cos (tested near k pi/2). Kernels on
        [-pi/4, pi/4] with the r_low tail: fdlibm/musl ``__sin``/``__cos`` (degree 13/14)
        for f64, Cephes ``sinf``/``cosf`` for f32. Quadrant from the low bits of
        q + 1.5 2^52 (f32: 2^23), right for |q| < 2^51 (f32: 2^22). That path covers
        |x| <= 2^50 (f64) and |x| <= 2^22 (f32). Past it (q no longer an integer float
        from about 2^53, f32: 2^24) Payne-Hanek, out of line (`_trig_reduce_large`): x's
        exponent picks 4 x 52 bits of 2/pi from a 1344-bit table (computed here from
        Machin's formula in integers), three exact products with FMA, the integer parts
        split off exactly: the fraction is good to ~2^-88 relative at the float closest to
        a multiple of pi/2 (6381956970095103 2^797), then the same kernels; f32 takes the
        f64 routine and rounds. In a loop: the branch-free path for every lane, then one
        test of the whole vector for a lane past the limit (inf too: NaN) and, if one is,
        a call computing all its lanes' Payne-Hanek values. LLVM's loop vectorizer cannot
        make that test of code it sees (it tests lane by lane under a condition: 10-25 %
        slower), so sin(x) of a scalar is emitted as a call to `graphc_sin_f64` (...) whose
        vector variants (`graphc_sin_f64_v4` ...) the vectorizer calls, and `link_trig`
        links their definitions in and inlines them after optimization (jit.optimize does,
        every pipeline must). Small arguments cost 1-5 % more than the NaN-past-the-limit
        code before (bench/mathlib_micro.py --baseline; a compiled sin(x) cos(x) + x 8-16 %),
        lane-by-lane tests cost 10-25 %; all-large arguments take ~31 ns per element (10-20x).
sqrt    ``llvm.sqrt`` (one vsqrtpd/vsqrtps, correctly rounded).
erf     |x| < 1: x S(x^2), S a degree-12 polynomial; 1 <= |x| <= 6: 1 - t e^(-x^2 + L(t)),
        t = 2/(2 + |x|) (Numerical Recipes' erfc form), L of degree 17 in t; |x| > 6: +-1
        (erfc(6) < 2^-55). S and L are Chebyshev interpolants fitted in mpmath by
        tools/fit_erf.py (1.6e-17 relative, 6.8e-17 absolute in the exponent). Every lane
        computes both pieces: one division, one exp and 30 FMAs. f32 in f32 arithmetic
        (8 lanes, not 4; 4.8 -> 1.1 ns per element): Norbert Juffa's minimax pair,
        x + x P(x^2) for |x| <= 0.927734375, else +-(1 - e^Q(|x|)), one exp.
remainder, floor_divide  NumPy's x % y and x // y (npy_divmod): fmod(x, y) first, exactly:
        n = trunc(x/y) is within one of the true quotient for |x/y| < 2^52, fma(-n, y, x)
        is exact once n is corrected (a remainder of the wrong sign, or as large as |y|,
        shows which way), then NumPy's own sign fix-ups and floor((x - mod)/y). f32 takes
        the fmod in f64 (exact) and the rest in f32, as NumPy. Past |x/y| = 2^52 (f32: the
        same ratio) the remainder is NaN rather than a wrong number (an exact fmod there
        needs one reduction step per 52 bits of quotient) and floor_divide is x/y (an
        integer float, within an ulp of NumPy's). Integers: Python's floor rules, x // 0 =
        x % 0 = 0 as NumPy, INT_MIN // -1 wraps; the divisor is never 0 or -1 (x86 traps).
pow     f64: exp(y log x) with log|x| as a double-double: s = f/(2+f) as a double-double
        quotient, log(1+f) = 2s + s^3 (2/3 + z T(z)), z = s^2, T the atanh series
        2/5 + 2/7 z + ... + 2/25 z^10 (truncation < 2^-70), 2/3 as a double-double. The
        product y log|x| is formed exactly with FMA and its low part is carried into the
        reduced argument of exp. log|x| is good to ~2^-64 relative, so pow stays < 1 ulp up
        to the overflow/underflow thresholds. f32: computed as f64 pow and rounded (about 3x
        the cost of f32 exp + log, but correctly rounded in practice).

Constants: the pi/2 and 2/pi splits are derived below from a 64-digit decimal pi with exact
rational arithmetic; ln2 hi/lo are fdlibm's (hi has trailing zeros, so k hi is exact).
The atanh coefficients are exact fractions rounded once. Published and fitted coefficients
are quoted with their source next to them and checked by the tests.

Speed: a ymm loop iteration of these functions is ~40-100 instructions, mostly 2-micro-op
FMAs with long dependent chains, and the loops that call them are interleaved twice (see
graphc.codegen.kernel): both the number of operations and the chain lengths count. So the exp
polynomial is split into even and odd halves (as few FMAs as Horner's rule, half the chain)
and the other polynomials use Estrin's scheme, and the fast functions (exp, tanh, sigmoid)
avoid double-double steps and keep the special-value selects to a clamp or two.
bench/mathlib_micro.py measures them against NumPy and JAX; times per element and of the
alternatives named above: docs/performance.md, "Numbers moved out of the code:
graphc/codegen/mathlib.py".

Measured max errors in ulp, against float64 (f32) and np.longdouble (f64: x87's 64-bit
mantissa, within 5e-4 ulp of mpmath) references. f32 exp, log, log1p, sqrt, sin, cos and
sigmoid: every float of the domain (exp: from -104 to overflow). Otherwise random arguments,
so the f64 numbers are the largest seen, rounded up: exp, expm1, tanh, sigmoid 10 million
over the whole range (exp/expm1 up to overflow), [-2, 2] and magnitudes 1e-8 to 10; log,
log1p, sin, cos, pow at least 10 million over the domain (log over all positive floats incl.
subnormals, log1p over (-1, inf), sin/cos over |x| < 1e5 (f32: 1e4) and up to the limits)
plus 40 million where the worst errors sit (log and log1p: mantissas near sqrt(2) and
sqrt(1/2); sin/cos: |r| near pi/4; pow: |y log x| in [400, 700]). tests/test_mathlib.py
checks every row on 400000 to 600000 arguments over the same domains:

    function   float64   float32
    exp        1.02      1.09
    expm1      1.29      1.48
    log        0.86      0.84
    log1p      0.86      0.84
    tanh       2.64      5.58      (speed over accuracy: f64 < 3.7e-16, f32 < 3.4e-7 relative;
                                   f64 also at 2e7 points of its worst stretch, [0.17, 0.26];
                                   f32 measured over every float in [2^-30, 9.5])
    sigmoid    2.31      2.41      (one plain division: speed over accuracy)
    sin        0.82      0.85      (the whole range; past |x| = 2^50 / 2^22 against mpmath,
    cos        0.82      0.84       120000 arguments of every binade to the largest float and
                                   the floats nearest to k pi/2 there: f64 0.73, f32 0.50)
    atan       1.00      2.30      (Cephes; f32 measured over every 7th float in [0, 30])
    sqrt       0.50      0.50
    pow        0.76      0.50      (f64 with |y log x| up to 700)
    erf        1.60      1.00      (f64 against mpmath, f32 against f64 erf at 400000
                                   arguments; tests/test_functions_wave2.py)

Special values (all exactly as NumPy): exp(+-0) = 1,
exp(-inf) = 0, exp(inf) = inf, exp(x > 709.78) = inf (f32: x > 88.72), results below the
normal range are subnormal then 0; log(+-0) = -inf, log(x < 0) = nan, log(inf) = inf;
log1p(-1) = -inf, log1p(x < -1) = nan, log1p(+-0) = +-0; sin(+-0) = +-0, sin/cos(+-inf) =
nan; tanh(+-0) = +-0, tanh(+-inf) = +-1, tanh(x) = +-1 exactly once |tanh| rounds to 1 (f64:
within 1 ulp right at that boundary; f32: from |x| > 8.3178 on, 2 ulp early); sigmoid(-inf)
= 0, sigmoid(inf) = 1; atan(+-0) = +-0, atan(+-inf) = +-pi/2; NaN in -> NaN out everywhere,
except pow, which follows C99 Annex F: pow(x, +-0) = 1 and pow(1, y) = 1 even for NaN,
pow(-1, +-inf) = 1, pow(+-0, y<0) = +-inf (sign only for odd integer y), pow(x<0, non-
integer y) = nan, a negative base with integer y gives the sign of (-1)^y, pow(x, +-inf) and
pow(+-inf, y) as in C99.
"""

from __future__ import annotations

import functools
import math
import struct
from decimal import Decimal
from fractions import Fraction

from llvmlite import ir

__all__ = [
    "exp", "expm1", "log", "log1p", "tanh", "sigmoid", "sin", "cos", "atan", "sqrt", "pow", "erf",
    "remainder", "floor_divide",
]  # fmt: skip

_PI = Fraction(Decimal("3.14159265358979323846264338327950288419716939937510582097494459"))


def _round(value: Fraction | float, bits: int) -> float:
    """`value` rounded to the nearest float64, or to float32 when bits == 32."""
    if bits == 64:
        return float(value)
    return struct.unpack("f", struct.pack("f", float(value)))[0]


def _split(value: Fraction, bits: int, parts: int) -> list[float]:
    """`value` as a sum of `parts` floats, each the rounded remainder of the previous."""
    pieces = []
    for _ in range(parts):
        pieces.append(_round(value, bits))
        value -= Fraction(pieces[-1])
    return pieces


def _constants(bits: int) -> dict:
    """Per-dtype constants: float format, reductions, polynomial coefficients."""
    f64 = bits == 64
    c = {
        "mant": 52 if f64 else 23,
        "bias": 1023 if f64 else 127,
        "shifter": 1.5 * 2.0 ** (52 if f64 else 23),
        "min_normal": 2.0 ** (-1022 if f64 else -126),
        "log2e": _round(1 / math.log(2), bits),
        # ln2 = hi + lo, fdlibm's split: k * hi is exact for |k| < 2^11 (f32: 2^7).
        "ln2": (6.93147180369123816490e-01, 1.90821492927058770002e-10)
        if f64
        else (_round(0.693138122558593750, 32), _round(9.0580006145e-06, 32)),
        "exp_range": (-746.0, 710.0) if f64 else (-110.0, 89.0),
        "expm1_low": -40.0 if f64 else -20.0,
        "half_pi": _split(_PI / 2, bits, 3),
        "two_over_pi": _split(2 / _PI, bits, 2),
        "trig_limit": 2.0**50 if f64 else 2.0**22,
        # sqrt(1/2) as the float whose bits start the mantissa window of log.
        "sqrt_half_bits": 0x3FE6A09E667F3BCD if f64 else 0x3F3504F3,
        # f64: past it e^(2|x|) swallows the 1s and 2s. f32: past it tanh is within 2^-23
        # (one ulp of 1) of 1, closer than the rational's rounding errors.
        "tanh_limit": 20.0 if f64 else _round(0.5 * math.log(2.0**24 - 1), 32),
    }
    if f64:
        # e^r - 1 = r + r^2 P(r), P = 1/2 + r P1(r) minimax relative to e^r - 1 on |r| <=
        # ln2/2: tools/fit_exp_polynomial.py 10 (1.5e-18 after rounding; relative to e^r 6e-19).
        c["expm1"] = [0.5, 0.16666666666666677, 0.04166666666666658, 0.008333333333322167,
                      0.0013888888888942625, 0.00019841269884918728, 2.480158719828087e-05,
                      2.7557245321179614e-06, 2.7557387019399774e-07, 2.5108676087797317e-08,
                      2.0878911027212896e-09]  # fmt: skip
        # fdlibm/musl e_log.c Lg1..Lg7.
        c["log"] = [
            6.666666666666735130e-01,
            3.999999999940941908e-01,
            2.857142874366239149e-01,
            2.222219843214978396e-01,
            1.818357216161805012e-01,
            1.531383769920937332e-01,
            1.479819860511658591e-01,
        ]
        # fdlibm/musl k_sin.c S1..S6 and k_cos.c C1..C6.
        c["sin"] = [
            -1.66666666666666324348e-01,
            8.33333333332248946124e-03,
            -1.98412698298579493134e-04,
            2.75573137070700676789e-06,
            -2.50507602534068634195e-08,
            1.58969099521155010221e-10,
        ]
        c["cos"] = [
            4.16666666666666019037e-02,
            -1.38888888888741095749e-03,
            2.48015872894767294178e-05,
            -2.75573143513906633035e-07,
            2.08757232129817482790e-09,
            -1.13596475577881948265e-11,
        ]
    else:
        # As for f64: tools/fit_exp_polynomial.py 5 (1.1e-9 after rounding; relative to e^r 4e-10).
        c["expm1"] = [0.5, 0.1666666567325592, 0.041666481643915176, 0.0083334194496274,
                      0.00139332446269691, 0.0001982412941288203]  # fmt: skip
        # exp and sigmoid: tools/fit_exp_polynomial.py 4 (relative to e^r 5.4e-9 once rounded).
        c["exp"] = [0.5, 0.16666548755263463, 0.04166685412560639, 0.008366034281737371,
                    0.0013898223000105667]  # fmt: skip
        # musl logf.c Lg1..Lg4 (0xaaaaaa.0p-24, 0xccce13.0p-25, 0x91e9ee.0p-25, 0xf89e26.0p-26).
        c["log"] = [0xAAAAAA / 2**24, 0xCCCE13 / 2**25, 0x91E9EE / 2**25, 0xF89E26 / 2**26]
        # Cephes sinf.c / cosf.c.
        c["sin"] = [-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4]
        c["cos"] = [4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5]
        # tanh(x) = x P(z) / Q(z), z = x^2, P(0) = Q(0) = 1: tools/fit_tanh_rational.py 4 4
        # 8.32 (minimax relative, 2.1e-8; 4.3e-8 once rounded to float32, 0.73 x 2^-24;
        # evaluation in float32 the rest). Every coefficient is positive: nothing cancels.
        c["tanh_p"] = [1.0, 0.1344199102803089, 0.003568058684903971, 2.1807119538863647e-05,
                       1.5034995202396806e-08]  # fmt: skip
        c["tanh_q"] = [1.0, 0.46775324314369965, 0.02615249764537031, 0.0003404340999896784,
                       8.459335828577361e-07]  # fmt: skip
    for key in ("expm1", "exp", "log", "sin", "cos", "tanh_p", "tanh_q"):
        if key in c:
            c[key] = [_round(v, bits) for v in c[key]]
    c.setdefault("exp", c["expm1"])  # f64: tanh takes e^r - 1 from _exp_parts
    return c


_C = {32: _constants(32), 64: _constants(64)}

# log(1 + f) = 2s + s^3 (2/3 + z T(z)), z = s^2: 2/3 as a double-double, T the atanh series.
_TWO_THIRDS = _split(Fraction(2, 3), 64, 2)
_ATANH_TAIL = [float(Fraction(2, 2 * n + 1)) for n in range(2, 13)]


# --- small helpers ----------------------------------------------------------------------


def _bits(t: ir.Type) -> int:
    scalar = t.element if isinstance(t, ir.VectorType) else t
    return 32 if isinstance(scalar, ir.FloatType) else 64


def _like(t: ir.Type, scalar: ir.Type) -> ir.Type:
    """`scalar`, or a vector of it with as many lanes as `t`."""
    return ir.VectorType(scalar, t.count) if isinstance(t, ir.VectorType) else scalar


def _int_type(t: ir.Type) -> ir.Type:
    return _like(t, ir.IntType(_bits(t)))


def _const(t: ir.Type, value) -> ir.Constant:
    """A constant of type `t`, splatted across the lanes of a vector type."""
    if isinstance(t, ir.VectorType):
        return ir.Constant(t, [value] * t.count)
    return ir.Constant(t, value)


def _iconst(t: ir.Type, value: int) -> ir.Constant:
    """An integer constant with the width and lane count of float type `t`."""
    return _const(_int_type(t), value)


def _intrinsic(b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """Call overloaded intrinsic llvm.<name>.<type> with all-same-typed arguments."""
    t = args[0].type
    scalar = "f32" if _bits(t) == 32 else "f64"
    suffix = f"v{t.count}{scalar}" if isinstance(t, ir.VectorType) else scalar
    full = f"llvm.{name}.{suffix}"
    fn = b.module.globals.get(full)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(t, [t] * len(args)), full)
    return b.call(fn, args)


def _fma(b, x, y, z):
    return _intrinsic(b, "fma", x, y, z)


def _poly(b: ir.IRBuilder, x: ir.Value, coeffs: list[float]) -> ir.Value:
    """c0 + c1 x + c2 x^2 + ... by Estrin's scheme with FMA.

    (c0 + c1 x) + (c2 + c3 x) x^2 + ...: the pairs are independent and are combined in a
    tree, so the chain of dependent FMAs is log2(n) long instead of n (Horner's rule), for
    a multiplication more per power x^(2^i). The exp family uses _poly_even_odd instead
    (see Speed above)."""
    t = x.type
    terms = [
        _fma(b, _const(t, coeffs[i + 1]), x, _const(t, coeffs[i]))
        if i + 1 < len(coeffs)
        else _const(t, coeffs[i])
        for i in range(0, len(coeffs), 2)
    ]
    power = x
    while len(terms) > 1:
        power = b.fmul(power, power)
        pairs = [terms[i : i + 2] for i in range(0, len(terms), 2)]
        terms = [_fma(b, pair[1], power, pair[0]) if len(pair) == 2 else pair[0] for pair in pairs]
    return terms[0]


def _horner(b: ir.IRBuilder, x: ir.Value, coeffs: list[float]) -> ir.Value:
    """c0 + c1 x + c2 x^2 + ... by Horner's rule: n - 1 FMAs, the fewest, in one chain."""
    result = _const(x.type, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        result = _fma(b, result, x, _const(x.type, c))
    return result


def _poly_even_odd(b: ir.IRBuilder, x: ir.Value, z: ir.Value, coeffs: list[float]) -> ir.Value:
    """c0 + c1 x + c2 x^2 + ... as E(z) + x O(z), z = x^2, E and O by Horner's rule.

    As few operations as Horner's rule (given z) and half its chain of dependent FMAs;
    Estrin's scheme needs a multiplication more per power x^(2^i)."""
    return _fma(b, _horner(b, z, coeffs[1::2]), x, _horner(b, z, coeffs[::2]))


def _lt(b, x, y):
    return b.fcmp_ordered("<", x, y)


def _gt(b, x, y):
    return b.fcmp_ordered(">", x, y)


def _eq(b, x, y):
    return b.fcmp_ordered("==", x, y)


def _is_nan(b, x):
    return b.fcmp_unordered("uno", x, x)


def _select_const(b, cond, value: float, otherwise):
    return b.select(cond, _const(otherwise.type, value), otherwise)


def _keep_zero(b, x, y):
    """y, except x itself where x is +-0 (keeps the sign of zero for odd functions)."""
    return b.select(_eq(b, x, _const(x.type, 0.0)), x, y)


def _clamp(b, x, low: float, high: float):
    """x limited to [low, high]; NaN passes through (ordered compares are false)."""
    x = _select_const(b, _gt(b, x, _const(x.type, high)), high, x)
    return _select_const(b, _lt(b, x, _const(x.type, low)), low, x)


def _int_bits(b, x):
    """The integer whose bits are x's; for x = k + shifter these are k's low bits."""
    return b.bitcast(x, _int_type(x.type))


def _exp2i(b, k):
    """2^k for integer-valued float k with 2^k a normal number."""
    c = _C[_bits(k.type)]
    i = _int_bits(b, b.fadd(k, _const(k.type, c["shifter"])))
    i = b.shl(b.add(i, _iconst(k.type, c["bias"])), _iconst(k.type, c["mant"]))
    return b.bitcast(i, k.type)


def _ldexp(b, p, k):
    """p * 2^k in two steps, so k may run past the exponent range (inf or subnormal)."""
    half = _intrinsic(b, "floor", b.fmul(k, _const(k.type, 0.5)))
    return b.fmul(b.fmul(p, _exp2i(b, half)), _exp2i(b, b.fsub(k, half)))


def _two_sum(b, x, y):
    """(s, e) with s = fl(x + y) and x + y = s + e exactly."""
    s = b.fadd(x, y)
    y_part = b.fsub(s, x)
    x_part = b.fsub(s, y_part)
    e = b.fadd(b.fsub(x, x_part), b.fsub(y, y_part))
    return s, e


def _two_prod(b, x, y):
    """(p, e) with p = fl(x y) and x y = p + e exactly."""
    p = b.fmul(x, y)
    return p, _fma(b, x, y, b.fneg(p))


# --- exp family -------------------------------------------------------------------------


def _exp_reduce(b, x, x_low=None):
    """(r, r_low, k): x + x_low = k ln2 + r + r_low, |r| <= ln2/2, k integer-valued."""
    c = _C[_bits(x.type)]
    t = x.type
    k = _intrinsic(b, "rint", b.fmul(x, _const(t, c["log2e"])))
    minus_k = b.fneg(k)
    r = _fma(b, minus_k, _const(t, c["ln2"][0]), x)  # exact
    product, product_low = _two_prod(b, minus_k, _const(t, c["ln2"][1]))
    r, r_low = _two_sum(b, r, product)
    r_low = b.fadd(r_low, product_low)
    if x_low is not None:  # x_low may exceed ulp(r): renormalize
        r, error = _two_sum(b, r, x_low)
        r_low = b.fadd(r_low, error)
    return r, r_low, k


def _expm1_kernel(b, r, r_low=None):
    """exp(r + r_low) - 1 for |r| <= ln2/2, |r_low| tiny."""
    c = _C[_bits(r.type)]
    z = b.fmul(r, r)
    em1 = _fma(b, z, _poly_even_odd(b, r, z, c["expm1"]), r)
    if r_low is None:
        return em1
    return _fma(b, r_low, b.fadd(em1, _const(r.type, 1.0)), em1)


def _exp_kernel(b, r, r_low):
    """exp(r + r_low) for |r| <= ln2/2 with one final rounding: (1 + r) + (r^2 P(r) + ...)."""
    c = _C[_bits(r.type)]
    one = _const(r.type, 1.0)
    head = b.fadd(one, r)
    head_error = b.fsub(r, b.fsub(head, one))  # exact (Fast2Sum)
    low = _fma(b, r_low, head, head_error)
    z = b.fmul(r, r)
    return b.fadd(head, _fma(b, z, _poly_even_odd(b, r, z, c["expm1"]), low))


def _exp_parts(b, x):
    """(q, n): e^x = (1 + q) 2^k with q = e^r - 1, |r| <= ln2/2, n the integer bits of k + shifter.

    The fast path of the exp family, in plain arithmetic; x must be clamped (|k| < 2^22).
    q is good relative to e^r, and in f64 also relative to e^r - 1 (the "exp" polynomial)."""
    c = _C[_bits(x.type)]
    t = x.type
    shifter = _const(t, c["shifter"])
    shifted = _fma(b, x, _const(t, c["log2e"]), shifter)  # rint(x / ln2) in the low bits
    k = b.fsub(shifted, shifter)
    r = _fma(b, k, _const(t, -c["ln2"][0]), x)  # exact
    r = _fma(b, k, _const(t, -c["ln2"][1]), r)
    z = b.fmul(r, r)
    return _fma(b, z, _poly_even_odd(b, r, z, c["exp"]), r), _int_bits(b, shifted)


def _power_of_two(b, t, n, offset: int = 0):
    """2^(k + offset) of float type t, for n = the bits of k + shifter and 2^(k + offset) normal.

    The shift left pushes the shifter's own bits out of the word, leaving only k's."""
    c = _C[_bits(t)]
    biased = b.add(n, _iconst(t, c["bias"] + offset))
    return b.bitcast(b.shl(biased, _iconst(t, c["mant"])), t)


def _scale(b, q, n):
    """(1 + q) 2^k rounded once, for any k of a clamped exp: 2^floor(k/2) 2^ceil(k/2).

    n is k + shifter's bits, and the shifter's bits are even, so n >> 1 is floor(k/2) plus
    half of them (which the shift in _power_of_two drops again). The first factor is
    normal, so fma(q, 2^a, 2^a) is (1 + q) rounded, times 2^a."""
    t = q.type
    half = b.lshr(n, _iconst(t, 1))
    first = _power_of_two(b, t, half)
    return b.fmul(_fma(b, q, first, first), _power_of_two(b, t, b.sub(n, half)))


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x."""
    low, high = _C[_bits(x.type)]["exp_range"]
    q, n = _exp_parts(b, _clamp(b, x, low, high))
    return _scale(b, q, n)


def expm1(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e^x - 1, accurate near 0."""
    c = _C[_bits(x.type)]
    t = x.type
    r, r_low, k = _exp_reduce(b, _clamp(b, x, c["expm1_low"], c["exp_range"][1]))
    em1 = _expm1_kernel(b, r, r_low)
    # 2^k (em1 + 1) - 1; for large k (2^k - 1 rounds to 2^k) the plain exp form, which
    # also lets k run up to the overflow threshold.
    large = _gt(b, k, _const(t, c["mant"] + 2))
    scale = _exp2i(b, _select_const(b, large, 0.0, k))
    result = _fma(b, scale, em1, b.fsub(scale, _const(t, 1.0)))
    result = b.select(large, _ldexp(b, b.fadd(_const(t, 1.0), em1), k), result)
    # For |x| < 0.45 that sum cancels (k = +-1); there use expm1(x) = h (h + 2), h = expm1(x/2).
    h = _expm1_kernel(b, b.fmul(x, _const(t, 0.5)))
    near_zero = _lt(b, _intrinsic(b, "fabs", x), _const(t, 0.45))
    near_zero = b.and_(near_zero, b.fcmp_ordered("!=", k, _const(t, 0.0)))
    result = b.select(near_zero, _fma(b, h, h, b.fadd(h, h)), result)
    return _keep_zero(b, x, result)


def sigmoid(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + e^-x), without overflow: e^-|x| is never large."""
    c = _C[_bits(x.type)]
    t = x.type
    one = _const(t, 1.0)
    minus_ax = b.fneg(_intrinsic(b, "fabs", x))
    minus_ax = _select_const(
        b, _lt(b, minus_ax, _const(t, c["exp_range"][0])), c["exp_range"][0], minus_ax
    )
    q, n = _exp_parts(b, minus_ax)
    # e^-|x| = ((1 + q) 2^(k + offset)) 2^-offset: the first product rounds like 1 + q, the
    # second is exact or rounds once, to a subnormal where the result is one.
    offset = c["mant"] + 40
    scale = _power_of_two(b, t, n, offset)
    e = b.fmul(_fma(b, q, scale, scale), _const(t, 2.0**-offset))
    # e^x / (1 + e^x) for x < 0, also for -0 and a NaN (e is 1 and NaN there): the sign bit
    # itself selects (vblendvps reads only that bit: no compare)
    negative = b.icmp_signed("<", _int_bits(b, x), _iconst(t, 0))
    numerator = b.select(negative, e, one)
    return b.fdiv(numerator, b.fadd(one, e))


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Hyperbolic tangent; exactly +-1 where tanh rounds to +-1."""
    if _bits(x.type) == 32:
        return _tanh32(b, x)
    return _tanh64(b, x)


def _tanh32(b, x):
    """x P(z) / Q(z), z = x^2; +-1 where tanh is within 2^-23 of +-1.

    P(0) = Q(0) = 1, so tiny and subnormal x (P = Q = 1) come back exactly, -0 included."""
    c = _C[32]
    t = x.type
    one = _const(t, 1.0)
    z = b.fmul(x, x)
    # 1 + z P1(z) rounds once near 1 (Estrin on all of P would round twice there). (Horner
    # for P1 and Q1 saves the z^2 they share, but was slower.)
    p = _fma(b, z, _poly(b, z, c["tanh_p"][1:]), one)
    q = _fma(b, z, _poly(b, z, c["tanh_q"][1:]), one)
    quotient = b.fdiv(b.fmul(x, p), q)
    # Rounding errors may carry the quotient past +-1 near saturation.
    quotient = _clamp(b, quotient, -1.0, 1.0)
    saturated = _gt(b, _intrinsic(b, "fabs", x), _const(t, c["tanh_limit"]))
    return b.select(saturated, _intrinsic(b, "copysign", _const(t, 1.0), x), quotient)


def _tanh64(b, x):
    """m / (m + 2), m = e^(2|x|) - 1 = fma(2^k, q, 2^k - 1) (k >= 0: cancels <= 2.4 : 1)."""
    c = _C[64]
    t = x.type
    one, two = _const(t, 1.0), _const(t, 2.0)
    ax = _intrinsic(b, "fabs", x)
    # Past tanh_limit, e^(2|x|) swallows the 1s and 2s below: the result is exactly 1.
    ax = _select_const(b, _gt(b, ax, _const(t, c["tanh_limit"])), c["tanh_limit"], ax)
    q, n = _exp_parts(b, b.fadd(ax, ax))
    scale = _power_of_two(b, t, n)
    m = _fma(b, scale, q, b.fsub(scale, one))
    return _intrinsic(b, "copysign", b.fdiv(m, b.fadd(m, two)), x)


# --- log family -------------------------------------------------------------------------


def _log_split(b, x):
    """(f, k) with x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)); for finite x > 0."""
    c = _C[_bits(x.type)]
    t = x.type
    subnormal = _lt(b, x, _const(t, c["min_normal"]))
    x = b.select(subnormal, b.fmul(x, _const(t, 2.0 ** (c["mant"] + 2))), x)
    # Shift the mantissa window so [sqrt(1/2), sqrt(2)) maps to one binade (musl log.c).
    one_bits = c["bias"] << c["mant"]
    bits = b.add(_int_bits(b, x), _iconst(t, one_bits - c["sqrt_half_bits"]))
    exponent = b.lshr(bits, _iconst(t, c["mant"]))
    # Small non-negative integer n -> float: bits of (2^mant + n) minus 2^mant.
    as_float = b.bitcast(b.or_(exponent, _iconst(t, one_bits + (c["mant"] << c["mant"]))), t)
    k = b.fsub(as_float, _const(t, 2.0 ** c["mant"] + c["bias"]))
    k = b.fsub(k, b.select(subnormal, _const(t, c["mant"] + 2.0), _const(t, 0.0)))
    mantissa = b.and_(bits, _iconst(t, (1 << c["mant"]) - 1))
    m = b.bitcast(b.add(mantissa, _iconst(t, c["sqrt_half_bits"])), t)
    return b.fsub(m, _const(t, 1.0)), k


def _log_kernel(b, f, k, correction):
    """k ln2 + log(1 + f) + correction, |correction| tiny (fdlibm's evaluation order)."""
    c = _C[_bits(f.type)]
    t = f.type
    s = b.fdiv(f, b.fadd(_const(t, 2.0), f))
    z = b.fmul(s, s)
    r = b.fmul(z, _poly(b, z, c["log"]))
    half_f2 = b.fmul(b.fmul(_const(t, 0.5), f), f)
    low = _fma(b, k, _const(t, c["ln2"][1]), correction)
    low = _fma(b, s, b.fadd(half_f2, r), low)
    return _fma(b, k, _const(t, c["ln2"][0]), b.fsub(f, b.fsub(half_f2, low)))


def log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural logarithm."""
    t = x.type
    f, k = _log_split(b, x)
    result = _log_kernel(b, f, k, _const(t, 0.0))
    result = _select_const(b, _eq(b, x, _const(t, math.inf)), math.inf, result)
    result = _select_const(b, _eq(b, x, _const(t, 0.0)), -math.inf, result)
    result = _select_const(b, _lt(b, x, _const(t, 0.0)), math.nan, result)
    return b.select(_is_nan(b, x), x, result)


def log1p(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(1 + x), accurate near 0."""
    t = x.type
    one = _const(t, 1.0)
    u = b.fadd(one, x)
    # 1 + x = u + error exactly (Fast2Sum, larger operand first).
    error_small = b.fsub(x, b.fsub(u, one))
    error_large = b.fsub(one, b.fsub(u, x))
    x_small = b.fcmp_ordered("<=", _intrinsic(b, "fabs", x), one)
    error = b.select(x_small, error_small, error_large)
    f, k = _log_split(b, u)
    result = _log_kernel(b, f, k, b.fdiv(error, u))
    result = _select_const(b, _eq(b, x, _const(t, math.inf)), math.inf, result)
    result = _select_const(b, _eq(b, x, _const(t, -1.0)), -math.inf, result)
    result = _select_const(b, _lt(b, x, _const(t, -1.0)), math.nan, result)
    return _keep_zero(b, x, b.select(_is_nan(b, x), x, result))


# --- sin, cos ---------------------------------------------------------------------------


def _trig_reduce(b, x):
    """(r, r_low, q): x = q pi/2 + r + r_low, q the integer nearest to x 2/pi, as int bits."""
    c = _C[_bits(x.type)]
    t = x.type
    hi, lo = c["two_over_pi"]
    product, product_error = _two_prod(b, x, _const(t, hi))
    product_error = _fma(b, x, _const(t, lo), product_error)
    q = _intrinsic(b, "rint", product)
    q = b.fadd(q, _intrinsic(b, "rint", b.fadd(b.fsub(product, q), product_error)))
    minus_q = b.fneg(q)
    part1, part2, part3 = (_const(t, part) for part in c["half_pi"])
    r = _fma(b, minus_q, part1, x)  # exact
    middle, middle_low = _two_prod(b, minus_q, part2)
    r, r_low = _two_sum(b, r, middle)
    r_low = _fma(b, minus_q, part3, b.fadd(r_low, middle_low))
    r, error = _two_sum(b, r, r_low)  # near a zero of sin/cos r_low may exceed r
    return r, error, _int_bits(b, b.fadd(q, _const(t, c["shifter"])))


def _sin_kernel(b, r, r_low, z):
    """sin(r + r_low), |r| <= pi/4, z = r^2: r + (r z P(z) + r_low (1 - z/2))."""
    t = r.type
    tail = b.fmul(r_low, _fma(b, z, _const(t, -0.5), _const(t, 1.0)))
    return b.fadd(r, _fma(b, b.fmul(r, z), _poly(b, z, _C[_bits(t)]["sin"]), tail))


def _cos_kernel(b, r, r_low, z):
    """cos(r + r_low), |r| <= pi/4, z = r^2: w + ((1 - w) - z/2 + z^2 P(z) - r r_low)."""
    t = r.type
    one = _const(t, 1.0)
    half_z = b.fmul(z, _const(t, 0.5))
    w = b.fsub(one, half_z)
    tail = _fma(b, b.fmul(z, z), _poly(b, z, _C[_bits(t)]["cos"]), b.fneg(b.fmul(r, r_low)))
    return b.fadd(w, b.fadd(b.fsub(b.fsub(one, w), half_z), tail))


def _sin_cos_reduced(b, r, r_low, q, quadrant_offset: int):
    """sin(q pi/2 + r + r_low + quadrant_offset pi/2), q as the int bits of q + shifter."""
    t = r.type
    q = b.add(q, _iconst(t, quadrant_offset))
    z = b.fmul(r, r)
    odd = b.icmp_unsigned("!=", b.and_(q, _iconst(t, 1)), _iconst(t, 0))
    result = b.select(odd, _cos_kernel(b, r, r_low, z), _sin_kernel(b, r, r_low, z))
    sign = b.shl(b.and_(q, _iconst(t, 2)), _iconst(t, _bits(t) - 2))
    return b.bitcast(b.xor(_int_bits(b, result), sign), t)


def _pi_bits(bits: int) -> int:
    """floor(pi 2^bits), from Machin's formula pi = 16 atan(1/5) - 4 atan(1/239) in integers."""

    def atan_inverse(k: int, scale: int) -> int:  # atan(1/k) 2^scale, rounded down per term
        total, power, n = 0, (1 << scale) // k, 0
        while power:
            total += (-1) ** n * (power // (2 * n + 1))
            power //= k * k
            n += 1
        return total

    guard = 32  # each of the ~bits/1.4 terms truncates by < 1: 2^32 absorbs them all
    return (16 * atan_inverse(5, bits + guard) - 4 * atan_inverse(239, bits + guard)) >> guard


# 2/pi's first 1344 bits after the binary point, behind 64 zero bits, as 22 big-endian
# 64-bit words: bit 64 + j of the string is 2/pi's bit of weight 2^-(j + 1).
_TWO_OVER_PI_BITS = 1344
_TWO_OVER_PI_WORDS = [
    (((1 << (2 * _TWO_OVER_PI_BITS + 65)) // _pi_bits(_TWO_OVER_PI_BITS + 64)) >> (64 * i))
    & (2**64 - 1)
    for i in reversed(range(22))
]


def _two_over_pi_table(module: ir.Module) -> ir.GlobalVariable:
    name = "graphc_two_over_pi"
    table = module.globals.get(name)
    if table is None:
        words = ir.ArrayType(ir.IntType(64), len(_TWO_OVER_PI_WORDS))
        table = ir.GlobalVariable(module, words, name)
        table.linkage, table.global_constant = "internal", True
        table.initializer = ir.Constant(words, _TWO_OVER_PI_WORDS)
    return table


def _trig_reduce_large(b, x):
    """(r, r_low, q) as _trig_reduce, for finite float64 x with |x| >= 2^22 (Payne-Hanek).

    x = m 2^(E - 52), m a 53-bit integer. The bits of 2/pi of weight >= 2^(54 - E) times x
    are multiples of 4 and drop out; the next 4 x 52 bits, T0..T3 (read out of the bit
    string at E), give x T_k = m' c_k with m' = m 2^-52 (x with exponent 0) and c_k the
    52-bit integer N_k times 2^(2 - 52 k): E cancels, nothing over- or underflows. x T0,
    x T1 and x T2 are exact double-doubles (FMA); their integer parts are split off exactly
    (rint), leaving f = x 2/pi - Q, Q the integer nearest to it: the leading fractions are on
    grids of 2^-50 and 2^-102 and add exactly, the rest (|.| < 2^-48) is summed with errors
    below 2^-150, and 2/pi's bits past T3 weigh < 2^-153 |x|^-1: |f| is never below 2^-62
    for a float64 x (the closest to a multiple of pi/2 is 6381956970095103 2^797, 2^-60.9
    away), so f is good to ~2^-88 relative. r = f pi/2 as a double-double."""
    i64, f64 = ir.IntType(64), ir.DoubleType()
    bits = b.bitcast(x, i64)
    # m' in [1, 2) with x's sign; start: where T0 starts in the bit string (E + 10)
    m = b.bitcast(b.or_(b.and_(bits, i64(0x800FFFFFFFFFFFFF)), i64(0x3FF0000000000000)), f64)
    exponent = b.and_(b.lshr(bits, i64(52)), i64(0x7FF))
    # (a vector's small lanes come here too, their results discarded: keep the reads in the table)
    exponent = b.select(b.icmp_unsigned("<", exponent, i64(1023)), i64(1023), exponent)
    start = b.sub(exponent, i64(1023 - 10))
    table = _two_over_pi_table(b.module)

    def word(index):
        return b.load(b.gep(table, [ir.IntType(32)(0), index], inbounds=True), typ=i64)

    chunks = []
    for k in range(4):
        position = b.add(start, i64(52 * k))
        index, shift = b.lshr(position, i64(6)), b.and_(position, i64(63))
        following = b.lshr(b.lshr(word(b.add(index, i64(1))), i64(1)), b.sub(i64(63), shift))
        window = b.lshr(b.or_(b.shl(word(index), shift), following), i64(12))  # 52 bits
        # N_k exactly as a double: the bits of 2^52 + N_k, minus 2^52
        exact = b.fsub(b.bitcast(b.or_(window, i64(0x4330000000000000)), f64), f64(2.0**52))
        chunks.append(b.fmul(exact, f64(2.0 ** (2 - 52 * k))))
    (p0, e0), (p1, e1), (p2, e2) = (_two_prod(b, m, c) for c in chunks[:3])
    p3 = b.fmul(m, chunks[3])

    def split(v):  # (integer part, fraction), exactly
        n = _intrinsic(b, "rint", v)
        return n, b.fsub(v, n)

    n0, f0 = split(p0)
    n1, f1 = split(e0)
    n2, s = split(b.fadd(f0, f1))  # exact: both on the grid of 2^-50, |sum| <= 1
    n3, f2 = split(p1)
    u, u_low = _two_sum(b, s, f2)
    n4, u = split(u)
    g, g_low = _two_sum(b, u, b.fadd(u_low, e1))  # u_low + e1: exact (grid 2^-102, < 2^-50)
    h, h_low = _two_sum(b, g, p2)
    low = b.fadd(b.fadd(g_low, h_low), b.fadd(e2, p3))
    f, f_low = _two_sum(b, h, low)
    # Q mod 4 (n0 may be as large as 2^55: its multiple of 4 goes first, exactly)
    n0 = b.fsub(n0, b.fmul(_intrinsic(b, "rint", b.fmul(n0, f64(0.25))), f64(4.0)))
    q = b.fadd(b.fadd(b.fadd(n0, n1), b.fadd(n2, n3)), n4)
    half_pi, half_pi_low = _split(_PI / 2, 64, 2)
    r, r_low = _two_prod(b, f, f64(half_pi))
    r_low = _fma(b, f, f64(half_pi_low), _fma(b, f_low, f64(half_pi), r_low))
    r, r_low = _two_sum(b, r, r_low)
    return r, r_low, _int_bits(b, b.fadd(q, f64(_C[64]["shifter"])))


def _large_routine(module: ir.Module, t: ir.Type, quadrant_offset: int) -> ir.Function:
    """The scalar `sin` (quadrant_offset 0) or `cos` (1) of float type t for |x| > trig_limit
    (inf: NaN): Payne-Hanek; float32 computed in float64 and rounded. Out of line: only the
    branch to it sits in the loops."""
    name = f"graphc_{_TRIG_NAMES[quadrant_offset]}_large_f{_bits(t)}"
    routine, b = _out_of_line(module, t, name)
    if b is None:
        return routine
    x = routine.args[0]
    wide = x if _bits(t) == 64 else b.fpext(x, ir.DoubleType())
    result = _sin_cos_reduced(b, *_trig_reduce_large(b, wide), quadrant_offset)
    result = _select_const(
        b, _eq(b, _intrinsic(b, "fabs", wide), _const(wide.type, math.inf)), math.nan, result
    )
    b.ret(result if _bits(t) == 64 else b.fptrunc(result, t))
    return routine


_TRIG_NAMES = ("sin", "cos")


def _out_of_line(module: ir.Module, t: ir.Type, name: str):
    """(the internal noinline function `name` of type t(t), a builder at its entry if it is
    new, else None)."""
    function = module.globals.get(name)
    if function is not None:
        return function, None
    function = ir.Function(module, ir.FunctionType(t, [t]), name)
    function.linkage = "internal"
    function.attributes.add("noinline")
    function.attributes.add("nounwind")
    return function, ir.IRBuilder(function.append_basic_block("entry"))


def _large_vector_routine(module: ir.Module, t: ir.VectorType, quadrant_offset: int, keep: bool):
    """_large_routine lane by lane on a vector. keep: with preserve_allcc, so that the vector
    registers of the loop calling it survive the call without being saved around it (x86-64:
    vzeroupper must then stay out of it, which LLVM would put before its return)."""
    routine = _large_routine(module, t.element, quadrant_offset)
    vector_routine, b = _out_of_line(module, t, f"{routine.name}_v{t.count}{'_kept' * keep}")
    if b is None:
        return vector_routine
    if keep:
        vector_routine.calling_convention = "preserve_allcc"
        set.add(vector_routine.attributes, '"target-features"="-vzeroupper"')
    x, result = vector_routine.args[0], ir.Constant(t, None)
    for lane in range(t.count):
        i = ir.IntType(32)(lane)
        result = b.insert_element(result, b.call(routine, [b.extract_element(x, i)]), i)
    b.ret(result)
    return vector_routine


def _sin_cos_inline(b, x, quadrant_offset: int, keep: bool = False):
    """sin(x + quadrant_offset pi/2): the branch-free reduction for |x| <= trig_limit, and a
    branch (scalar x: on x; a vector: on any lane) to Payne-Hanek for the others (a vector:
    all its lanes, one by one, out of line; `keep`: see _large_vector_routine). NaN stays NaN
    (an ordered compare is false); inf takes the branch (NaN there)."""
    t = x.type
    result = _sin_cos_reduced(b, *_trig_reduce(b, x), quadrant_offset)
    if quadrant_offset == 0:
        result = _keep_zero(b, x, result)
    large = _gt(b, _intrinsic(b, "fabs", x), _const(t, _C[_bits(t)]["trig_limit"]))
    vector = isinstance(t, ir.VectorType)
    if vector:
        routine = _large_vector_routine(b.module, t, quadrant_offset, keep)
        lanes = ir.IntType(t.count)
        any_large = b.icmp_unsigned("!=", b.bitcast(large, lanes), lanes(0))
    else:
        routine, any_large = _large_routine(b.module, t, quadrant_offset), large
    before = b.block
    with b.if_then(any_large, likely=False):
        slow = b.call(routine, [x], cconv=routine.calling_convention)
        if vector:
            slow = b.select(large, slow, result)
        slow_block = b.block
    merged = b.phi(t)
    merged.add_incoming(result, before)
    merged.add_incoming(slow, slow_block)
    return merged


# sin and cos of a scalar are calls to `graphc_sin_f64` (...), declared, with vector variants
# of these widths (`graphc_sin_f64_v4` ...), also declared: LLVM's loop vectorizer turns the
# call into a call of the variant of its width. The routines themselves are linked in and
# inlined once the module is optimized (`link_trig`): a loop that computes sin this way tests
# its vector once for a large lane (a branch LLVM's vectorizer would not make of code inlined
# before it: it would test lane by lane, 10-25 % slower).
_TRIG_WIDTHS = (2, 4, 8, 16, 32)


def _trig_symbol(quadrant_offset: int, t: ir.Type, lanes: int = 1) -> str:
    name = f"graphc_{_TRIG_NAMES[quadrant_offset]}_f{_bits(t)}"
    return name if lanes == 1 else f"{name}_v{lanes}"


class _CallAttributes(ir.instructions.CallInstrAttributes):
    """Call-site attributes that also take LLVM's string attributes ("name"="value")."""

    def add(self, name):
        return set.add(self, name) if name.startswith('"') else super().add(name)


def _compiler_used(module: ir.Module, values: list) -> None:
    """Keep `values` until code generation (`@llvm.compiler.used`; it emits nothing itself):
    the vectorizer finds a variant by name, and an unused declaration would be gone by then."""
    array = ir.ArrayType(ir.PointerType(), len(values))
    used = ir.GlobalVariable(module, array, "llvm.compiler.used")
    used.linkage, used.section = "appending", "llvm.metadata"
    used.initializer = ir.Constant(array, values)


def _sin_cos(b, x, quadrant_offset: int):
    t = x.type
    if isinstance(t, ir.VectorType):
        return _sin_cos_inline(b, x, quadrant_offset)
    module, name = b.module, _trig_symbol(quadrant_offset, t)
    routine = module.globals.get(name)
    if routine is None:
        routine = ir.Function(module, ir.FunctionType(t, [t]), name)
        variants = []
        for lanes in _TRIG_WIDTHS:
            vector = ir.VectorType(t, lanes)
            variant = _trig_symbol(quadrant_offset, t, lanes)
            variants.append(ir.Function(module, ir.FunctionType(vector, [vector]), variant))
        if "llvm.compiler.used" in module.globals:  # one array per module: append to it
            used = module.globals["llvm.compiler.used"]
            variants = [*used.initializer.constant, *variants]
            del module.globals["llvm.compiler.used"]
            module.scope._useset.discard("llvm.compiler.used")
        _compiler_used(module, variants)
    call = b.call(routine, [x])
    mangled = ",".join(
        f"_ZGV_LLVM_N{n}v_{name}({_trig_symbol(quadrant_offset, t, n)})" for n in _TRIG_WIDTHS
    )
    call.attributes = _CallAttributes(
        ["nounwind", "readnone", '"vector-function-abi-variant"="' + mangled + '"']
    )
    return call


@functools.cache
def _inlined_size(name: str) -> int:
    """Instructions of the scalar routine `name` (graphc_sin_f64 ...) once inlined."""
    offset = _TRIG_NAMES.index(name.split("_")[1])
    t = ir.FloatType() if name.endswith("f32") else ir.DoubleType()
    function = ir.Function(ir.Module(), ir.FunctionType(t, [t]), "size")
    b = ir.IRBuilder(function.append_basic_block())
    _sin_cos_inline(b, function.args[0], offset)
    return sum(len(block.instructions) for block in function.blocks)


def linked_size(instruction: ir.Instruction) -> int:
    """The instructions a call of scalar sin or cos becomes after `link_trig`, less the call;
    0 for any other instruction (how large a kernel is: codegen/kernel.py)."""
    if not isinstance(instruction, ir.CallInstr) or not isinstance(instruction.callee, ir.Function):
        return 0
    name = instruction.callee.name
    if not (name.startswith(("graphc_sin_f", "graphc_cos_f")) and name[-3:] in ("f32", "f64")):
        return 0
    return _inlined_size(name) - 1


def sin(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Sine over the whole range (scalar x: a call `link_trig` resolves; see the docstring)."""
    return _sin_cos(b, x, 0)


def cos(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Cosine over the whole range (scalar x: a call `link_trig` resolves; see the docstring)."""
    return _sin_cos(b, x, 1)


def trig_definitions(names: set[str], keep: bool = False) -> str | None:
    """LLVM IR defining those of the sin/cos symbols (scalar and vector variants) in `names`
    as `available_externally` + `alwaysinline` functions (inlined, then never emitted), with
    the out-of-line Payne-Hanek routines they call; None if `names` has none of them. keep:
    vector registers survive the calls (x86-64; see _large_vector_routine)."""
    module = ir.Module(name="graphc_trig")
    found = False
    for offset in (0, 1):
        for t in (ir.FloatType(), ir.DoubleType()):
            for lanes in (1, *_TRIG_WIDTHS):
                name = _trig_symbol(offset, t, lanes)
                if name not in names:
                    continue
                found = True
                vt = t if lanes == 1 else ir.VectorType(t, lanes)
                function = ir.Function(module, ir.FunctionType(vt, [vt]), name)
                function.linkage = "available_externally"
                function.attributes.add("alwaysinline")
                function.attributes.add("nounwind")
                b = ir.IRBuilder(function.append_basic_block("entry"))
                b.ret(_sin_cos_inline(b, function.args[0], offset, keep))
    return str(module) if found else None


def link_trig(module, pass_builder) -> None:
    """Resolve the sin/cos calls of an optimized `module` (llvmlite.binding.ModuleRef): link
    in `trig_definitions` and inline them (then clean up with instcombine and simplifycfg).
    Every pipeline that compiles mathlib's sin or cos runs this after its optimization."""
    from llvmlite import binding

    names = {f.name for f in module.functions if f.is_declaration}
    text = trig_definitions(names, keep=module.triple.startswith("x86_64"))
    if text is None:
        return
    # in the module's own LLVM context (llvmlite keeps it, unexported, on the ModuleRef)
    context = getattr(module, "_context", None) or binding.get_global_context()
    definitions = binding.parse_assembly(text, context=context)
    definitions.triple, definitions.data_layout = module.triple, module.data_layout
    module.link_in(definitions)
    passes = binding.create_new_module_pass_manager()
    passes.add_always_inliner_pass()
    passes.add_instruction_combine_pass()
    passes.add_simplify_cfg_pass()
    passes.add_global_dead_code_eliminate_pass()  # the routines no variant called
    passes.run(module, pass_builder)


def sqrt(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Square root (correctly rounded; sqrt(-0) = -0, sqrt(x < 0) = nan)."""
    return _intrinsic(b, "sqrt", x)


# --- atan -------------------------------------------------------------------------------

# Cephes' atan (f64: a degree 4/5 rational in x^2; f32: atanf's degree 4 polynomial), with
# its argument reduction made branch-free: |x| > tan(3 pi/8) -> pi/2 + atan(-1/|x|),
# |x| above the middle threshold -> pi/4 + atan((|x| - 1) / (|x| + 1)), the sign restored
# with copysign (atan(-0) = -0, atan(+-inf) = +-pi/2, NaN stays NaN).
_ATAN64_P = [-6.485021904942025371773e1, -1.228866684490136173410e2,
             -7.500855792314704667340e1, -1.615753718733365076637e1,
             -8.750608600031904122785e-1]  # fmt: skip
_ATAN64_Q = [1.945506571482613964425e2, 4.853903996359136964868e2, 4.328810604912902668951e2,
             1.650270098316988542046e2, 2.485846490142306297962e1, 1.0]  # fmt: skip
_ATAN32_P = [-3.33329491539e-1, 1.99777106478e-1, -1.38776856032e-1, 8.05374449538e-2]


def atan(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Arctangent (Cephes: f64 within ~1 ulp, f32 within ~2 ulp)."""
    t = x.type
    bits = _bits(t)
    ax = _intrinsic(b, "fabs", x)
    big = _gt(b, ax, _const(t, 2.41421356237309504880))  # tan(3 pi / 8)
    middle = b.and_(_gt(b, ax, _const(t, 0.66 if bits == 64 else 0.4142135623730950)), b.not_(big))
    one = _const(t, 1.0)
    reduced = b.select(
        big,
        b.fdiv(_const(t, -1.0), ax),
        b.select(middle, b.fdiv(b.fsub(ax, one), b.fadd(ax, one)), ax),
    )
    # pi/2 or pi/4 in two parts: the low part joins the small terms before the last add
    half_pi, half_pi_low = _split(_PI / 2, bits, 2)
    quarter_pi, quarter_pi_low = _split(_PI / 4, bits, 2)
    base = _select_const(b, big, half_pi, _select_const(b, middle, quarter_pi, _const(t, 0.0)))
    low = _select_const(
        b, big, half_pi_low, _select_const(b, middle, quarter_pi_low, _const(t, 0.0))
    )
    z = b.fmul(reduced, reduced)
    if bits == 64:
        ratio = b.fdiv(b.fmul(z, _horner(b, z, _ATAN64_P)), _horner(b, z, _ATAN64_Q))
        small = _fma(b, reduced, ratio, reduced)
    else:
        small = _fma(b, b.fmul(_horner(b, z, _ATAN32_P), z), reduced, reduced)
    return _intrinsic(b, "copysign", b.fadd(base, b.fadd(small, low)), x)


# --- erf --------------------------------------------------------------------------------

# tools/fit_erf.py: Chebyshev interpolants (in mpmath) in the power basis of u in [-1, 1].
# erf(x) / x in z = x^2 for |x| < 1 (error 1.6e-17 relative once rounded):
_ERF_SMALL = [1.1283791670955126, -0.3761263890318375, 0.11283791670954879,
              -0.026866170645076792, 0.0052239776248180145, -0.000854832698083379,
              0.0001205533111164271, -1.4925595266831182e-05, 1.6461000484121368e-06,
              -1.6350312701054695e-07, 1.4659775274047436e-08, -1.1372848856791674e-09,
              5.957176147748911e-11]  # fmt: skip
# log(erfc(x) / t) + x^2, t = 2 / (2 + x), in u = (t - 11/24) 24/5 for 1 <= x <= 6 (6.8e-17):
_ERF_LARGE = [-0.7274922853522042, 0.27658358936131217, 0.01017469538025659,
              -0.0031116996674261433, -0.0004014712041727664, 9.560006382428187e-05,
              1.6041266414869052e-05, -4.5271525518308936e-06, -6.019926591015618e-07,
              2.564387714632306e-07, 1.4524899380622514e-08, -1.460916829514613e-08,
              5.088258252135452e-10, 7.306410702720627e-10, -1.0252273086998347e-10,
              -2.6581488877884306e-11, 6.8713164030296784e-12, 3.856922660244085e-13]  # fmt: skip


def _erf64(b, x):
    """x S(x^2) for |x| < 1, else +-(1 - t exp(-x^2 + L(t))), t = 2 / (2 + |x|), |x| <= 6."""
    t = x.type
    one, two = _const(t, 1.0), _const(t, 2.0)
    z = b.fmul(x, x)
    # x c0 + x z S1(z), rounded once by the FMA: c0 = 2/sqrt(pi) carries most of it
    small = _fma(b, x, _const(t, _ERF_SMALL[0]), b.fmul(x, b.fmul(z, _poly(b, z, _ERF_SMALL[1:]))))
    ax = _select_const(b, _gt(b, _intrinsic(b, "fabs", x), _const(t, 6.0)), 6.0,
                       _intrinsic(b, "fabs", x))  # fmt: skip
    ratio = b.fdiv(two, b.fadd(two, ax))
    u = _fma(b, ratio, _const(t, 24 / 5), _const(t, -11 / 5))
    tail = b.fmul(ratio, exp(b, b.fsub(_poly(b, u, _ERF_LARGE), b.fmul(ax, ax))))
    large = _intrinsic(b, "copysign", b.fsub(one, tail), x)
    return _keep_zero(b, x, b.select(_lt(b, z, one), small, large))


# float32 erf (Norbert Juffa's minimax approximations, 0.96 ulp measured with a correctly
# rounded exp): x + x P(x^2) below |x| = 0.927734375, else 1 - exp(Q(|x|)) with Q(t) =
# -t + t (c0 + t (c1 + ...)), two halves of Q's high terms in parallel.
_ERF32_SMALL = [1.28379166e-1, -3.76125336e-1, 1.12819925e-1, -2.67681349e-2, 4.99119423e-3,
                -5.96761703e-4]  # fmt: skip
_ERF32_LARGE = [-1.28717512e-1, -6.34846687e-1, -1.06777877e-1]
_ERF32_HIGH = ((-1.72853470e-5, 3.83197126e-4), (-3.88396438e-3, 2.42546219e-2))


def _erf32(b, x):
    t = x.type
    a = _intrinsic(b, "fabs", x)
    s = b.fmul(x, x)
    small = _fma(b, _horner(b, s, _ERF32_SMALL), x, x)
    (r1, r0), (u1, u0) = _ERF32_HIGH
    r = _fma(b, _const(t, r1), a, _const(t, r0))
    u = _fma(b, _const(t, u1), a, _const(t, u0))
    q = _fma(b, r, s, u)
    for c in reversed(_ERF32_LARGE):
        q = _fma(b, q, a, _const(t, c))
    q = _fma(b, q, a, b.fneg(a))
    large = _intrinsic(b, "copysign", b.fsub(_const(t, 1.0), exp(b, q)), x)
    return b.select(_gt(b, a, _const(t, 0.927734375)), large, small)


def erf(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """The error function: float64 by _erf64, float32 in float32 (_erf32, 8 lanes a vector
    where float64 would give 4: 12x faster than rounding the float64 routine)."""
    if _bits(x.type) == 64:
        return _erf64(b, x)
    return _erf32(b, x)


# --- remainder, floor_divide ------------------------------------------------------------


def _fmod64(b, x, y):
    """C's fmod(x, y) exactly, for |x / y| < 2^52; NaN past that (see the docstring).

    n = trunc(x / y) is within one of the true quotient there, and fma(-n, y, x) is
    exact once n is right: one wrong way shows as a remainder of the wrong sign, the
    other as one at least |y| in size, and both are corrected in one step."""
    t = x.type
    zero = _const(t, 0.0)
    n = _intrinsic(b, "trunc", b.fdiv(x, y))
    r = _fma(b, b.fneg(n), y, x)
    away = _intrinsic(b, "copysign", _const(t, 1.0), b.fdiv(x, y))  # the quotient's sign
    wrong_sign = b.and_(b.fcmp_ordered("!=", r, zero), b.xor(_lt(b, r, zero), _lt(b, x, zero)))
    too_large = b.fcmp_ordered(">=", _intrinsic(b, "fabs", r), _intrinsic(b, "fabs", y))
    step = b.select(wrong_sign, b.fneg(away), b.select(too_large, away, zero))
    r = _fma(b, b.fneg(b.fadd(n, step)), y, x)
    r = _intrinsic(b, "copysign", r, x)  # a remainder has x's sign, a zero one too
    r = b.select(_eq(b, _intrinsic(b, "fabs", y), _const(t, math.inf)), x, r)  # |x| < inf
    beyond = b.fcmp_unordered(">=", _intrinsic(b, "fabs", n), _const(t, 2.0**52))
    return _select_const(b, b.or_(beyond, _eq(b, y, zero)), math.nan, r), n


def _divmod(b, x, y):
    """NumPy's npy_divmod for floats: (floor(x / y), x mod y with the sign of y)."""
    t = x.type
    zero, one = _const(t, 0.0), _const(t, 1.0)
    if _bits(t) == 64:
        mod, n = _fmod64(b, x, y)
    else:
        wide = _like(t, ir.DoubleType())
        mod, n = _fmod64(b, b.fpext(x, wide), b.fpext(y, wide))
        mod = b.fptrunc(mod, t)  # exact
    # past |x / y| = 2^52 (x finite) x / y is an integer float: the floor NumPy gives too
    huge = b.fcmp_ordered(">=", _intrinsic(b, "fabs", n), _const(n.type, 2.0**52))
    huge = b.and_(huge, b.fcmp_ordered("!=", _intrinsic(b, "fabs", x), _const(t, math.inf)))
    div = b.fdiv(b.fsub(x, mod), y)
    adjust = b.and_(b.fcmp_ordered("!=", mod, zero), b.xor(_lt(b, y, zero), _lt(b, mod, zero)))
    mod = b.select(adjust, b.fadd(mod, y), mod)
    div = b.select(adjust, b.fsub(div, one), div)
    mod = b.select(_eq(b, mod, zero), _intrinsic(b, "copysign", zero, y), mod)
    floor = _intrinsic(b, "floor", div)
    floor = b.select(_gt(b, b.fsub(div, floor), _const(t, 0.5)), b.fadd(floor, one), floor)
    floor = b.select(_eq(b, div, zero), _intrinsic(b, "copysign", zero, b.fdiv(x, y)), floor)
    # y == 0: floor_divide is x / y, remainder fmod(x, 0) = NaN (as NumPy)
    return b.select(b.or_(huge, _eq(b, y, zero)), b.fdiv(x, y), floor), mod


def _int_divmod(b, x, y):
    """Python's floor division and modulo of integers; 0 and 0 for y == 0 (NumPy's result);
    INT_MIN // -1 wraps, as in NumPy. Never divides by 0 or -1 (x86 traps on both)."""
    t = x.type
    zero, one = _const(t, 0), _const(t, 1)
    by_zero = b.icmp_signed("==", y, zero)
    by_minus_one = b.icmp_signed("==", y, b.neg(one))
    safe = b.select(b.or_(by_zero, by_minus_one), one, y)
    quotient, rest = b.sdiv(x, safe), b.srem(x, safe)
    adjust = b.and_(b.icmp_signed("!=", rest, zero), b.icmp_signed("<", b.xor(rest, y), zero))
    quotient = b.select(adjust, b.sub(quotient, one), quotient)
    rest = b.select(adjust, b.add(rest, y), rest)
    quotient = b.select(by_minus_one, b.neg(x), b.select(by_zero, zero, quotient))
    return quotient, b.select(b.or_(by_zero, by_minus_one), zero, rest)


def _is_int(t: ir.Type) -> bool:
    return isinstance(t.element if isinstance(t, ir.VectorType) else t, ir.IntType)


def remainder(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """NumPy's x % y: the sign of y (floats: exact, for |x / y| < 2^52; integers too)."""
    return (_int_divmod if _is_int(x.type) else _divmod)(b, x, y)[1]


def floor_divide(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """NumPy's x // y (floats: floor((x - x % y) / y) corrected as NumPy does; integers)."""
    return (_int_divmod if _is_int(x.type) else _divmod)(b, x, y)[0]


# Routines that are one instruction, not a polynomial: loops calling them need no extra
# interleaving (codegen/llvm.py counts the others).
SINGLE_INSTRUCTION = frozenset({"sqrt"})


# --- pow --------------------------------------------------------------------------------


def _log_double_double(b, x):
    """log(x) = hi + lo to ~2^-64 relative, for finite double x > 0."""
    t = x.type
    two = _const(t, 2.0)
    f, k = _log_split(b, x)
    # s = f / (2 + f) as a double-double quotient.
    d = b.fadd(two, f)
    d_low = b.fsub(f, b.fsub(d, two))
    s = b.fdiv(f, d)
    s_low = b.fdiv(b.fsub(_fma(b, b.fneg(s), d, f), b.fmul(s, d_low)), d)
    # z = s^2, then u = 2/3 + z T(z) and v = s^3 u, all as double-doubles.
    z, z_low = _two_prod(b, s, s)
    z_low = _fma(b, b.fadd(s, s), s_low, z_low)
    tail = _poly(b, z, _ATANH_TAIL)
    zt, zt_low = _two_prod(b, z, tail)
    zt_low = _fma(b, z_low, tail, zt_low)
    u, u_low = _two_sum(b, _const(t, _TWO_THIRDS[0]), zt)
    u_low = b.fadd(u_low, b.fadd(_const(t, _TWO_THIRDS[1]), zt_low))
    s3, s3_low = _two_prod(b, s, z)
    s3_low = _fma(b, s, z_low, _fma(b, s_low, z, s3_low))
    v, v_low = _two_prod(b, s3, u)
    v_low = _fma(b, s3, u_low, _fma(b, s3_low, u, v_low))
    # k ln2 + 2s + v, summed with error terms.
    ln2_hi, ln2_lo = _C[64]["ln2"]
    head, e1 = _two_sum(b, b.fmul(k, _const(t, ln2_hi)), b.fadd(s, s))
    head, e2 = _two_sum(b, head, v)
    low = b.fadd(b.fadd(e1, e2), b.fadd(v_low, b.fadd(s_low, s_low)))
    low = _fma(b, k, _const(t, ln2_lo), low)
    hi = b.fadd(head, low)
    return hi, b.fsub(low, b.fsub(hi, head))


def _exp_double_double(b, hi, lo):
    """e^(hi + lo) for |lo| <= ulp(hi)."""
    low, high = _C[64]["exp_range"]
    out_of_range = b.or_(_gt(b, hi, _const(hi.type, high)), _lt(b, hi, _const(hi.type, low)))
    lo = _select_const(b, out_of_range, 0.0, lo)
    r, r_low, k = _exp_reduce(b, _clamp(b, hi, low, high), lo)
    return _ldexp(b, _exp_kernel(b, r, r_low), k)


def _is_integer(b, y):
    return _eq(b, _intrinsic(b, "floor", y), y)


def _pow64(b, x, y):
    t = x.type
    zero, one, inf = _const(t, 0.0), _const(t, 1.0), _const(t, math.inf)
    ax = _intrinsic(b, "fabs", x)
    ay = _intrinsic(b, "fabs", y)
    log_hi, log_lo = _log_double_double(b, ax)
    product, product_low = _two_prod(b, y, log_hi)
    product_low = _fma(b, y, log_lo, product_low)
    magnitude = _exp_double_double(b, product, product_low)
    # x = +-0, x = +-inf or y = +-inf: 0 or inf, depending on which side of 1 |x| is.
    edge = b.or_(b.or_(_eq(b, ax, zero), _eq(b, ax, inf)), _eq(b, ay, inf))
    grows = b.xor(_gt(b, ax, one), _lt(b, y, zero))
    magnitude = b.select(edge, b.select(grows, inf, zero), magnitude)
    # Negative base: odd integer y flips the sign; a finite base needs an integer y.
    y_integer = _is_integer(b, y)
    y_odd = b.and_(y_integer, b.not_(_is_integer(b, b.fmul(y, _const(t, 0.5)))))
    negative = b.icmp_signed("<", _int_bits(b, x), _iconst(t, 0))
    result = b.select(b.and_(negative, y_odd), b.fneg(magnitude), magnitude)
    finite_negative = b.and_(_lt(b, x, zero), b.fcmp_ordered("!=", x, b.fneg(inf)))
    result = _select_const(b, b.and_(finite_negative, b.not_(y_integer)), math.nan, result)
    result = b.select(b.or_(_is_nan(b, x), _is_nan(b, y)), b.fadd(x, y), result)
    # pow(x, +-0) = pow(1, y) = pow(-1, +-inf) = 1, NaN or not.
    unit = b.or_(_eq(b, y, zero), _eq(b, x, one))
    unit = b.or_(unit, b.and_(_eq(b, x, _const(t, -1.0)), _eq(b, ay, inf)))
    return b.select(unit, one, result)


def pow(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:  # noqa: A001
    """x^y with C99/NumPy special cases; float32 is computed in float64 and rounded."""
    if _bits(x.type) == 64:
        return _pow64(b, x, y)
    wide = _like(x.type, ir.DoubleType())
    result = _pow64(b, b.fpext(x, wide), b.fpext(y, wide))
    return b.fptrunc(result, x.type)


def loop_module(name: str, t: ir.Type, arity: int, emit) -> ir.Module:
    """A module with `void kernel(ptr in0, ..., ptr out, i64 n)`: out[i] = emit(b, in0[i], ...).

    The harness the math tests and benchmarks (tests/test_mathlib.py, bench/mathlib_micro.py)
    compile to check and time a function inside a vectorizable loop.
    """
    i64 = ir.IntType(64)
    module = ir.Module(name=name)
    signature = ir.FunctionType(ir.VoidType(), [ir.PointerType()] * (arity + 1) + [i64])
    fn = ir.Function(module, signature, name="kernel")
    for arg in fn.args[:-1]:
        arg.add_attribute("noalias")
    *inputs, out, n = fn.args
    entry, body, done = (fn.append_basic_block(s) for s in ("entry", "body", "done"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(i64, 0)), body, done)
    b.position_at_end(body)
    i = b.phi(i64)
    args = [b.load(b.gep(p, [i], inbounds=True, source_etype=t), typ=t) for p in inputs]
    b.store(emit(b, *args), b.gep(out, [i], inbounds=True, source_etype=t))
    following = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(following, b.block)  # sin and cos end in a block of their own
    b.cbranch(b.icmp_signed("<", following, n), body, done)
    b.position_at_end(done)
    b.ret_void()
    return module
