"""1-D convs and pools (audio front ends) compile integer-only as conv2d / pool2d of height one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _model(path) -> str:
    rng = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [init("w1", rng.standard_normal((8, 2, 5)) * 0.3), init("b1", rng.standard_normal(8) * 0.1),
             init("w2", rng.standard_normal((8, 2, 3)) * 0.3), init("w3", rng.standard_normal((4, 8, 1)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 1], strides=[2]),
             helper.make_node("Relu", ["c1"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["r1"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[2, 2], dilations=[2], group=4),
             helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[2], strides=[2]),
             helper.make_node("Conv", ["p2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def test_conv1d_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _model(tmp_path / "conv1d.onnx")
    x = np.random.default_rng(1).standard_normal((16, 1, 2, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    model = load(compile_model(path, "x86", tmp_path / "c.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    text = (tmp_path / "c.artifact" / "model.relax.py").read_text()
    assert "conv1d" not in text and "pool1d" not in text
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in x[:4]:
        ref, out = session.run(None, {"x": sample})[0].ravel(), model.run({"x": sample})["y"].ravel()
        assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def test_conv1d_transpose_compiles_integer_only(tmp_path):
    """A 1-D transposed conv (vocoders, audio decoders) lowers as a 2-D one of height one."""
    from runtime import compile_model, load

    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((8, 4, 4)) * 0.3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], pads=[1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ct.onnx")
    xs = np.random.default_rng(1).standard_normal((8, 1, 8, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "ct.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(tmp_path / "ct.onnx")).run(None, {"x": xs[2]})[0].ravel()
    out = art.run({"x": xs[2]})["y"].ravel()
    assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def test_conv_transpose_output_shape_is_honoured(tmp_path):
    """ConvTranspose with output_shape (TVM's converter ignores it: the output came out 9x7) gets the pads and
    output padding onnxruntime derives: 10x8, equal to onnxruntime."""
    from runtime import compile_model, load

    w = numpy_helper.from_array((np.random.default_rng(2).standard_normal((1, 2, 3, 3)) * 0.3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2],
                                                output_shape=[10, 8])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cts.onnx")
    xs = np.random.default_rng(3).standard_normal((8, 1, 1, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "cts.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    ref = ort.InferenceSession(str(tmp_path / "cts.onnx")).run(None, {"x": xs[2]})[0]
    out = art.run({"x": xs[2]})["y"]
    assert out.shape == ref.shape == (1, 2, 10, 8)
    assert ref.ravel() @ out.ravel() / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999
