"""gc.onnx: import (names, params, shapes, folding, errors, training an imported model),
export (graphc -> ONNX -> onnxruntime equals graphc) and the backend's re-imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graphc as gc

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from graphc.onnx import UnsupportedError  # noqa: E402

FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "test_graph", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _mlp(dtype="float32", batch=4, opset=18):
    """x(batch, 3) -> Gemm(w1, b1) -> Relu -> MatMul(w2) + b2 -> Softmax: an MLP as exporters
    write it; weights drawn from a fixed seed."""
    rng = np.random.default_rng(0)
    arrays = {
        "w1": rng.normal(size=(5, 3)), "b1": rng.normal(size=5),
        "w2": rng.normal(size=(5, 2)), "b2": rng.normal(size=2),
    }  # fmt: skip
    initializers = [numpy_helper.from_array(a.astype(dtype), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="bias2"),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1, name="softmax"),
    ]
    t = FLOAT_TYPES[dtype]
    inputs = [helper.make_tensor_value_info("x", t, [batch, 3])]
    outputs = [helper.make_tensor_value_info("y", t, [batch, 2])]
    return _model(nodes, inputs, outputs, initializers, opset), arrays


def _numpy_mlp(x, arrays):
    h = np.maximum(x @ arrays["w1"].T + arrays["b1"], 0) @ arrays["w2"] + arrays["b2"]
    e = np.exp(h - h.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_load_names_params_and_values(dtype, tmp_path):
    model, arrays = _mlp(dtype)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    program = gc.onnx.load(path)
    assert [x.name for x in program.inputs] == ["x"]
    assert sorted(p.name for p in program.params()) == ["b1", "b2", "w1", "w2"]
    assert all(p.dtype == dtype for p in program.params())
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(dtype)
    expected = _numpy_mlp(x.astype(np.float64), arrays)
    (interpreted,) = gc.evaluate(program.outputs, {"x": x})
    (compiled,) = gc.compile(program)(x)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(interpreted, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(compiled, interpreted, rtol=tolerance, atol=tolerance)
    assert compiled.dtype == dtype


def test_imported_nodes_carry_their_onnx_node_as_location(tmp_path):
    """Dumps (and errors raised while the graph is built) point at the ONNX node a graphc
    node comes from, not at the line that called gc.onnx.load."""
    model, _ = _mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    from graphc.ir.printer import print_graph

    text = print_graph(gc.onnx.load(path).graph)
    assert "mlp.onnx:fc1 (Gemm)" in text and "mlp.onnx:softmax (Softmax)" in text
    assert "test_onnx.py" not in text
    assert "test_graph:relu (Relu)" in print_graph(gc.onnx.load(model).graph)  # a ModelProto


def test_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model, _ = _mlp("float32")
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (got,) = gc.compile(gc.onnx.load(model))(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_imported_params_train_with_gc_optim():
    """Initializers are params: gradients match finite differences, SGD lowers the loss."""
    model, _ = _mlp("float64")
    program = gc.onnx.load(model)
    (y,) = program.outputs
    target = gc.input("target", y.shape, "float64")
    loss = ((y - target) ** 2).mean()
    rng = np.random.default_rng(3)
    feed = {program.inputs[0]: rng.normal(size=(4, 3)), target: rng.uniform(size=(4, 2))}
    gc.check_grad(loss, program.params(), feed)
    optimizer = gc.optim.SGD(program.params(), lr=0.5)
    step = gc.compile(inputs=[program.inputs[0], target], outputs=loss,
                      updates=optimizer.updates(loss))  # fmt: skip
    losses = [float(step(feed[program.inputs[0]], feed[target])) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def test_symbolic_dimensions_need_shapes():
    model, _ = _mlp("float32")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(gc.ShapeError, match="symbolic dimension 'batch'.*shapes="):
        gc.onnx.load(model)
    program = gc.onnx.load(model, shapes={"x": (7, 3)})
    assert program.inputs[0].shape == (7, 3) and program.outputs[0].shape == (7, 2)
    with pytest.raises(gc.GraphcError, match="not graph inputs"):
        gc.onnx.load(model, shapes={"x": (7, 3), "nope": (1,)})


def test_unsupported_op_names_node_op_and_opset():
    nodes = [helper.make_node("Det", ["x"], ["y"], name="determinant")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"'determinant' \(Det, opset 18\)"):
        gc.onnx.load(model)
    assert issubclass(UnsupportedError, gc.GraphcError)


def test_unsupported_attribute_and_dtype():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], mode="bogus", name="p")]
    pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
        [pads],
    )
    with pytest.raises(UnsupportedError, match=r"'p' \(Pad, opset 18\): mode='bogus'"):
        gc.onnx.load(model)
    nodes = [helper.make_node("Abs", ["x"], ["y"])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3])],
    )
    with pytest.raises(UnsupportedError, match="graph input 'x': element type FLOAT16"):
        gc.onnx.load(model)


def test_older_opsets_only_where_the_op_is_unchanged():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    sine = _model([helper.make_node("Sin", ["x"], ["y"])], [x], [y], opset=11)
    (value,) = gc.evaluate(gc.onnx.load(sine).outputs, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_allclose(value, np.sin(np.ones((2, 3))), rtol=1e-6)
    # Softmax changed at opset 13 (it used to flatten to 2-D): refused, not computed anew
    softmax = _model([helper.make_node("Softmax", ["x"], ["y"], name="s")], [x], [y], opset=11)
    with pytest.raises(UnsupportedError, match=r"'s' \(Softmax, opset 11\).*before opset 13"):
        gc.onnx.load(softmax)


def test_shape_arithmetic_folds():
    """Shape -> Gather -> Concat -> Reshape, as exporters write a flatten: folded while
    importing (no shape op left in the program)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    initializers = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                    numpy_helper.from_array(np.array([0], np.int64), "zero1"),
                    numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]  # fmt: skip
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])],
                   initializers)  # fmt: skip
    program = gc.onnx.load(model)
    assert {n.op for n in program.graph.nodes} == {"input", "reshape"}


