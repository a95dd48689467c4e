# Over 500 lines on purpose: the checks of every mathlib routine share one JIT harness.
"""graphc.codegen.mathlib against NumPy: loops `out[i] = f(in[i])` JIT-compiled at O3."""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest
from llvmlite import binding as llvm
from llvmlite import ir
from targets import assert_vectorized_at_target_width

from graphc.codegen import mathlib, target

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

DTYPES = {np.float64: ir.DoubleType(), np.float32: ir.FloatType()}
UNARY = ["exp", "expm1", "log", "log1p", "tanh", "sigmoid", "sin", "cos", "atan", "sqrt"]
TOLERANCE = {np.float64: 1e-13, np.float32: 1e-6}


def _sigmoid(x):
    """1 / (1 + e^-x), written so NumPy keeps the tiny values for very negative x."""
    e = np.exp(-np.abs(x))
    return np.where(x < 0, e / (1 + e), 1 / (1 + e))


REFERENCE = {name: getattr(np, name) for name in UNARY + ["pow"] if name != "sigmoid"}
REFERENCE["sigmoid"] = _sigmoid


# --- a tiny JIT harness (independent of graphc.runtime) ---------------------------------


def _target_machine():
    return target.host().machine(opt=3)  # the host's CPU, or $GRAPHC_CPU


def _loop_module(name: str, dtype, arity: int) -> ir.Module:
    """void kernel(ptr in0, [ptr in1,] ptr out, i64 n): out[i] = f(in0[i], ...)."""
    module = mathlib.loop_module(
        f"{name}_{dtype.__name__}", DTYPES[dtype], arity, getattr(mathlib, name)
    )
    module.triple = llvm.get_process_triple()
    return module


def _optimized(module: ir.Module, machine):
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    builder = llvm.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(parsed, builder)
    mathlib.link_trig(parsed, builder)
    return parsed


@functools.cache
def _compiled(name: str, dtype, arity: int = 1):
    """A Python callable f(*arrays) -> array running the JIT-compiled loop."""
    machine = _target_machine()
    parsed = _optimized(_loop_module(name, dtype, arity), machine)
    engine = llvm.create_mcjit_compiler(parsed, machine)
    engine.finalize_object()
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (arity + 1), ctypes.c_int64)
    kernel = signature(engine.get_function_address("kernel"))

    def call(*arrays):
        arrays = [np.ascontiguousarray(a, dtype=dtype) for a in np.broadcast_arrays(*arrays)]
        out = np.empty_like(arrays[0])
        kernel(*[a.ctypes.data for a in arrays], out.ctypes.data, out.size)
        return out

    call.engine = engine  # keep the engine (and the code) alive with the callable
    return call


def _assembly(name: str, dtype) -> str:
    machine = _target_machine()
    return machine.emit_assembly(_optimized(_loop_module(name, dtype, 1), machine))


# --- comparisons ------------------------------------------------------------------------


def _assert_close(actual, expected, dtype, x):
    """Relative tolerance; values below the normal range need only be within a few of its ulp."""
    info = np.finfo(dtype)
    tolerance = TOLERANCE[dtype]
    both_nan = np.isnan(actual) & np.isnan(expected)
    same = (actual == expected) | both_nan
    with np.errstate(invalid="ignore"):
        error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    allowed = tolerance * np.abs(expected.astype(np.float64)) + 4 * float(info.smallest_subnormal)
    good = same | (np.isfinite(expected) & (error <= allowed))
    if not good.all():
        bad = np.flatnonzero(~good)[:5]
        raise AssertionError(
            f"{good.size - good.sum()} mismatches, e.g. x={x[bad]!r} got {actual[bad]!r} "
            f"want {expected[bad]!r}"
        )


