"""gc.random: counter-based random numbers inside the graph.

Threefry-2x32-20 against Random123's known answers (and JAX's implementation where it is
installed); the same bits in the interpreter, the JIT and AOT C; keys that advance with every
compiled step; distinct draws per call site; and statistical sanity with fixed seeds
(moments and Kolmogorov-Smirnov distances, with bounds several standard errors wide).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cprogram import GCC, build_and_run

import graphc as gc
from graphc.ir.ops import apply, threefry2x32

# Random123's kat_vectors for threefry2x32_20: (counter, key) -> output, words low first
KNOWN_ANSWERS = [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
    ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
]


def pack(words) -> int:
    """Two 32-bit words (low first) as the int64 holding them."""
    return int(np.array([words[1] << 32 | words[0]], np.uint64).view(np.int64)[0])


@pytest.mark.parametrize("counter, key, output", KNOWN_ANSWERS)
def test_threefry_gives_random123s_known_answers_interpreted_and_compiled(counter, key, output):
    assert threefry2x32(pack(key), pack(counter))[0] == np.uint64(output[1] << 32 | output[0])
    k, c = gc.input("k", (3,), "int64"), gc.input("c", (3,), "int64")
    bits = gc.Tensor(apply("threefry", k.node, c.node, dtype="int64"))
    step = gc.compile([k, c], bits)
    got = step(np.full(3, pack(key)), np.array([pack(counter), 0, 1]))
    assert got[0] == pack(output)
    feed = {k: np.full(3, pack(key)), c: [pack(counter), 0, 1]}
    np.testing.assert_array_equal(got, gc.evaluate(bits, feed))


def test_threefry_matches_jax():
    prng = pytest.importorskip("jax.extend.random", reason="JAX is a second oracle here")
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    for _ in range(5):
        key, counter = rng.integers(0, 2**32, 2), rng.integers(0, 2**32, 2)
        x0, x1 = np.asarray(
            prng.threefry_2x32(jnp.asarray(key, jnp.uint32), jnp.asarray(counter, jnp.uint32))
        )
        assert threefry2x32(pack(key), pack(counter))[0] == np.uint64(int(x1) << 32 | int(x0))


def draws(key):
    return [
        gc.random.uniform(key, (3, 1000)),
        gc.random.uniform(key, (2000,), "float64"),
        gc.random.normal(key, (1000,)),
        gc.random.normal(key, (4, 250), "float64"),
        gc.random.bernoulli(key, 0.25, (1000,)),
    ]


def test_interpreter_and_jit_draw_the_same_numbers_step_after_step():
    key = gc.random.key("rng", 1234)
    outputs = draws(key)
    step = gc.compile([], outputs)
    for call in range(3):
        assert list(key.value) == [1234, call]
        expected = gc.evaluate(outputs)  # what the next call draws
        got = step()
        for i in (0, 1, 4):  # uniform bits and booleans: bit for bit
            np.testing.assert_array_equal(got[i], expected[i])
        # normal: graphc's vectorized log/cos against NumPy's
        np.testing.assert_allclose(got[2], expected[2], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got[3], expected[3], rtol=1e-12, atol=1e-13)
    assert list(key.value) == [1234, 3]


def test_every_step_and_every_call_site_draws_new_numbers():
    key = gc.random.key("rng", 0)
    a, b = gc.random.uniform(key, (64,)), gc.random.uniform(key, (64,))
    step = gc.compile([], [a, b])
    first, second = step()
    again, _ = step()
    assert not np.any(first == second) and not np.any(first == again)
    # the same seed in another key gives the same stream; another seed another one
    for seed, same in ((0, True), (1, False)):
        other = gc.random.key(f"other{seed}", seed)
        value = gc.evaluate(gc.random.uniform(other, (64,)))
        assert np.array_equal(value, first) == same


def test_a_key_updated_by_the_program_is_not_advanced_twice():
    key = gc.random.key("rng", 5)
    u = gc.random.uniform(key, (4,))
    step = gc.compile([], u, updates={key: key + np.array([0, 10])})
    step()
    assert list(key.value) == [5, 10]


@pytest.mark.parametrize("dtype, resolution", [("float32", 2.0**-24), ("float64", 2.0**-52)])
def test_uniform_statistics(dtype, resolution):
    key = gc.random.key("rng", 7)
    n = 200_000
    u = gc.compile([], gc.random.uniform(key, (n,), dtype))()
    assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    assert np.all(np.mod(u.astype(np.float64), resolution) == 0)  # multiples of the step
    # mean 1/2 (sd 0.29/sqrt(n)), variance 1/12 (sd 0.075/sqrt(n)): 6 standard errors
    assert abs(u.mean() - 0.5) < 6 * 0.289 / math.sqrt(n)
    assert abs(u.var() - 1 / 12) < 6 * 0.0745 / math.sqrt(n)
    ks = np.max(np.abs(np.sort(u) - np.arange(1, n + 1) / n))
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov's 0.1 % critical value
    shifted = gc.compile([], gc.random.uniform(key, (1000,), dtype, -3.0, -1.0))()
    assert shifted.min() >= -3 and shifted.max() <= -1 and shifted.dtype == dtype


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_statistics(dtype):
    key = gc.random.key("rng", 11)
    n = 200_000
    z = gc.compile([], gc.random.normal(key, (n,), dtype))()
    assert z.dtype == dtype and np.all(np.isfinite(z))
    assert abs(z.mean()) < 6 / math.sqrt(n)
    assert abs(z.var() - 1) < 6 * math.sqrt(2 / n)
    assert abs(np.mean(z**3)) < 6 * math.sqrt(15 / n)  # skewness 0
    assert abs(np.mean(z**4) - 3) < 6 * math.sqrt(96 / n)  # kurtosis 3
    cdf = 0.5 * (1 + np.vectorize(math.erf)(np.sort(z).astype(np.float64) / math.sqrt(2)))
    ks = np.max(np.abs(cdf - np.arange(1, n + 1) / n))
    assert ks < 1.95 / math.sqrt(n)


def test_bernoulli_frequency_and_a_tensor_probability():
    key = gc.random.key("rng", 3)
    n = 100_000
    p = gc.input("p", (2,), "float64")
    flips = gc.random.bernoulli(key, p, (n, 2))
    got = gc.compile([p], flips)(np.array([0.1, 0.75]))
    assert got.dtype == np.bool_
    for column, q in enumerate((0.1, 0.75)):
        assert abs(got[:, column].mean() - q) < 6 * math.sqrt(q * (1 - q) / n)


def test_dropout_training_step_compiled_matches_the_interpreter():
    key = gc.random.key("dropout", 9)
    w = gc.param("w", np.linspace(-1, 1, 12).reshape(4, 3))
    x = gc.input("x", (8, 4), "float64")
    keep = gc.random.bernoulli(key, 0.8, (8, 3))
    h = gc.where(keep, (x @ w) / 0.8, 0.0)
    loss = (h**2).mean()
    (g,) = gc.grad(loss, [w])
    step = gc.compile([x], [loss, g])
    xv = np.random.default_rng(0).normal(size=(8, 4))
    for _ in range(2):
        expected = gc.evaluate([loss, g], {x: xv})
        got = step(xv)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-12, atol=1e-15)


def test_bad_arguments_are_graphc_errors():
    key = gc.random.key("rng", 0)
    with pytest.raises(gc.GraphcError, match="key must be a gc.random.key"):
        gc.random.uniform(gc.input("f", (2,), "float32"), (3,))
    with pytest.raises(gc.GraphcError, match="key must be a gc.random.key"):
        gc.random.normal(gc.random.Key(0), (3,))
    with pytest.raises(gc.DTypeError, match="float32 or float64"):
        gc.random.uniform(key, (3,), "int32")
    with pytest.raises(gc.ShapeError):
        gc.random.normal(key, (2, -1))
    with pytest.raises(gc.GraphcError, match="seed must be an int"):
        gc.random.key("k", 1.5)
    # the NumPy initializers are still here, drawn from an explicit Key
    assert gc.random.kaiming_uniform(gc.random.Key(0), (2, 2), 2).shape == (2, 2)


@pytest.mark.skipif(GCC is None, reason="needs gcc to build the C caller")
def test_aot_c_draws_the_jits_numbers(tmp_path):
    key = gc.random.key("rng", 99)
    u = gc.random.uniform(key, (6,), "float64")
    step = gc.compile([], u, name="draw")
    gc.aot.export(step, tmp_path, name="draw")
    expected = [step(), step()]
    out = build_and_run(
        tmp_path,
        '#include <stdio.h>\n#include <stdlib.h>\n#include "draw.h"\n'
        "int main(void) {\n  void *mem = aligned_alloc(64, DRAW_MEM_SIZE + 64);\n"
        "  double u[6];\n  draw_init(mem);\n"
        "  for (int s = 0; s < 2; s++) {\n    draw_run(mem, u);\n"
        '    for (int i = 0; i < 6; i++) printf("%a\\n", u[i]);\n  }\n'
        "  free(mem);\n  return 0;\n}\n",
        ["draw.o"],
    )
    got = np.array([float.fromhex(v) for v in out.split()]).reshape(2, 6)
    np.testing.assert_array_equal(got, np.array(expected))  # the state embedded at export