def test_bad_files_and_declared_outputs(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(gc.GraphcError, match="junk.onnx"):
        gc.onnx.load(path)
    with pytest.raises(gc.GraphcError, match="ModelProto or a path"):
        gc.onnx.load(42)
    nodes = [helper.make_node("Abs", ["x"], ["y"])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    with pytest.raises(gc.ShapeError, match="declares shape"):
        gc.onnx.load(model)


def test_graphc_does_not_import_onnx():
    code = "import sys, graphc; assert 'onnx' not in sys.modules; print(graphc.onnx.load)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_backend_imports_symbolic_and_run_time_shapes():
    """A symbolic batch is fixed by the first run's arrays; a Reshape whose shape is a graph
    input is imported with that input's value, again when the value changes."""
    from graphc.onnx import backend

    model, arrays = _mlp("float32")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    x = np.random.default_rng(4).normal(size=(6, 3)).astype(np.float32)
    (y,) = backend.run_model(model, [x])
    np.testing.assert_allclose(y, _numpy_mlp(x.astype(np.float64), arrays), rtol=1e-5, atol=1e-6)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    reshape = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                             helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip
    rep = backend.prepare(reshape, "CPU", mode="interpret")
    data = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert rep.run([data, np.array([3, 4])])[0].shape == (3, 4)
    assert rep.run([data, np.array([4, -1])])[0].shape == (4, 3)
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")


# ---- export ---------------------------------------------------------------------------------


def _round_trip(program, feed, tmp_path, rtol=1e-5, atol=1e-6, onnxruntime=True):
    """graphc -> ONNX file -> onnxruntime equals graphc; and ONNX -> graphc again too."""
    path = tmp_path / "exported.onnx"
    gc.onnx.export(program, path)
    expected = gc.evaluate(program.outputs, feed)
    if onnxruntime:
        ort = pytest.importorskip("onnxruntime")
        names = {x.name: v for x, v in feed.items()}
        got = ort.InferenceSession(str(path)).run(None, names)
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    again = gc.onnx.load(path)
    assert sorted(p.name for p in again.params()) == sorted(p.name for p in program.params())
    for a, b in zip(gc.compile(again)(*feed.values()), expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_cnn_round_trip(dtype, tmp_path):
    rng = np.random.default_rng(5)
    x = gc.input("x", (2, 1, 8, 8), dtype)
    model = gc.nn.Sequential([
        gc.nn.Conv2D(4, 3, padding=1, activation=gc.relu), gc.nn.MaxPool2D(2),
        gc.nn.Conv2D(4, 3), gc.nn.AvgPool2D(2), gc.nn.Flatten(), gc.nn.Dense(3),
    ])  # fmt: skip
    logits = model(x)
    program = gc.Program([x], [gc.softmax(logits), gc.log_softmax(logits).argmax(axis=-1)])
    # onnxruntime has no float64 Conv on the CPU: that case goes back through graphc alone
    _round_trip(program, {x: rng.normal(size=x.shape).astype(dtype)}, tmp_path,
                onnxruntime=dtype == "float32")  # fmt: skip


def test_export_elementwise_gathers_and_layout(tmp_path):
    rng = np.random.default_rng(6)
    x = gc.input("x", (3, 4))  # float32: onnxruntime has no float64 Erf, Atan ... kernels
    i = gc.input("i", (5,), "int64")
    w = gc.param("w", rng.normal(size=(4, 4)).astype(np.float32))
    parts = [
        gc.take(x, i, axis=1), x % 0.7, x // 0.3, gc.erf(x) * gc.atan(x), gc.log1p(abs(x)),
        gc.gelu(x), gc.layer_norm(x @ w), gc.cumsum(x, axis=1), gc.clip(x, -0.5, 0.5),
        gc.scatter_add(x, i[:2], gc.exp(x[:, :2]), axis=1), x.T.reshape(3, 4),
        gc.concat([x[:, 1:], x[:, :1]], axis=1), gc.where(x > 0, x, -x), (x != 0).astype("float32"),
    ]  # fmt: skip
    program = gc.Program([x, i], parts)
    feed = {x: rng.normal(size=(3, 4)).astype(np.float32), i: np.array([3, -1, 0, 2, -4])}
    _round_trip(program, feed, tmp_path, rtol=2e-5, atol=2e-6)


def test_export_refuses_updates_and_ops_without_onnx_form():
    x = gc.input("x", (2,))
    w = gc.param("w", np.ones(2, np.float32))
    with pytest.raises(gc.GraphcError, match="without updates"):
        gc.onnx.export(gc.Program([x], [x * w], updates={w: w * 2}))
    key = gc.random.key("noise", 0)  # a random key advances: an update too
    noisy = gc.Program([x], [x + gc.random.uniform(key, (2,), "float32")])
    with pytest.raises(gc.GraphcError, match=r"updates \['noise'\]"):
        gc.onnx.export(noisy)
    from graphc.ir.ops import apply

    spread = gc.Tensor(apply("pad", x.node, widths=((0, 0, 1),), value=0.0))  # interior pad
    with pytest.raises(gc.GraphcError, match="interior padding has no ONNX form"):
        gc.onnx.export(gc.Program([x], [spread]))


# ---- command line ---------------------------------------------------------------------------


@pytest.fixture
def mlp_file(tmp_path):
    """The MLP with a symbolic batch dimension, as a file."""
    model, arrays = _mlp("float32")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    return path, arrays


@pytest.mark.parametrize("stage", ["graph", "optimized", "fused", "memory", "llvm", "asm"])
def test_cli_dump_every_stage_of_an_onnx_model(mlp_file, stage, capsys):
    from graphc.cli import main

    path, _ = mlp_file
    assert main(["dump", str(path), "--stage", stage, "--shape", "x=2,3"]) == 0
    text = capsys.readouterr().out
    assert text.strip()
    if stage == "graph":
        assert "%x: f32[2,3]" in text and "%w1: f32[5,3]" in text


def test_cli_onnx_errors_are_one_line(mlp_file, capsys):
    from graphc.cli import main

    path, _ = mlp_file
    assert main(["dump", str(path)]) == 2
    assert "symbolic dimension 'batch'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["aot", str(path), "-o", "out", "--shape", "x=2,three"])


def test_cli_aot_of_an_onnx_model_runs_without_python_runtime(mlp_file, tmp_path, capsys):
    """`graphc aot model.onnx`: the shared library's NAME_run gives the JIT's outputs."""
    import ctypes

    from graphc.cli import main

    path, arrays = mlp_file
    out = tmp_path / "build"
    argv = ["aot", str(path), "-o", str(out), "--shape", "x=4,3", "--name", "mlp"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} >= {"mlp.o", "libmlp.so", "mlp.h"}
    assert "mlp_run" in (out / "mlp.h").read_text()
    library = ctypes.CDLL(str(out / "libmlp.so"))
    library.mlp_mem_size.restype = ctypes.c_size_t
    memory = np.zeros(library.mlp_mem_size() + 64, np.uint8)
    base = memory.ctypes.data + (-memory.ctypes.data) % 64
    library.mlp_init(ctypes.c_void_p(base))
    x = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
    y = np.zeros((4, 2), np.float32)
    library.mlp_run(ctypes.c_void_p(base), x.ctypes.data_as(ctypes.c_void_p),
                    y.ctypes.data_as(ctypes.c_void_p))  # fmt: skip
    np.testing.assert_allclose(y, _numpy_mlp(x.astype(np.float64), arrays), rtol=1e-5, atol=1e-6)


def test_example_imports_a_users_file(mlp_file, capsys, tmp_path):
    """examples/onnx_import.py on a file with a symbolic batch: graphc's outputs agree with
    onnxruntime's, and --aot writes the C artifacts."""
    import importlib.util
    import pathlib
    import re

    pytest.importorskip("onnxruntime")
    source = pathlib.Path(__file__).parent.parent / "examples" / "onnx_import.py"
    spec = importlib.util.spec_from_file_location("onnx_import_example", source)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    path, _ = mlp_file
    assert example.main([str(path), "--shape", "x=3,3", "--aot", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "inputs {'x': (3, 3)}, 4 params" in out
    difference = float(re.search(r"largest difference (\S+)", out).group(1))
    assert difference < 1e-5
    assert (tmp_path / "c" / "test_graph.h").exists()


def test_gradients_through_imported_layers():
    """float64 finite differences through the layer entries an imported CNN uses: Conv with
    asymmetric pads, BatchNormalization, MaxPool with ceil_mode, AveragePool without the
    padding counted, ConvTranspose, Resize (linear), Gemm, LayerNormalization, Softmax."""
    rng = np.random.default_rng(8)
    arrays = {
        "w": rng.normal(size=(3, 2, 3, 3)), "b": rng.normal(size=3),
        "scale": rng.uniform(0.5, 1.5, 3), "shift": rng.normal(size=3),
        "mean": rng.normal(size=3) * 0.1, "var": rng.uniform(0.5, 1.5, 3),
        "wt": rng.normal(size=(3, 2, 2, 2)), "fc": rng.normal(size=(4, 18)),
        "gamma": rng.uniform(0.5, 1.5, 4), "beta": rng.normal(size=4),
    }  # fmt: skip
    constants = {"scales": np.array([1.0, 1.0, 1.5, 1.5], np.float32)}
    initializers = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    initializers += [numpy_helper.from_array(a, n) for n, a in constants.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 2, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node(
            "AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]
        ),
        helper.make_node("ConvTranspose", ["a", "wt"], ["t"], strides=[2, 2]),
        helper.make_node("Resize", ["t", "", "scales"], ["z"], mode="linear"),
        helper.make_node("ReduceMean", ["z", "axes"], ["p"], keepdims=0),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["g"], transB=1),
        helper.make_node("LayerNormalization", ["g", "gamma", "beta"], ["l"]),
        helper.make_node("Softmax", ["l"], ["y"]),
    ]
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 2, 6, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
                   initializers)  # fmt: skip
    model.graph.output[0].type.tensor_type.ClearField("shape")
    program = gc.onnx.load(model)
    (y,) = program.outputs
    assert y.shape == (2, 4)
    weights = gc.const(rng.normal(size=y.shape))
    loss = (y * weights).sum()
    feed = {"x": rng.normal(size=(2, 2, 6, 5))}
    gc.check_grad(loss, program.params(), feed)
    gc.check_grad(loss, [program.inputs[0]], feed)
    (interpreted,) = gc.evaluate(program.outputs, feed)
    (compiled,) = gc.compile(program)(feed["x"])
    np.testing.assert_allclose(compiled, interpreted, rtol=1e-10, atol=1e-12)
    # onnxruntime has no float64 Conv: the same model in float32 against it
    ort = pytest.importorskip("onnxruntime")
    single = _as_float32(model)
    x32 = feed["x"].astype(np.float32)
    (expected,) = ort.InferenceSession(single.SerializeToString()).run(None, {"x": x32})
    (got,) = gc.compile(gc.onnx.load(single))(x32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _as_float32(model):
    """A copy of `model` with its float64 initializers, inputs and outputs in float32."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for i, tensor in enumerate(copy.graph.initializer):
        if tensor.data_type == TensorProto.DOUBLE:
            array = numpy_helper.to_array(tensor).astype(np.float32)
            copy.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for value in [*copy.graph.input, *copy.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT
    return copy


@pytest.mark.parametrize(
    "equation, shapes",
    [("ij,jk->ik", [(2, 3), (3, 4)]), ("...ij,...jk", [(2, 2, 3), (3, 4)]), ("ii->i", [(3, 3)]),
     ("ij->", [(2, 3)]), ("bij,bkj->bik", [(2, 3, 4), (2, 5, 4)]), ("i,j", [(2,), (3,)]),
     ("iij->ji", [(3, 3, 2)])],
)  # fmt: skip
def test_einsum_against_numpy(equation, shapes):
    rng = np.random.default_rng(9)
    arrays = [rng.normal(size=s) for s in shapes]
    names = [f"x{i}" for i in range(len(shapes))]
    nodes = [helper.make_node("Einsum", names, ["y"], equation=equation)]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.DOUBLE, s) for n, s in zip(names, shapes)
    ]
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model.graph.output[0].type.tensor_type.ClearField("shape")
    program = gc.onnx.load(model)
    (got,) = gc.evaluate(program.outputs, dict(zip(names, arrays)))
    np.testing.assert_allclose(got, np.einsum(equation, *arrays), rtol=1e-12, atol=1e-12)


def test_exporters_layouts_import_as_views_and_whole_products():
    """What torch writes for attention and Linear layers: MatMul of (batch, seq, k) by a 2-D
    weight is one product of all rows (not a batch of broadcast weights), a Transpose that
    only moves axes of length 1 is a reshape, a Gather at a constant index is a slice view,
    and Gemm(transB) of one row is W @ x^T (W's rows read contiguously)."""
    rng = np.random.default_rng(10)
    arrays = {"w": rng.normal(size=(4, 6)), "fc": rng.normal(size=(3, 12))}
    initializers = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    initializers += [numpy_helper.from_array(np.array(-1, np.int64), "last"),
                     numpy_helper.from_array(np.array([1, 12], np.int64), "row")]  # fmt: skip
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),  # (1, 2, 4) -> (2, 1, 4)
        helper.make_node("MatMul", ["t", "w"], ["m"]),  # (2, 1, 6)
        helper.make_node("Gather", ["m", "last"], ["g"], axis=0),  # (1, 6)
        helper.make_node("Concat", ["g", "g"], ["c"], axis=1),  # (1, 12)
        helper.make_node("Gemm", ["c", "fc"], ["y"], transB=1),  # (1, 3)
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 3])],
                   initializers)  # fmt: skip
    program = gc.onnx.load(model)
    ops = [n.op for n in program.graph.nodes]
    assert "transpose" not in ops[: ops.index("matmul")] and "take" not in ops
    products = [n for n in program.graph.nodes if n.op == "matmul"]
    assert [[i.shape for i in n.inputs] for n in products] == [[(2, 4), (4, 6)], [(3, 12), (12, 1)]]
    x = rng.normal(size=(1, 2, 4))
    h = (x.transpose(1, 0, 2) @ arrays["w"])[-1]
    expected = np.concatenate([h, h], axis=1) @ arrays["fc"].T
    (interpreted,) = gc.evaluate(program.outputs, {"x": x})
    (compiled,) = gc.compile(program)(x)
    np.testing.assert_allclose(interpreted, expected, rtol=1e-12)
    np.testing.assert_allclose(compiled, expected, rtol=1e-12)
    initializers[2] = numpy_helper.from_array(np.array(2, np.int64), "last")
    model = _model(nodes, model.graph.input, model.graph.output, initializers)
    with pytest.raises(gc.ShapeError, match=r"index 2 is out of range for axis 0"):
        gc.onnx.load(model)