def _domain(name: str, dtype, rng) -> np.ndarray:
    """Dense grid over the interesting range plus random values over many magnitudes."""
    f32 = dtype == np.float32
    grids = {
        "exp": (-760, 720) if not f32 else (-110, 95),
        "expm1": (-50, 720) if not f32 else (-25, 95),
        "tanh": (-25, 25),
        "sigmoid": (-800, 800) if not f32 else (-110, 110),
        "sin": (-100, 100),
        "cos": (-100, 100),
    }
    low, high = grids.get(name, (0, 10))
    grid = np.linspace(low, high, 20001)
    magnitudes = 10.0 ** rng.uniform(-40 if f32 else -310, 38 if f32 else 308, 20000)
    signs = rng.choice([-1.0, 1.0], magnitudes.size)
    values = np.concatenate([grid, magnitudes * signs, rng.uniform(-2, 2, 20000)])
    if name in ("log", "sqrt"):
        values = np.abs(values)
    if name == "log1p":
        values = np.concatenate(
            [values, rng.uniform(-1, 0, 20000), -(10.0 ** -rng.uniform(0, 30, 1000))]
        )
        values = values[values > -1]
    if name in ("sin", "cos"):
        limit = 1e5 if not f32 else 1e4
        values = np.concatenate([values[np.abs(values) < limit], rng.uniform(-limit, limit, 20000)])
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", UNARY)
def test_unary_matches_numpy(name, dtype):
    x = _domain(name, dtype, np.random.default_rng(0))
    with np.errstate(all="ignore"):
        expected = REFERENCE[name](x)
    actual = _compiled(name, dtype)(x)
    assert actual.dtype == dtype
    if name in ("sin", "cos"):
        # Near the zeros compare absolutely, relative to |x| (the reduction's scale).
        floor = TOLERANCE[dtype] * 1e-2 * np.maximum(np.abs(x.astype(np.float64)), 1)
        near_zero = np.abs(expected.astype(np.float64)) < floor
        assert np.all(
            np.abs(actual[near_zero].astype(np.float64) - expected[near_zero]) <= floor[near_zero]
        )
        x, actual, expected = x[~near_zero], actual[~near_zero], expected[~near_zero]
    _assert_close(actual, expected, dtype, x)


def _documented_ulp(name: str, dtype) -> float:
    """The max error in ulp that mathlib's docstring table states for `name` and `dtype`."""
    for line in mathlib.__doc__.splitlines():
        words = line.split()
        if line.startswith("    ") and words[:1] == [name]:
            return float(words[1 if dtype == np.float64 else 2])
    raise LookupError(name)


def _table_arguments(name: str, dtype, rng, size: int = 200_000) -> list[np.ndarray]:
    """Arguments (pow: bases and exponents) over the domain of the docstring table's row."""
    f32 = dtype == np.float32
    tiny = rng.choice([-1.0, 1.0], size) * 10.0 ** rng.uniform(-8, 0, size)
    if name in ("exp", "expm1", "tanh", "sigmoid"):  # the whole range, [-2, 2], tiny
        low, high = {
            "exp": (-103.9, 88.7) if f32 else (-745.1, 709.78),
            "expm1": (-20, 88.7) if f32 else (-40, 709.78),
            "tanh": (-10, 10) if f32 else (-20, 20),
            "sigmoid": (-103, 20) if f32 else (-745, 40),
        }[name]
        return [np.concatenate([rng.uniform(low, high, size), rng.uniform(-2, 2, size), tiny])]
    if name in ("sin", "cos"):  # |x| < 1e5 (f32: 1e4), [-4, 4], tiny
        limit = 1e4 if f32 else 1e5
        return [np.concatenate([rng.uniform(-limit, limit, size), rng.uniform(-4, 4, size), tiny])]
    # every binade of the positive floats, subnormals included, and [0.5, 2]
    top = 128 if f32 else 1024
    binades = 2.0 ** rng.uniform(-149 if f32 else -1074, top, size)
    positive = np.concatenate([binades, rng.uniform(0.5, 2, size)]).astype(dtype)
    positive = positive[(positive > 0) & np.isfinite(positive)]
    if name in ("log", "sqrt"):
        return [positive]
    if name == "atan":  # every binade of both signs, [-4, 4] (the reduction's thresholds), tiny
        signs = rng.choice([-1.0, 1.0], positive.size)
        return [np.concatenate([signs * positive, rng.uniform(-4, 4, size), tiny])]
    if name == "log1p":  # tiny of both signs, (-1, 1), large
        large = 2.0 ** rng.uniform(0, top - 1, size)
        return [np.concatenate([tiny, rng.uniform(-1, 1, size), large])]
    # pow: y log x uniform in [-700, 700] (f32: results from subnormal to near overflow)
    base = positive[positive != 1]
    low, high = (-100, 88) if f32 else (-700, 700)
    return [base, rng.uniform(low, high, base.size) / np.log(base.astype(np.float64))]


WIDE_LONG_DOUBLE = np.finfo(np.longdouble).nmant >= 63  # x87 extended: Linux, macOS on x86-64


