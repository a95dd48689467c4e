"""gc.random, gc.nn layers and losses, gc.save/load: checked on the reference interpreter."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(1234)


def _normal(*shape, dtype="float64"):
    return RNG.standard_normal(shape).astype(dtype)


# ---- keys and initializers ------------------------------------------------------------------


def test_key_split_is_deterministic_and_pure():
    key = gc.random.Key(7)
    first, second = key.split(2)
    assert key.split(2) == (first, second)  # splitting again gives the same children
    assert gc.random.Key(7).split(2) == (first, second)
    draws = [k.generator().uniform(size=4) for k in (key, first, second)]
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])
    np.testing.assert_array_equal(first.generator().uniform(size=4), draws[1])
    grandchild = first.split(3)[2]
    assert grandchild.path == (0, 2) and grandchild != second.split(3)[2]


def test_key_from_other_seed_differs():
    a = gc.random.Key(0).generator().uniform(size=3)
    b = gc.random.Key(1).generator().uniform(size=3)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initializer_ranges_and_dtypes(dtype):
    key = gc.random.Key(3)
    fan_in, fan_out = 50, 30
    w = gc.random.kaiming_uniform(key, (fan_in, fan_out), fan_in, dtype)
    assert w.dtype == dtype and w.shape == (fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)  # PyTorch nn.Linear: kaiming_uniform with a = sqrt(5)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    g = gc.random.glorot_uniform(key, (fan_in, fan_out), fan_in, fan_out, dtype)
    glorot_bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(g).max() <= glorot_bound and np.abs(g).max() > 0.9 * glorot_bound
    zeros = gc.random.zeros((2, 3), dtype)
    assert zeros.dtype == dtype and not zeros.any()


def test_initializer_rejects_integer_dtype():
    with pytest.raises(gc.DTypeError):
        gc.random.kaiming_uniform(gc.random.Key(0), (2, 2), 2, "int32")


# ---- Dense ----------------------------------------------------------------------------------


def test_dense_shapes_names_and_init_range():
    x = gc.input("x", (8, 3))
    layer = gc.nn.Dense(4, seed=0, name="proj")
    y = layer(x)
    assert y.shape == (8, 4) and y.dtype == "float32"
    w, b = layer.params()
    assert (w.name, w.shape, b.name, b.shape) == ("proj.w", (3, 4), "proj.b", (4,))
    assert w.dtype == b.dtype == "float32"
    bound = 1 / math.sqrt(3)
    assert np.abs(w.value).max() <= bound and np.abs(b.value).max() <= bound


def test_dense_forward_matches_numpy():
    x = gc.input("x", (5, 3), "float64")
    layer = gc.nn.Dense(2, "tanh", seed=1, dtype="float64")
    xv = _normal(5, 3)
    expected = np.tanh(xv @ layer_params(layer, x)[0] + layer.b.value)
    np.testing.assert_allclose(gc.evaluate(layer(x), {x: xv}), expected, rtol=1e-12)


def layer_params(layer, x):
    layer(x)
    return [p.value for p in layer.params()]


def test_dense_seed_is_deterministic():
    x = gc.input("x", (2, 6))
    a, b, c = gc.nn.Dense(3, seed=5), gc.nn.Dense(3, seed=5), gc.nn.Dense(3, seed=6)
    for layer in (a, b, c):
        layer(x)
    np.testing.assert_array_equal(a.w.value, b.w.value)
    np.testing.assert_array_equal(a.b.value, b.b.value)
    assert not np.allclose(a.w.value, c.w.value)
    keyed = gc.nn.Dense(3, key=gc.random.Key(5))
    keyed(x)
    np.testing.assert_array_equal(keyed.w.value, a.w.value)


def test_dense_float32_and_float64_from_one_seed_agree():
    single, double = gc.nn.Dense(3, seed=2), gc.nn.Dense(3, seed=2, dtype="float64")
    single(gc.input("x", (1, 4)))
    double(gc.input("x", (1, 4), "float64"))
    np.testing.assert_array_equal(single.w.value, double.w.value.astype("float32"))


def test_dense_reuses_params_across_batch_sizes():
    layer = gc.nn.Dense(4, "relu", seed=0)
    small, large = gc.input("small", (2, 3)), gc.input("large", (16, 3))
    y_small, y_large = layer(small), layer(large)
    assert y_small.shape == (2, 4) and y_large.shape == (16, 4)
    assert len(layer.params()) == 2
    params_small = gc.Program([small], y_small).graph.params
    params_large = gc.Program([large], y_large).graph.params
    assert [id(n) for n in params_small] == [id(n) for n in params_large] != []
    xv = _normal(16, 3, dtype="float32")
    out_small, out_large = gc.evaluate([y_small, y_large], {small: xv[:2], large: xv})
    np.testing.assert_allclose(out_small, out_large[:2], rtol=1e-6)
    layer.w.value = np.zeros((3, 4))  # one storage: both graphs see the new weights
    out_small, out_large = gc.evaluate([y_small, y_large], {small: xv[:2], large: xv})
    np.testing.assert_array_equal(out_small, np.broadcast_to(np.maximum(layer.b.value, 0), (2, 4)))
    np.testing.assert_array_equal(out_large, np.broadcast_to(np.maximum(layer.b.value, 0), (16, 4)))


def test_dense_errors():
    layer = gc.nn.Dense(2, seed=0)
    layer(gc.input("x", (4, 3)))
    with pytest.raises(gc.ShapeError, match="last dimension 3"):
        layer(gc.input("x2", (4, 5)))
    with pytest.raises(gc.GraphcError, match="unknown activation"):
        gc.nn.Dense(2, "swish")
    with pytest.raises(gc.GraphcError, match="no params yet"):
        gc.nn.Dense(2).params()
    with pytest.raises(gc.GraphcError, match="either seed or key"):
        gc.nn.Dense(2, seed=0, key=gc.random.Key(0))


def test_unnamed_standalone_dense_layers_get_unique_names():
    first, second = gc.nn.Dense(2), gc.nn.Dense(2)
    second(first(gc.input("x", (1, 2))))
    assert first.name != second.name
    assert first.name.startswith("dense") and second.w.name == f"{second.name}.w"


def test_dense_without_bias():
    layer = gc.nn.Dense(3, use_bias=False, seed=0)
    layer(gc.input("x", (2, 2)))
    assert [p.name for p in layer.params()] == [f"{layer.name}.w"]


ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    # exact GELU, gc.gelu's default (DESIGN §9; as PyTorch's and Keras's "gelu")
    "gelu": lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_numpy(name):
    x = gc.input("x", (4, 3), "float64")
    layer = gc.nn.Dense(2, name, seed=0, dtype="float64")
    xv = _normal(4, 3)
    w, b = layer_params(layer, x)
    expected = ACTIVATIONS[name](xv @ w + b)
    np.testing.assert_allclose(gc.evaluate(layer(x), {x: xv}), expected, rtol=1e-12, atol=1e-15)


def test_callable_activation():
    x = gc.input("x", (2, 3), "float64")
    layer = gc.nn.Dense(2, lambda z: z * 2, seed=0, dtype="float64")
    xv = _normal(2, 3)
    w, b = layer_params(layer, x)
    np.testing.assert_allclose(gc.evaluate(layer(x), {x: xv}), 2 * (xv @ w + b), rtol=1e-12)


# ---- models ---------------------------------------------------------------------------------


def test_mlp_layer_count_widths_and_names():
    model = gc.nn.MLP(hidden=32, layers=3, out=1, seed=0)
    y = model(gc.input("x", (32, 5)))
    assert y.shape == (32, 1)
    assert [layer.name for layer in model.layers] == ["dense1", "dense2", "dense3"]
    assert [p.shape for p in model.params()] == [(5, 32), (32,), (32, 32), (32,), (32, 1), (1,)]
    names = [p.name for p in model.params()]
    assert names == ["dense1.w", "dense1.b", "dense2.w", "dense2.b", "dense3.w", "dense3.b"]
    assert [layer.activation for layer in model.layers] == ["relu", "relu", None]


def test_mlp_single_layer_and_output_activation():
    model = gc.nn.MLP(hidden=8, layers=1, out=3, output_activation="sigmoid", seed=0)
    model(gc.input("x", (2, 4)))
    assert [p.shape for p in model.params()] == [(4, 3), (3,)]
    assert model.layers[0].activation == "sigmoid"


def test_mlp_seed_derives_distinct_deterministic_layer_keys():
    def weights(seed):
        model = gc.nn.MLP(hidden=4, layers=3, out=4, seed=seed)
        model(gc.input("x", (1, 4)))
        return [p.value for p in model.params()]

    a, b, c = weights(0), weights(0), weights(1)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.allclose(a[0], c[0])
    assert not np.allclose(a[2], a[4])  # equal shapes (4, 4), different layer keys


def test_named_model_prefixes_its_layers():
    actor = gc.nn.MLP(hidden=4, layers=2, out=1, seed=0, name="actor")
    actor(gc.input("x", (1, 3)))
    assert [p.name for p in actor.params()][:2] == ["actor.dense1.w", "actor.dense1.b"]


def test_nested_models_number_unnamed_layers_in_call_order():
    encoder = gc.nn.Sequential([gc.nn.Dense(4), gc.nn.Dense(4)])
    head = gc.nn.MLP(hidden=4, layers=2, out=1, name="head")
    model = gc.nn.Sequential([encoder, gc.nn.Dense(4), head])
    model(gc.input("x", (2, 3)))
    names = [p.name for p in model.params() if p.name.endswith(".w")]
    assert names == ["dense1.w", "dense2.w", "dense3.w", "head.dense1.w", "head.dense2.w"]


def test_sequential_5_32_16_4_matches_numpy():
    model = gc.nn.Sequential(
        [gc.nn.Dense(32), gc.relu, gc.nn.Dense(16, "tanh"), gc.nn.Dense(4)], seed=3
    )
    x = gc.input("x", (6, 5))
    y = model(x)
    assert y.shape == (6, 4)
    assert [p.name for p in model.params()] == [
        f"dense{i}.{kind}" for i in (1, 2, 3) for kind in ("w", "b")
    ]
    w1, b1, w2, b2, w3, b3 = [p.value.astype("float64") for p in model.params()]
    xv = _normal(6, 5, dtype="float32")
    expected = np.tanh(np.maximum(xv @ w1 + b1, 0) @ w2 + b2) @ w3 + b3
    np.testing.assert_allclose(gc.evaluate(y, {x: xv}), expected, rtol=1e-4, atol=1e-5)


def test_sequential_keeps_user_names_and_rejects_duplicates():
    model = gc.nn.Sequential([gc.nn.Dense(2, name="encoder"), gc.nn.Dense(2)])
    assert [layer.name for layer in model.layers] == ["encoder", "dense2"]
    with pytest.raises(gc.GraphcError, match="unique"):
        gc.nn.Sequential([gc.nn.Dense(2, name="a"), gc.nn.Dense(2, name="a")])
    with pytest.raises(gc.GraphcError, match="not a layer"):
        gc.nn.Sequential([3])


def test_model_params_before_first_call_is_an_error():
    with pytest.raises(gc.GraphcError, match="call it on an input first"):
        gc.nn.MLP(hidden=4, layers=2, out=1).params()


# ---- losses ---------------------------------------------------------------------------------


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_mse_loss_matches_numpy():
    pred, target = gc.input("pred", (4, 2), "float64"), gc.input("target", (4, 2), "float64")
    pv, tv = _normal(4, 2), _normal(4, 2)
    value = gc.evaluate(gc.nn.mse_loss(pred, target), {pred: pv, target: tv})
    np.testing.assert_allclose(value, np.mean((pv - tv) ** 2), rtol=1e-14)
    assert gc.nn.mse_loss(gc.input("p", (2, 1)), np.zeros((2, 1))).dtype == "float32"


def test_mse_loss_rejects_broadcasting_shapes():
    with pytest.raises(gc.ShapeError, match="mse_loss"):
        gc.nn.mse_loss(gc.input("pred", (4, 1)), gc.input("target", (4,)))


def test_cross_entropy_integer_and_one_hot_labels_match_numpy():
    logits = gc.input("logits", (5, 3), "float64")
    lv, labels = _normal(5, 3), RNG.integers(0, 3, size=5)
    one_hot = np.eye(3)[labels]
    expected = -np.mean(np.sum(one_hot * _log_softmax(lv), axis=-1))
    from_int = gc.nn.softmax_cross_entropy(logits, labels)
    from_one_hot = gc.nn.softmax_cross_entropy(logits, one_hot)
    values = gc.evaluate([from_int, from_one_hot], {logits: lv})
    np.testing.assert_allclose(values, [expected, expected], rtol=1e-14)


def test_cross_entropy_with_probability_labels_and_input_labels():
    logits = gc.input("logits", (4, 3), "float64")
    probs = gc.input("probs", (4, 3), "float64")
    lv, pv = _normal(4, 3), RNG.dirichlet(np.ones(3), size=4)
    value = gc.evaluate(gc.nn.softmax_cross_entropy(logits, probs), {logits: lv, probs: pv})
    np.testing.assert_allclose(value, -np.mean(np.sum(pv * _log_softmax(lv), -1)), rtol=1e-14)
    labels = gc.input("labels", (4,), "int32")
    value = gc.evaluate(
        gc.nn.softmax_cross_entropy(logits, labels), {logits: lv, labels: [0, 2, 1, 2]}
    )
    expected = -np.mean(_log_softmax(lv)[np.arange(4), [0, 2, 1, 2]])
    np.testing.assert_allclose(value, expected, rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_extreme_logits_stay_finite(dtype):
    logits = gc.param("logits", np.array([[1e4, -1e4, 0], [-1e4, 1e4, 1e4]], dtype))
    loss = gc.nn.softmax_cross_entropy(logits, np.array([1, 0]))
    value, gradient = gc.evaluate([loss, gc.grad(loss, logits)])
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    np.testing.assert_allclose(value, (2e4 + 2e4 + math.log(2)) / 2, rtol=1e-6)


def test_cross_entropy_shape_and_dtype_errors():
    logits = gc.input("logits", (4, 3))
    with pytest.raises(gc.ShapeError, match="integer labels"):
        gc.nn.softmax_cross_entropy(logits, np.zeros(3, "int64"))
    with pytest.raises(gc.ShapeError, match="probability labels"):
        gc.nn.softmax_cross_entropy(logits, np.zeros((4, 2)))
    with pytest.raises(gc.DTypeError):
        gc.nn.softmax_cross_entropy(gc.input("i", (4, 3), "int32"), np.zeros(4, "int64"))


def test_loss_gradients_match_finite_differences():
    logits = gc.param("logits", _normal(4, 3))
    pred = gc.param("pred", _normal(4, 2))
    probs = RNG.dirichlet(np.ones(3), size=4)
    gc.check_grad(gc.nn.softmax_cross_entropy(logits, np.array([0, 2, 1, 1])), [logits])
    gc.check_grad(gc.nn.softmax_cross_entropy(logits, probs), [logits])
    gc.check_grad(gc.nn.mse_loss(pred, _normal(4, 2)), [pred])


def test_model_loss_gradient_matches_finite_differences():
    x = gc.input("x", (4, 3), "float64")
    layers = [gc.nn.Dense(4, act, dtype="float64") for act in ("tanh", "gelu", "sigmoid")]
    model = gc.nn.Sequential([*layers, gc.nn.Dense(3, dtype="float64")], seed=0)
    loss = gc.nn.softmax_cross_entropy(model(x), np.array([0, 1, 2, 1]))
    gc.check_grad(loss, model.params(), {x: _normal(4, 3)})


def test_check_grad_of_a_float32_model_differences_in_float64():
    x = gc.input("x", (3,))
    w = gc.param("w", _normal(3, dtype="float32"))
    y = gc.tanh(w * x).mean()
    assert gc.check_grad(y, [w, x], {x: _normal(3, dtype="float32")}) < 1e-6
    assert w.value.dtype == np.float32  # the float64 copy leaves the model alone
    model = gc.nn.MLP(hidden=32, layers=3, out=1, activation="tanh", seed=0)
    loss = gc.nn.mse_loss(model(gc.input("x", (8, 5))), _normal(8, 1, dtype="float32"))
    gc.check_grad(loss, model.params(), {"x": _normal(8, 5, dtype="float32")})


# ---- save / load ----------------------------------------------------------------------------


def _built_model(seed=0):
    model = gc.nn.MLP(hidden=3, layers=2, out=2, seed=seed)
    model(gc.input("x", (1, 2)))
    return model


def test_save_load_round_trip_in_place(tmp_path):
    model = _built_model()
    saved = [p.value.copy() for p in model.params()]
    path = tmp_path / "weights.npz"
    gc.save(path, model.params())
    storages = [p.value for p in model.params()]
    for p in model.params():
        p.value = np.zeros(p.shape)
    gc.load(path, model.params())
    for p, storage, expected in zip(model.params(), storages, saved, strict=True):
        assert p.value is storage  # written in place, not rebound
        np.testing.assert_array_equal(p.value, expected)
    assert sorted(np.load(path).files) == sorted(p.name for p in model.params())


def test_save_load_accepts_a_model_and_odd_names(tmp_path):
    odd = gc.param("file", np.arange(3.0))  # would clash with np.savez's own keyword
    gc.save(tmp_path / "odd.npz", [odd])
    odd.value = np.zeros(3)
    gc.load(tmp_path / "odd.npz", [odd])
    np.testing.assert_array_equal(odd.value, np.arange(3.0))
    model = _built_model()
    gc.save(tmp_path / "model.npz", model)
    gc.load(tmp_path / "model.npz", _built_model(seed=1).params())


def test_load_errors_name_the_param_and_change_nothing(tmp_path):
    path = tmp_path / "weights.npz"
    model = _built_model()
    gc.save(path, model.params())
    other = _built_model(seed=1)
    before = [p.value.copy() for p in other.params()]

    extra = gc.param("extra", np.zeros(2, "float32"))
    with pytest.raises(gc.InputError, match="extra"):
        gc.load(path, [*other.params(), extra])
    with pytest.raises(gc.InputError, match="dense2.b"):
        gc.load(path, other.params()[:3])
    wrong_shape = gc.param("dense1.w", np.zeros((3, 2), "float32"))
    with pytest.raises(gc.ShapeError, match="dense1.w"):
        gc.load(path, [wrong_shape, *other.params()[1:]], strict=False)
    wrong_dtype = gc.param("dense2.b", np.zeros(2, "float64"))
    with pytest.raises(gc.DTypeError, match="dense2.b"):
        gc.load(path, [*other.params()[:3], wrong_dtype])
    for p, value in zip(other.params(), before, strict=True):
        np.testing.assert_array_equal(p.value, value)

    gc.load(path, other.params()[:3], strict=False)
    np.testing.assert_array_equal(other.params()[0].value, model.params()[0].value)


def test_save_rejects_non_params_and_duplicate_names(tmp_path):
    with pytest.raises(gc.GraphcError, match="gc.param"):
        gc.save(tmp_path / "a.npz", [gc.input("x", (2,))])
    twins = [gc.param("w", np.zeros(2)), gc.param("w", np.ones(2))]
    with pytest.raises(gc.GraphcError, match="named 'w'"):
        gc.save(tmp_path / "a.npz", twins)


def test_two_unnamed_models_clash_on_save_and_the_message_says_name_them(tmp_path):
    actor, critic = _built_model(), _built_model(seed=1)
    with pytest.raises(gc.GraphcError, match=r"named 'dense1.w' .*name='critic'"):
        gc.save(tmp_path / "both.npz", actor.params() + critic.params())
    critic = gc.nn.MLP(hidden=3, layers=2, out=2, seed=1, name="critic")
    critic(gc.input("x", (1, 2)))
    gc.save(tmp_path / "both.npz", actor.params() + critic.params())
    assert "critic.dense1.w.npy" in zipfile.ZipFile(tmp_path / "both.npz").namelist()


def test_load_of_anything_but_a_checkpoint_is_an_input_error_naming_the_file(tmp_path):
    model = _built_model()
    good = tmp_path / "good.npz"
    gc.save(good, model)
    data = good.read_bytes()
    np.save(tmp_path / "single.npy", np.zeros(3))
    files = {"missing.npz": None, "single.npy": ..., "empty.npz": b"", "text.npz": b"hi" * 9}
    rng = np.random.default_rng(0)
    for i in range(30):  # truncations and flipped bytes
        damaged = bytearray(data[: rng.integers(len(data))] if i % 2 else data)
        if not i % 2:
            for at in rng.integers(len(data), size=3):
                damaged[at] ^= 0xFF
        files[f"damaged{i}.npz"] = bytes(damaged)
    before = [p.value.copy() for p in model.params()]
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        try:
            gc.load(tmp_path / name, model)
        except gc.InputError as error:
            assert str(error).startswith(f"load {tmp_path / name}: ")
        else:  # a flip the format does not notice (say, in a name) may still load
            assert name.startswith("damaged")
    for p, value in zip(model.params(), before, strict=True):
        assert p.value.shape == value.shape