@pytest.mark.parametrize(
    "shapes, product",
    [([(1, 2, 3, 4), (1, 2, 4, 5)], [(2, 3, 4), (2, 4, 5)]),
     ([(1, 1, 3, 4), (2, 4, 5)], [(2, 3, 4), (2, 4, 5)]),
     ([(2, 3, 4), (1, 4, 5)], [(6, 4), (4, 5)]),
     ([(3, 4), (2, 4, 5)], [(2, 3, 4), (2, 4, 5)])],
)  # fmt: skip
def test_matmul_batches_drop_leading_ones(shapes, product):
    """Attention's (1, heads, seq, size) products lose the leading 1 (threads split a product's
    first batch axis), and a batch times a 2-D operand is one product of all rows."""
    rng = np.random.default_rng(11)
    arrays = [rng.normal(size=s) for s in shapes]
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, s)
              for n, s in zip("ab", shapes)]  # fmt: skip
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model.graph.output[0].type.tensor_type.ClearField("shape")
    program = gc.onnx.load(model)
    (mm,) = [n for n in program.graph.nodes if n.op == "matmul"]
    assert [i.shape for i in mm.inputs] == product
    (got,) = gc.compile(program)(*arrays)
    np.testing.assert_allclose(got, np.matmul(*arrays), rtol=1e-12)