def _ulp_errors(name: str, dtype, args: list[np.ndarray], actual: np.ndarray) -> np.ndarray:
    """|actual - f(args)| in ulp of the result, f evaluated in float64 for float32 and in x87
    long double (64-bit mantissa; within 5e-4 ulp of mpmath, see the test below) for float64."""
    if dtype == np.float64 and not WIDE_LONG_DOUBLE:
        errors = np.zeros(actual.size)  # mpmath is slow: measure 20000 of them
        every = slice(None, None, -(-actual.size // 20_000))
        errors[every] = _exact_ulp_errors(name, [a[every] for a in args], actual[every])
        return errors
    wide = np.float64 if dtype == np.float32 else np.longdouble
    expected = REFERENCE[name](*[a.astype(wide) for a in args])
    return np.abs(actual - expected) / np.spacing(np.abs(expected).astype(dtype))


def _exact_ulp_errors(name: str, args: list[np.ndarray], actual: np.ndarray) -> np.ndarray:
    """|actual - f(args)| in ulp of the float64 result, f evaluated by mpmath in 113 bits."""
    mpmath = pytest.importorskip(
        "mpmath", reason="no reference wider than float64: long double is float64 here"
    )
    other_names = {"pow": mpmath.power, "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x))}
    function = other_names.get(name) or getattr(mpmath, name)
    errors = np.empty(actual.size)
    with mpmath.workprec(113):
        for i, got in enumerate(actual.tolist()):
            exact = function(*[mpmath.mpf(a[i].item()) for a in args])
            errors[i] = abs(got - exact) / np.spacing(abs(float(exact)))  # mpf: no underflow
    return errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", [*UNARY, "pow"])
def test_max_ulp_error_within_documented_bound(name, dtype):
    """Errors in ulp against a wider reference over the domain of each row of the docstring's
    table, at most what the table says."""
    args = [a.astype(dtype) for a in _table_arguments(name, dtype, np.random.default_rng(2))]
    actual = _compiled(name, dtype, len(args))(*args)
    ulp = _ulp_errors(name, dtype, args, actual)
    worst = np.argmax(ulp)
    at = ", ".join(repr(a[worst]) for a in args)
    assert ulp[worst] <= _documented_ulp(name, dtype), f"{name}({at}): {ulp[worst]:.3f} ulp"


@pytest.mark.parametrize("name", [*UNARY, "pow"])
def test_the_long_double_reference_agrees_with_mpmath(name):
    """The float64 rows rest on long double: its errors are those mpmath measures, to 1e-3 ulp."""
    if not WIDE_LONG_DOUBLE:
        pytest.skip("long double is float64 here: the ulp test uses mpmath itself")
    args = [a[::400] for a in _table_arguments(name, np.float64, np.random.default_rng(3))]
    actual = _compiled(name, np.float64, len(args))(*args)
    by_long_double = _ulp_errors(name, np.float64, args, actual)
    np.testing.assert_allclose(by_long_double, _exact_ulp_errors(name, args, actual), atol=1e-3)


LIMIT = {np.float64: 2.0**50, np.float32: 2.0**22}  # where the Payne-Hanek branch starts


def _near_half_pi_multiples(dtype, rng, count: int) -> np.ndarray:
    """The floats nearest to k pi/2 (zeros of sin or cos) for k of every size past LIMIT, and
    their neighbours, from mpmath's pi/2 at 1300 bits."""
    mpmath = pytest.importorskip("mpmath", reason="the reference values come from mpmath")
    top = 127 if dtype == np.float32 else 1023
    values = []
    with mpmath.workprec(1300):
        for exponent in rng.integers(int(np.log2(LIMIT[dtype])), top, count):
            k = int(rng.integers(2**52, 2**53)) << max(int(exponent) - 52, 0)
            values.append(float(mpmath.mpf(k) * mpmath.pi / 2))
    values = np.array(values).astype(dtype)
    values = values[np.isfinite(values)]
    return np.concatenate(
        [values, np.nextafter(values, dtype(0)), np.nextafter(values, dtype(np.inf))]
    )


def _whole_range(dtype, rng, size: int = 6000) -> np.ndarray:
    """Arguments past LIMIT: every binade up to the largest float, the floats nearest to
    multiples of pi/2 there, the limit and its neighbours, the largest float, 1e22 and 1e300,
    and (f64) 6381956970095103 2^797, the float closest to a multiple of pi/2 (2^-60.9)."""
    info, limit = np.finfo(dtype), dtype(LIMIT[dtype])
    binades = 2.0 ** rng.uniform(np.log2(LIMIT[dtype]), np.log2(float(info.max)), size)
    named = [limit, np.nextafter(limit, dtype(np.inf)), 2 * limit, info.max, 1e22, 1e30]
    if dtype == np.float64:
        named += [1e300, 6381956970095103 * 2.0**797]
    x = np.concatenate([binades.astype(dtype), _near_half_pi_multiples(dtype, rng, 300), named])
    x = x.astype(dtype)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos_over_the_whole_range(name, dtype):
    """Past |x| = 2^50 (f32: 2^22) the Payne-Hanek branch: errors against mpmath within the
    table's bound, which is the kernels' (the reduction is good to ~2^-88), up to the
    largest float, next to the zeros included."""
    x = _whole_range(dtype, np.random.default_rng(4))
    actual = _compiled(name, dtype)(x)
    mpmath = pytest.importorskip("mpmath", reason="the reference values come from mpmath")
    ulp = np.empty(x.size)
    with mpmath.workprec(113):  # mpmath reduces with as many more bits as the argument needs
        for i, (value, got) in enumerate(zip(x.tolist(), actual.tolist(), strict=True)):
            exact = getattr(mpmath, name)(mpmath.mpf(value))
            ulp[i] = abs(got - exact) / np.spacing(dtype(abs(float(exact))))
    worst = np.argmax(ulp)
    assert ulp[worst] <= _documented_ulp(name, dtype), f"{name}({x[worst]!r}): {ulp[worst]:.3f} ulp"


def test_sin_of_large_arguments_known_values():
    """Published values: sin(1e22) (Ng, "Argument reduction for huge arguments"), and cos at
    the float closest to a multiple of pi/2 (an odd one), -4.69e-19 (mpmath), correctly
    rounded. NaN for +-inf and NaN."""
    assert _compiled("sin", np.float64)(np.array([1e22]))[0] == -0.8522008497671888
    closest = np.array([6381956970095103 * 2.0**797])
    mpmath = pytest.importorskip("mpmath", reason="the reference values come from mpmath")
    with mpmath.workprec(1300):
        want = float(mpmath.cos(mpmath.mpf(float(closest[0]))))
    assert 1e-19 < abs(want) < 1e-18
    assert _compiled("cos", np.float64)(closest)[0] == want
    assert np.isnan(
        _compiled("cos", np.float32)(np.array([np.inf, -np.inf, np.nan], np.float32))
    ).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_large_arguments_compiled_aot_and_interpreted_agree(dtype, tmp_path):
    """gc.sin / gc.cos on large arguments: the JIT and an AOT shared library (called through
    ctypes) bit for bit, and within 16 ulp of the interpreter: NumPy's own cos is 8 ulp off
    at 6381956970095103 2^797 (mpmath; graphc's is correctly rounded there, see above)."""
    import graphc as gc

    x = _whole_range(np.dtype(dtype).type, np.random.default_rng(5), size=500)
    x = x[: 2 * (x.size // 2)]
    t = gc.input("x", x.shape, dtype)
    outputs = [gc.sin(t), gc.cos(t), gc.sin(t) * gc.cos(t)]
    executable = gc.compile([t], outputs, name="trig_large")
    interpreted = gc.evaluate(outputs, {t: x})
    paths = gc.aot.export(executable, tmp_path)
    library = ctypes.CDLL(str(paths.shared))
    library.trig_large_mem_size.restype = ctypes.c_size_t
    memory = np.zeros(library.trig_large_mem_size() + 64, np.uint8)
    base = memory.ctypes.data + (-memory.ctypes.data % 64)
    library.trig_large_init(ctypes.c_void_p(base))
    aot = [np.empty_like(x) for _ in outputs]
    library.trig_large_run(ctypes.c_void_p(base), ctypes.c_void_p(x.ctypes.data),
                           *[ctypes.c_void_p(a.ctypes.data) for a in aot])  # fmt: skip
    for jit, ahead, want in zip(executable(x), aot, interpreted, strict=True):
        np.testing.assert_array_equal(jit, ahead)
        ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
        error = np.abs(jit.astype(np.float64) - want.astype(np.float64)) / ulp
        assert error.max() <= 16, f"{error.max():.2f} ulp at x = {x[np.argmax(error)]!r}"


def test_trig_needs_no_libm_on_a_freestanding_target(tmp_path):
    """A Cortex-M4F export of sin/cos (float32 and float64): Payne-Hanek and all, only the
    soft-float and AEABI helpers of libgcc, as tests/test_cross.py asks of every object."""
    import re

    import graphc as gc
    from graphc.runtime import aot

    helpers = re.compile(r"__aeabi_\w+|__\w+[sd]f[23]")
    for dtype in ("float32", "float64"):
        t = gc.input("x", (64,), dtype)
        executable = gc.compile([t], [gc.sin(t) + gc.cos(t)], name=f"trig_{dtype}")
        paths = gc.aot.export(executable, tmp_path / dtype, target="thumbv7em-none-eabihf")
        symbols = aot.external_symbols(paths.object.read_bytes())
        assert all(s in ("memcpy", "memset") or helpers.fullmatch(s) for s in symbols), symbols


def test_sin_cos_near_multiples_of_half_pi():
    """Arguments within a few ulp of k pi/2: absolute error at most 1e-15 |x| style."""
    k = np.arange(1, 60000, dtype=np.float64)
    x = np.concatenate(
        [np.nextafter(k * np.pi / 2, s) for s in (-np.inf, np.inf)] + [k * np.pi / 2]
    )
    for name in ("sin", "cos"):
        actual = _compiled(name, np.float64)(x)
        expected = REFERENCE[name](x)
        error = np.abs(actual - expected)
        assert np.all(error <= 1e-15 * np.maximum(np.abs(expected), 1e-15 * np.abs(x)) + 1e-30)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_pow_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    base = np.concatenate([10.0 ** rng.uniform(-300, 300, 20000), rng.uniform(0, 3, 20000)])
    exponent = np.concatenate([rng.uniform(-1, 1, 20000), rng.uniform(-300, 300, 20000)])
    if dtype == np.float32:
        base = np.concatenate([10.0 ** rng.uniform(-38, 38, 20000), rng.uniform(0, 3, 20000)])
        exponent = np.concatenate([rng.uniform(-1, 1, 20000), rng.uniform(-40, 40, 20000)])
    integer_powers = np.concatenate([rng.integers(-60, 60, 5000), rng.integers(-3, 3, 5000)])
    negative_base = -rng.uniform(0.1, 3, 10000)
    base = np.concatenate([base, negative_base, negative_base]).astype(dtype)
    exponent = np.concatenate([exponent, integer_powers, rng.uniform(-5, 5, 10000)]).astype(dtype)
    with np.errstate(all="ignore"):
        expected = np.power(base, exponent)
    actual = _compiled("pow", dtype, 2)(base, exponent)
    _assert_close(actual, expected, dtype, base)


# -nan: a NaN with its sign bit set (sigmoid selects its numerator by that bit)
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0,
           -3.0, 1e-310, -1e-310, 1e-30, 710.0, -710.0, 800.0, -800.0, 89.0, -89.0, 1e300,
           -1e300]  # fmt: skip


def _assert_identical(actual, expected, x):
    same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
    same |= np.isnan(actual) & np.isnan(expected)
    assert same.all(), f"x={x[~same]!r} got {actual[~same]!r} want {expected[~same]!r}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", UNARY)
def test_special_values_exact(name, dtype):
    with np.errstate(all="ignore"):
        x = np.array(SPECIAL, dtype=dtype)  # 1e300 becomes inf in float32
        expected = REFERENCE[name](x)
    actual = _compiled(name, dtype)(x)
    exact = (
        ~np.isfinite(expected)
        | (expected == 0)
        | ~np.isfinite(x)
        | (x == 0)
        | (np.abs(expected) == 1)
    )
    _assert_identical(actual[exact], expected[exact], x[exact])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_pow_special_values_exact(dtype):
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 2.5, -2.5,
                       np.inf, -np.inf, np.nan, 1e-310], dtype=dtype)  # fmt: skip
    base, exponent = (a.ravel() for a in np.meshgrid(values, values))
    with np.errstate(all="ignore"):
        expected = np.power(base, exponent)
    actual = _compiled("pow", dtype, 2)(base, exponent)
    exact = ~np.isfinite(expected) | (expected == 0) | (np.abs(expected) == 1)
    exact |= ~np.isfinite(base) | ~np.isfinite(exponent) | (base == 0) | (exponent == 0)
    same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
    same |= np.isnan(actual) & np.isnan(expected)
    bad = exact & ~same
    assert not bad.any(), (
        f"pow({base[bad]!r}, {exponent[bad]!r}) = {actual[bad]!r}, want {expected[bad]!r}"
    )
    _assert_close(actual[~exact], expected[~exact], dtype, base[~exact])


def test_named_special_cases():
    f64 = np.float64
    near_limits = np.array([709.78, 709.79, -745.2, -745.1])
    with np.errstate(over="ignore"):
        assert _compiled("exp", f64)(near_limits).tolist() == np.exp(near_limits).tolist()
    assert _compiled("exp", np.float32)(np.array([89.0, 88.7], np.float32))[0] == np.inf
    assert _compiled("sigmoid", f64)(np.array([-800.0, 800.0])).tolist() == [0.0, 1.0]
    assert _compiled("tanh", f64)(np.array([20.0, -20.0, 1e300])).tolist() == [1.0, -1.0, 1.0]
    # Subnormal exp results are within one ulp of the smallest subnormal.
    x = np.linspace(-745, -708, 1001)
    assert np.all(np.abs(_compiled("exp", f64)(x) - np.exp(x)) <= 5e-324 + 1e-15 * np.exp(x))


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "log"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_loop_vectorizes_without_calls(name, dtype):
    assembly = _assembly(name, dtype)
    body = assembly[assembly.index("kernel:") :]
    assert_vectorized_at_target_width(body)
    assert "call" not in body
    assert "cvtps2pd" not in body  # float32 stays in float32


@pytest.mark.parametrize("name", ["sin", "cos"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_sin_cos_loop_vectorizes_with_one_test_per_vector(name, dtype):
    """The loop is vector code at the target's width. Its only calls are to the Payne-Hanek
    routines: a whole vector's (behind one test of the vector: `icmp ne iN`), never a lane's
    in the vector loop (only in the scalar remainder: one call), and float32 stays in float32."""
    import re

    assembly = _assembly(name, dtype)
    body = assembly[assembly.index("kernel:") : assembly.index(".Lfunc_end0")]
    assert_vectorized_at_target_width(body)
    assert "cvtps2pd" not in body
    text = str(_optimized(_loop_module(name, dtype, 1), _target_machine()))
    kernel = text[text.index("define void @kernel") :]
    kernel = kernel[: kernel.index("\n}\n")]
    called = re.findall(r"call [^@]*@([\w.]+)\(", kernel)
    routine = f"graphc_{name}_large_f{32 if dtype == np.float32 else 64}"
    assert all(c.startswith("llvm.") or c.startswith(routine) for c in called), called
    assert called.count(routine) <= 1, called  # the scalar remainder's
    assert any(c.startswith(f"{routine}_v") for c in called), called  # a vector's
    assert re.search(r"bitcast <\d+ x i1> %\S+ to i\d+", kernel)  # the test of a vector


def test_tanh_saturates_where_it_rounds_to_one():
    """Around the last argument whose tanh rounds below 1 (NumPy's own SIMD tanh saturates a
    little earlier in float64, so the reference is computed in higher precision)."""
    for dtype, wide, edge in ((np.float64, np.longdouble, 19.06), (np.float32, np.float64, 9.01)):
        x = np.linspace(edge - 0.5, edge + 0.5, 4001).astype(dtype)
        expected = np.tanh(x.astype(wide)).astype(dtype)
        actual = _compiled("tanh", dtype)(x)
        assert np.all(actual <= 1)
        assert np.all(np.abs(actual - expected) <= np.spacing(dtype(1)))
        # Exactly 1 from just past the rounding boundary on (at it: within one ulp).
        saturated = x > x[expected == 1][0] + dtype(0.01)
        assert np.all(actual[saturated] == 1)


def test_tanh_float32_every_float_of_three_binades():
    """The f32 rational, checked on every float of [2^-7, 2^-6), [1, 2) and [4, 8) (the
    last is its worst binade) against float64: the error table's 5.6 ulp, < 3.4e-7
    relative."""
    starts = [np.float32(v).view(np.int32) for v in (2.0**-7, 1.0, 4.0)]
    x = np.concatenate([np.arange(s, s + 2**23, dtype=np.int32) for s in starts]).view(np.float32)
    actual = _compiled("tanh", np.float32)(np.concatenate([x, -x])).astype(np.float64)
    expected = np.tanh(np.concatenate([x, -x]).astype(np.float64))
    assert np.all(np.abs(actual - expected) <= 3.4e-7 * np.abs(expected))