@pytest.mark.parametrize("shapes", [[(2, 3, 4), (3, 4, 5)], [(2, 3, 4), (5, 6)]])
def test_matmul_of_mismatched_shapes_is_a_shape_error(shapes):
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
              for n, s in zip("ab", shapes)]  # fmt: skip
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(gc.ShapeError, match="matmul: (batch|inner) dim"):
        gc.onnx.load(model)


# ---- recurrent layers (RNN, GRU, LSTM) ------------------------------------------------------

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent(op, dtype="float32", direction="forward", layout=0, lengths=None, **attributes):
    """One ONNX RNN/GRU/LSTM node (5 steps, batch 3, 4 features, 6 hidden) with every
    optional input (bias, initial states, LSTM peepholes; sequence_lens when `lengths` is
    given) as initializers drawn from a fixed seed, and an input x. The draws do not depend on
    `layout`: layout 1 holds the same values batch first."""
    steps, batch, features, hidden = 5, 3, 4, 6
    rng = np.random.default_rng(len(op))
    directions = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    arrays = {
        "W": rng.normal(size=(directions, g * hidden, features)) * 0.5,
        "R": rng.normal(size=(directions, g * hidden, hidden)) * 0.5,
        "B": rng.normal(size=(directions, 2 * g * hidden)) * 0.5,
        "sequence_lens": None if lengths is None else np.array(lengths, np.int32),
        "initial_h": rng.normal(size=(directions, batch, hidden)),
    }
    if op == "LSTM":
        arrays["initial_c"] = rng.normal(size=(directions, batch, hidden))
        arrays["P"] = rng.normal(size=(directions, 3 * hidden)) * 0.5
    x = rng.normal(size=(steps, batch, features)).astype(dtype)
    if layout:
        x = x.swapaxes(0, 1).copy()
        for name in ("initial_h", "initial_c"):
            if name in arrays:
                arrays[name] = arrays[name].swapaxes(0, 1)
    names = [n if arrays[n] is not None else "" for n in arrays]
    initializers = [numpy_helper.from_array(a if a.dtype.kind == "i" else a.astype(dtype), n)
                    for n, a in arrays.items() if a is not None]  # fmt: skip
    outputs = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    node = helper.make_node(op, ["x", *names], outputs, name="recurrent", direction=direction,
                            layout=layout, hidden_size=hidden, **attributes)  # fmt: skip
    t = FLOAT_TYPES[dtype]
    model = _model([node], [helper.make_tensor_value_info("x", t, x.shape)],
                   [helper.make_tensor_value_info(n, t, None) for n in outputs],
                   initializers, opset=22)  # fmt: skip
    return model, x


def _onnxruntime_recurrent(op, direction, layout, attributes, lengths=None):
    """onnxruntime's outputs, in `layout` (it runs only layout 0: batch first is transposed)."""
    ort = pytest.importorskip("onnxruntime")
    model, x = _recurrent(op, "float32", direction, 0, lengths, **attributes)
    outputs = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    if layout:
        outputs = [outputs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outputs[1:]]
    return outputs


RECURRENT_CASES = [
    ("RNN", "forward", 0, {}),
    ("RNN", "bidirectional", 1, {"activations": ["Relu", "Tanh"]}),
    ("GRU", "forward", 0, {}),
    ("GRU", "reverse", 1, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", 0, {"activations": ["HardSigmoid", "Softsign"] * 2}),
    ("LSTM", "forward", 1, {}),
    ("LSTM", "reverse", 0, {}),
    ("LSTM", "bidirectional", 1, {"activations": ["Sigmoid", "Tanh", "Relu"] * 2}),
]


@pytest.mark.parametrize("op, direction, layout, attributes", RECURRENT_CASES)
def test_recurrent_layers_match_onnxruntime_and_the_reference(op, direction, layout, attributes):
    """Every output in float32 against onnxruntime and in float64 against ONNX's reference
    implementation (onnx.reference), compiled and interpreted, and its gradients by finite
    differences in float64."""
    from onnx.reference import ReferenceEvaluator

    expected = _onnxruntime_recurrent(op, direction, layout, attributes)
    model, x = _recurrent(op, "float32", direction, layout, **attributes)
    got = gc.compile(gc.onnx.load(model))(x)
    assert len(got) == len(expected) == (3 if op == "LSTM" else 2)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    model, x = _recurrent(op, "float64", direction, layout, **attributes)
    program = gc.onnx.load(model)
    compiled = gc.compile(program)(x)
    interpreted = gc.evaluate(program.outputs, {"x": x})
    if not attributes.get("activations"):  # the reference knows only the default activations
        reference = ReferenceEvaluator(model).run(None, {"x": x})
        for a, b in zip(compiled, reference):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled, interpreted):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    weights = [gc.const(np.random.default_rng(1).normal(size=y.shape)) for y in program.outputs]
    loss = sum((y * w).sum() for y, w in zip(program.outputs, weights))
    gc.check_grad(loss, program.params() + [program.inputs[0]], {"x": x})


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_sequence_lengths(op):
    """Sequences shorter than the input: outputs past each one's length are 0 and Y_h (Y_c)
    is its state at its last step, as onnxruntime computes them; lengths are needed while
    importing (the backend imports again when a graph input gives them)."""
    expected = _onnxruntime_recurrent(op, "forward", 0, {}, lengths=[5, 2, 4])
    model, x = _recurrent(op, lengths=[5, 2, 4])
    got = gc.compile(gc.onnx.load(model))(x)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not got[0][2:, :, 1].any()  # the second sequence ends after 2 steps
    full, _ = _recurrent(op, lengths=[5, 5, 5])
    plain, _ = _recurrent(op)
    for a, b in zip(gc.compile(gc.onnx.load(full))(x), gc.compile(gc.onnx.load(plain))(x)):
        np.testing.assert_array_equal(a, b)
    reverse, _ = _recurrent(op, direction="reverse", lengths=[5, 2, 4])
    with pytest.raises(UnsupportedError, match=rf"'recurrent' \({op}, opset 22\): sequence_lens"):
        gc.onnx.load(reverse)


@pytest.mark.parametrize(
    "attributes, message",
    [({"clip": 3.0}, "attribute clip is not supported"),
     ({"activation_alpha": [0.5]}, "attribute activation_alpha is not supported"),
     ({"activations": ["ScaledTanh"]}, "activation 'ScaledTanh' is not supported"),
     ({"activations": ["Tanh", "Tanh"]}, "activations needs 1 names")],
)  # fmt: skip
def test_recurrent_refuses_what_it_cannot_compute_exactly(attributes, message):
    model, _ = _recurrent("RNN", **attributes)
    with pytest.raises(gc.GraphcError, match=r"'recurrent' \(RNN, opset 22\): " + message):
        gc.onnx.load(model)
    model, _ = _recurrent("LSTM", input_forget=1)
    with pytest.raises(UnsupportedError, match="input_forget=1 is not supported"):
        gc.onnx.load(model)


def test_recurrent_weights_of_the_wrong_shape_name_the_input():
    model, _ = _recurrent("GRU")
    model.graph.node[0].attribute[[a.name for a in model.graph.node[0].attribute]
                                  .index("hidden_size")].i = 5  # fmt: skip
    with pytest.raises(gc.ShapeError, match=r"'recurrent' \(GRU, opset 22\): hidden_size=5"):
        gc.onnx.load(model)
    model, _ = _recurrent("LSTM")
    model.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(np.zeros((1, 7), np.float32), "B"))  # fmt: skip
    with pytest.raises(gc.ShapeError, match=r"B must be \(1, 48\) here, got f32\[1,7\]"):
        gc.onnx.load(model)


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize(
    "op, dtype",
    [("ReduceSum", "float32"), ("ReduceMax", "float64"), ("ReduceMin", "int32"),
     ("ReduceMax", "bool"), ("ReduceProd", "int64"), ("ReduceLogSumExp", "float32"),
     ("ReduceL2", "float64")],
)  # fmt: skip
def test_reductions_over_no_elements_give_their_identity(op, dtype, keepdims):
    """A reduced axis of length 0: the identity, as ONNX's reference implementation gives it."""
    from onnx.reference import ReferenceEvaluator

    types = {**FLOAT_TYPES, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
             "bool": TensorProto.BOOL}  # fmt: skip
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    model = _model([node], [helper.make_tensor_value_info("x", types[dtype], [2, 0, 3])],
                   [helper.make_tensor_value_info("y", types[dtype], None)], [axes])  # fmt: skip
    x = np.zeros((2, 0, 3), dtype)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    (got,) = gc.compile(gc.onnx.load(model))(x)  # the input is not read, but taken
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    mean = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 0, 3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    mean = _model([mean], [x_info], [y_info], [axes])
    with pytest.raises(UnsupportedError, match="'mean' .*the mean of no elements"):
        gc.onnx.load(mean)


@pytest.mark.parametrize(
    "rule, heads, decay_width, beta_width",
    [("linear", (2, 2), None, None), ("gated", (4, 2), 2, None), ("delta", (2, 1), None, 1),
     ("gated_delta", (4, 2), 6, 2)],
)  # fmt: skip
def test_linear_attention_matches_the_reference_and_differentiates(
    rule, heads, decay_width, beta_width
):
    """LinearAttention (one gc.scan over the tokens) against ONNX's reference in float32, with
    a past state and grouped queries; its gradients by finite differences in float64."""
    from onnx.reference import ReferenceEvaluator

    q_heads, kv_heads = heads
    rng = np.random.default_rng(9)
    shapes = {"query": (2, 5, q_heads * 3), "key": (2, 5, kv_heads * 3),
              "value": (2, 5, kv_heads * 4), "past_state": (2, kv_heads, 3, 4)}  # fmt: skip
    if decay_width:
        shapes["decay"] = (2, 5, decay_width)
    if beta_width:
        shapes["beta"] = (2, 5, beta_width)
    names = [n if n in shapes else "" for n in ("query", "key", "value", "past_state", "decay",
                                                "beta")]  # fmt: skip
    node = helper.make_node("LinearAttention", names, ["y", "state"], update_rule=rule,
                            q_num_heads=q_heads, kv_num_heads=kv_heads, name="la")  # fmt: skip
    for dtype in ("float32", "float64"):
        t = FLOAT_TYPES[dtype]
        model = _model([node], [helper.make_tensor_value_info(n, t, s) for n, s in shapes.items()],
                       [helper.make_tensor_value_info(n, t, None) for n in ("y", "state")],
                       opset=27)  # fmt: skip
        feed = {n: (rng.normal(size=s) * 0.5).astype(dtype) for n, s in shapes.items()}
        if "decay" in feed:
            feed["decay"] = -abs(feed["decay"])  # log-space decay rates
        program = gc.onnx.load(model)
        got = gc.compile(program)(*[feed[n] for n in shapes])
        if dtype == "float32":
            expected = ReferenceEvaluator(model).run(None, feed)
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            y, state = program.outputs
            loss = (y * gc.const(rng.normal(size=y.shape))).sum() + (state * state).sum()
            gc.check_grad(loss, list(program.inputs), feed)
    wrong = helper.make_node("LinearAttention", names, ["y"], update_rule="linear",
                             q_num_heads=q_heads, kv_num_heads=kv_heads, name="la")  # fmt: skip
    model.graph.node[0].CopyFrom(wrong)
    if rule != "linear":
        with pytest.raises(gc.ShapeError, match=r"'la' \(LinearAttention, opset 27\): update_rule"):
            gc.onnx.load(model)


def test_scan_runs_its_body_in_one_loop():
    """Scan (opset 16): a running sum as its state, a scan output, a scan input read along axis
    1 backwards and an output stacked along axis 1 backwards, and a body that reads a value
    of the graph around it; against NumPy, and differentiated in float64."""
    t = TensorProto.DOUBLE
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
         helper.make_node("Mul", ["sum_out", "outer"], ["y_t"])],
        "body",
        [helper.make_tensor_value_info("sum_in", t, [3]),
         helper.make_tensor_value_info("x_t", t, [3])],
        [helper.make_tensor_value_info("sum_out", t, [3]),
         helper.make_tensor_value_info("y_t", t, [3])],
    )  # fmt: skip
    nodes = [
        helper.make_node("Exp", ["w"], ["outer"]),
        helper.make_node("Scan", ["init", "x"], ["total", "ys"], body=body, num_scan_inputs=1,
                         scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[1],
                         scan_output_directions=[1], name="loop"),
    ]  # fmt: skip
    model = _model(nodes,
                   [helper.make_tensor_value_info(n, t, s)
                    for n, s in (("init", [3]), ("x", [3, 5]), ("w", [3]))],
                   [helper.make_tensor_value_info(n, t, None) for n in ("total", "ys")],
                   opset=16)  # fmt: skip
    rng = np.random.default_rng(10)
    feed = {"init": rng.normal(size=3), "x": rng.normal(size=(3, 5)), "w": rng.normal(size=3)}
    program = gc.onnx.load(model)
    assert any(n.op == "scan" for n in program.graph.nodes)
    # (onnx.reference runs only the default axes and directions)
    total, outs = feed["init"], []
    for t in reversed(range(5)):
        total = total + feed["x"][:, t]
        outs.append(total * np.exp(feed["w"]))
    expected = [total, np.stack(outs[::-1], axis=1)]
    got = gc.compile(program)(*feed.values())
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    total, ys = program.outputs
    loss = total.sum() + (ys * gc.const(rng.normal(size=(3, 5)))).sum()
    gc.check_grad(loss, list(program.inputs), feed)


@pytest.mark.parametrize("known", [True, False])
def test_if_takes_its_branch(known):
    """If: a condition known while importing imports only its branch; one computed at run
    time selects between both branches' outputs; branches of different shapes then refuse."""
    t = TensorProto.FLOAT

    def branch(op, name, shape=(2,)):
        return helper.make_graph([helper.make_node(op, ["x"], [name])], name, [],
                                 [helper.make_tensor_value_info(name, t, list(shape))])  # fmt: skip

    cond = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
        "c", TensorProto.BOOL, [], [True]))] if known else []  # fmt: skip
    nodes = cond + [helper.make_node("If", ["c"], ["y"], then_branch=branch("Exp", "a"),
                                     else_branch=branch("Neg", "b"), name="choice")]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", t, [2])]
    if not known:
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", t, None)])
    program = gc.onnx.load(model)
    x = np.array([0.5, -1.0], np.float32)
    step = gc.compile(program)
    if known:
        assert not any(n.op == "neg" for n in program.graph.nodes)
        np.testing.assert_allclose(step(x)[0], np.exp(x), rtol=1e-6)
        return
    np.testing.assert_allclose(step(x, np.array(True))[0], np.exp(x), rtol=1e-6)
    np.testing.assert_array_equal(step(x, np.array(False))[0], -x)
    values = helper.make_tensor("v", t, [3], [1, 2, 3])
    three = helper.make_node("Constant", [], ["b"], value=values)
    model.graph.node[0].attribute[1].g.CopyFrom(helper.make_graph(
        [three], "b", [], [helper.make_tensor_value_info("b", t, [3])]))  # fmt: skip
    with pytest.raises(UnsupportedError, match=r"'choice' \(If, opset 18\): branches"):
        gc.onnx.load(model)
