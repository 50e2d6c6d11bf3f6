"""TFLite models as users convert them to ONNX (hunt 23): tf2onnx's `--tflite` conversion of full-integer
int8 / uint8 models (TFLiteConverter with TFLITE_BUILTINS_INT8 and inference_input_type / output_type
int8 or uint8), written here with onnx.helper in the form tf2onnx 1.17 writes: an int8 graph input ->
Transpose (NHWC -> NCHW) -> DequantizeLinear, weights as per-channel DequantizeLinear of int8 constants,
int32 biases likewise, fused activations as a Clip before each QuantizeLinear -> DequantizeLinear pair, a
Reshape on the integers between a pair, and the int8 output as TFL_QUANTIZE's QuantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_qdq import strip_qdq


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _const(inits: list, name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _qdq(x: str, out: str, scale: float, zero: int, inits: list, dtype=np.int8) -> list:
    """TFLite's requantize between two ops as tf2onnx writes it: QuantizeLinear -> DequantizeLinear."""
    s, z = _const(inits, f"{out}/s", np.float32(scale)), _const(inits, f"{out}/z", dtype(zero))
    return [helper.make_node("QuantizeLinear", [x, s, z], [f"{out}/q"]),
            helper.make_node("DequantizeLinear", [f"{out}/q", s, z], [out])]


def _weight(inits: list, name: str, w: np.ndarray, axis: int, bits_dtype=np.int8) -> list:
    """A per-channel int8 weight (symmetric, TFLite's -127..127) as DequantizeLinear of the integer constant."""
    amax = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
    scale = (amax / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(bits_dtype)
    _const(inits, f"{name}/q", q), _const(inits, f"{name}/s", scale)
    _const(inits, f"{name}/z", np.zeros(scale.shape, bits_dtype))
    return [helper.make_node("DequantizeLinear", [f"{name}/q", f"{name}/s", f"{name}/z"], [name], axis=axis)]


def _bias(inits: list, name: str, b: np.ndarray, scale: np.ndarray) -> list:
    """TFLite's int32 bias at the input scale times each channel's weight scale."""
    q = np.round(b / scale).astype(np.int32)
    _const(inits, f"{name}/q", q), _const(inits, f"{name}/s", scale.astype(np.float32))
    _const(inits, f"{name}/z", np.zeros(scale.shape, np.int32))
    return [helper.make_node("DequantizeLinear", [f"{name}/q", f"{name}/s", f"{name}/z"], [name], axis=0)]


def _integer_only(tmp_path, path, calib: np.ndarray):
    """The file compiled for x86, calibrated on `calib` (samples of its one input), checked integer-only."""
    from runtime import compile_model, load

    np.savez(tmp_path / "calib.npz", input=calib)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    return art


def _full_integer_cnn(path, io_dtype=np.int8):
    """int8 NHWC image -> Transpose -> DQ -> conv 3x3 (+ReLU6) -> QDQ -> depthwise 3x3 (+ReLU6) -> QDQ ->
    global average pool -> Q -> Reshape -> DQ -> fully connected -> Q: the int8 logits (graph output)."""
    rng = np.random.default_rng(0)
    inits: list = []
    x_scale, x_zero = 2.0 / 255, -1 if io_dtype == np.int8 else 127
    act_scale, act_zero = 6.0 / 255, -128 if io_dtype == np.int8 else 0
    act_t = np.int8 if io_dtype == np.int8 else np.uint8
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 0.3, (8, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2])]
    xs, xz = _const(inits, "x/s", np.float32(x_scale)), _const(inits, "x/z", io_dtype(x_zero))
    nodes += [helper.make_node("DequantizeLinear", ["x_nchw", xs, xz], ["x"])]
    nodes += _weight(inits, "w1", w1, 0)
    nodes += _bias(inits, "b1", rng.normal(0, 0.1, 8), x_scale * np.abs(w1).reshape(8, -1).max(1) / 127)
    nodes += [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
              helper.make_node("Clip", ["c1", _const(inits, "zero", np.float32(0)), _const(inits, "six", np.float32(6))],
                               ["r1"])]
    nodes += _qdq("r1", "a1", act_scale, act_zero, inits, act_t)
    nodes += _weight(inits, "w2", w2, 0)
    nodes += _bias(inits, "b2", rng.normal(0, 0.1, 8), act_scale * np.abs(w2).reshape(8, -1).max(1) / 127)
    nodes += [helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
              helper.make_node("Clip", ["c2", "zero", "six"], ["r2"])]
    nodes += _qdq("r2", "a2", act_scale, act_zero, inits, act_t)
    ps, pz = _const(inits, "p/s", np.float32(0.02)), _const(inits, "p/z", act_t(act_zero))
    nodes += [helper.make_node("GlobalAveragePool", ["a2"], ["pool"]),
              helper.make_node("QuantizeLinear", ["pool", ps, pz], ["pool/q"]),
              helper.make_node("Reshape", ["pool/q", _const(inits, "shape", np.array([-1, 8], np.int64))], ["flat/q"]),
              helper.make_node("DequantizeLinear", ["flat/q", ps, pz], ["flat"])]
    nodes += _weight(inits, "wf", wf, 1)
    ys, yz = _const(inits, "y/s", np.float32(0.05)), _const(inits, "y/z", io_dtype(-10 if io_dtype == np.int8 else 118))
    nodes += [helper.make_node("MatMul", ["flat", "wf"], ["logits"]),
              helper.make_node("QuantizeLinear", ["logits", ys, yz], ["output"])]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(io_dtype))
    graph = helper.make_graph(nodes, "tflite_int8", [helper.make_tensor_value_info("input", elem, [1, 12, 12, 3])],
                              [helper.make_tensor_value_info("output", elem, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _images(count: int, dtype, seed: int) -> np.ndarray:
    """Smooth random images (a gradient plus blobs) as the file's integer codes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:12, 0:12] / 11.0
    out = []
    for _ in range(count):
        img = np.stack([a * yy + b * xx + c for a, b, c in rng.uniform(-1, 1, (3, 3))], -1)
        img += 0.2 * rng.normal(0, 1, img.shape)
        img = np.clip(img, -1, 1)
        q = np.round(img / (2.0 / 255)) + (-1 if dtype == np.int8 else 127)
        info = np.iinfo(dtype)
        out.append(np.clip(q, info.min, info.max).astype(dtype)[None])
    return np.stack(out)


def test_int8_output_quantize_is_an_integer_chain():
    """The int8 output's QuantizeLinear stayed in the graph, and the op check refused it (every
    full-integer TFLite model converted by tf2onnx: `QuantizeLinear (node StatefulPartitionedCall:0_quantize)`);
    it is now Div -> Round -> Add(zp) -> Clip(-128, 127) -> Cast(int8), which computes the same codes."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = _full_integer_cnn(Path(tmp) / "m.onnx")
        model = onnx.load(path)
        assert strip_qdq(model) > 0
        ops = [n.op_type for n in model.graph.node]
        assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops, ops
        assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.INT8
        ref, got = ort.InferenceSession(str(path)), ort.InferenceSession(model.SerializeToString())
        for x in _images(4, np.int8, 1):  # the float graph: the file without its rounding, same codes out
            a, b = ref.run(None, {"input": x})[0], got.run(None, {"input": x})[0]
            assert b.dtype == np.int8 and np.abs(a.astype(int) - b.astype(int)).max() <= 3


def _compiled(tmp_path, io_dtype):
    from runtime import compile_model, load

    path = _full_integer_cnn(tmp_path / "m.onnx", io_dtype)
    np.savez(tmp_path / "calib.npz", input=_images(12, io_dtype, 2))
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    return path, art


def test_full_integer_int8_model_compiles_integer_only(tmp_path):
    path, art = _compiled(tmp_path, np.int8)
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(path))
    for x in _images(4, np.int8, 3):
        y, want = art.run({"input": x})["output"], ref.run(None, {"input": x})[0]
        assert y.dtype == np.int8
        assert _cos((y.astype(np.float64) + 10) * 0.05, (want.astype(np.float64) + 10) * 0.05) > 0.98


def test_full_integer_uint8_model_compiles_integer_only(tmp_path):
    """inference_input_type=tf.uint8: uint8 codes with zero point 127 in and out."""
    path, art = _compiled(tmp_path, np.uint8)
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(path))
    for x in _images(4, np.uint8, 3):
        y, want = art.run({"input": x})["output"], ref.run(None, {"input": x})[0]
        assert y.dtype == np.uint8
        assert _cos(y.astype(np.float64) - 118, want.astype(np.float64) - 118) > 0.98


def test_check_compares_quantized_outputs_as_the_reals_they_stand_for(tmp_path):
    """The compile's check took an int8 output for an argmax and counted equal codes: EfficientNet-Lite0's
    logits from a full-integer TFLite file, 13% equal at cosine 0.996, warned as wrong. Codes of a
    QuantizeLinear output are now compared as (q - zp) * s."""
    from runtime import check

    path = _full_integer_cnn(tmp_path / "m.onnx")
    x = _images(1, np.int8, 4)[0]
    for reference in (str(path), _stripped(path)):  # the file, and the float graph the check runs first
        want = ort.InferenceSession(reference).run(None, {"input": x})[0]
        step = np.where(np.arange(want.size) % 2, 1, -1).reshape(want.shape)
        off_by_one = np.clip(want.astype(np.int16) + step, -128, 127).astype(np.int8)

        class OneStepOff:
            def run(self, sample):
                return {"output": off_by_one}

        (row,) = check.float_agreement(reference, OneStepOff(), {"input": x})
        reals = _cos((off_by_one.astype(np.float64) + 10) * 0.05, (want.astype(np.float64) + 10) * 0.05)
        assert not row.integers and abs(row.cosine - reals) < 1e-9 and abs(row.error - 0.05) < 1e-6, row


def _stripped(path) -> bytes:
    model = onnx.load(path)
    strip_qdq(model)
    return model.SerializeToString()


def _dynamic_range_head(path):
    """A dynamic-range TFLite model as tf2onnx writes it: float input, conv weights as DequantizeLinear of int8
    constants, and the FULLY_CONNECTED's input quantized per call: DynamicQuantizeLinear -> Reshape (on the
    uint8 tensor) -> DequantizeLinear(its run-time scale and zero point) -> MatMul."""
    rng = np.random.default_rng(5)
    inits: list = []
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2])]
    nodes += _weight(inits, "w1", w1, 0)
    nodes += [helper.make_node("Conv", ["x", "w1", _const(inits, "b1", rng.normal(0, 0.1, 8).astype(np.float32))], ["c1"],
                               pads=[1, 1, 1, 1]),
              helper.make_node("Clip", ["c1", _const(inits, "zero", np.float32(0)), _const(inits, "six", np.float32(6))],
                               ["r1"]),
              helper.make_node("GlobalAveragePool", ["r1"], ["pool"]),
              helper.make_node("DynamicQuantizeLinear", ["pool"], ["pool/q", "pool/s", "pool/z"]),
              helper.make_node("Reshape", ["pool/q", _const(inits, "shape", np.array([-1, 8], np.int64))], ["flat/q"]),
              helper.make_node("DequantizeLinear", ["flat/q", "pool/s", "pool/z"], ["flat"])]
    nodes += _weight(inits, "wf", rng.normal(0, 0.3, (8, 5)).astype(np.float32), 1)
    nodes += [helper.make_node("MatMul", ["flat", "wf"], ["output"])]
    graph = helper.make_graph(nodes, "tflite_dynamic_range",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 12, 12, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_dynamic_range_fully_connected_input_is_the_float_tensor(tmp_path):
    """DequantizeLinear(Reshape(DynamicQuantizeLinear(x))) with the run-time scale: refused before (a
    DynamicQuantizeLinear and a DequantizeLinear of a non-constant scale: every dynamic-range TFLite model
    with a dense layer); now Reshape(x), and the file compiles integer-only."""
    path = _dynamic_range_head(tmp_path / "m.onnx")
    model = onnx.load(path)
    assert strip_qdq(model) > 0
    ops = [n.op_type for n in model.graph.node]
    assert not {"DynamicQuantizeLinear", "DequantizeLinear"} & set(ops), ops
    xs = np.random.default_rng(6).uniform(-1, 1, (12, 1, 12, 12, 3)).astype(np.float32)
    ref, got = ort.InferenceSession(str(path)), ort.InferenceSession(model.SerializeToString())
    for x in xs[:3]:  # the float graph: the file without the per-call rounding
        assert _cos(got.run(None, {"input": x})[0], ref.run(None, {"input": x})[0]) > 0.999
    art = _integer_only(tmp_path, path, xs[:8])
    for x in xs[8:]:
        assert _cos(art.run({"input": x})["output"], ref.run(None, {"input": x})[0]) > 0.98


def _hard_sigmoid_block(path):
    """A MobileNetV3 hard sigmoid as TFLiteConverter (TF >= 2.13) writes it and tf2onnx 1.17 leaves it:
    conv -> x * (1/6) + 0.5 -> TFL_RELU_0_TO_1 (an unconverted builtin, default domain) -> multiply."""
    rng = np.random.default_rng(7)
    inits: list = []
    nodes = [helper.make_node("Transpose", ["input"], ["x"], perm=[0, 3, 1, 2])]
    nodes += _weight(inits, "w1", rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), 0)
    nodes += [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
              helper.make_node("Mul", ["c1", _const(inits, "sixth", np.float32(1 / 6))], ["m1"]),
              helper.make_node("Add", ["m1", _const(inits, "half", np.float32(0.5))], ["a1"]),
              helper.make_node("TFL_RELU_0_TO_1", ["a1"], ["gate"], name="relu01"),
              helper.make_node("Mul", ["c1", "gate"], ["output"])]
    graph = helper.make_graph(nodes, "tflite_relu01", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_unconverted_relu_0_to_1_is_a_clip(tmp_path):
    """tf2onnx leaves TFLite's RELU_0_TO_1 (TF >= 2.13's hard sigmoid tail) as a `TFL_RELU_0_TO_1` node,
    which onnx's checker refused ('invalid ONNX model: No Op registered for TFL_RELU_0_TO_1'): every
    MobileNetV3-style TFLite model made by a recent TensorFlow. It is Clip(x, 0, 1) now."""
    from frontends.onnx_tflite import tflite_ops_to_standard
    path = _hard_sigmoid_block(tmp_path / "m.onnx")
    model = onnx.load(path)
    assert tflite_ops_to_standard(model) == 1
    onnx.checker.check_model(model)
    ref = ort.InferenceSession(model.SerializeToString())
    xs = np.random.default_rng(8).uniform(-1, 1, (10, 1, 8, 8, 3)).astype(np.float32)
    c1 = ort.InferenceSession(_with_output(model, "c1")).run(None, {"input": xs[0]})[1]
    want = c1 * np.clip(c1 / 6 + 0.5, 0, 1)
    assert np.allclose(ref.run(None, {"input": xs[0]})[0], want, atol=1e-5)
    art = _integer_only(tmp_path, path, xs[:8])
    for x in xs[8:]:
        assert _cos(art.run({"input": x})["output"], ref.run(None, {"input": x})[0]) > 0.99


def _with_output(model, name) -> bytes:
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    extra.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return extra.SerializeToString()


def test_unconverted_gelu_both_forms():
    """TFL_GELU (keras gelu converted by TFLite; tf2onnx 1.17 has no handler) as Erf or, with
    approximate=1, Tanh arithmetic."""
    from math import erf, pi, sqrt, tanh

    from frontends.onnx_tflite import tflite_ops_to_standard

    x = np.linspace(-4, 4, 33, dtype=np.float32).reshape(1, 33)
    for approximate, exact in ((0, lambda v: 0.5 * v * (1 + erf(v / sqrt(2)))),
                               (1, lambda v: 0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v**3))))):
        node = helper.make_node("TFL_GELU", ["x"], ["y"], name="gelu", approximate=approximate)
        graph = helper.make_graph([node], "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 33])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 33])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        assert tflite_ops_to_standard(model) == 1
        y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        assert np.allclose(y, [[exact(float(v)) for v in x[0]]], atol=1e-5)


def test_check_runs_the_file_with_its_tflite_ops_as_onnx_ops(tmp_path):
    """onnxruntime cannot load a file with TFL_RELU_0_TO_1 (the compile's check was skipped: 'InvalidGraph');
    the check runs the file with those ops written as ONNX ops instead."""
    from runtime import check

    path = _hard_sigmoid_block(tmp_path / "m.onnx")
    refs = check.references(path)  # its weights are int8 DequantizeLinears: the float graph first, then the file
    label, reference = refs[-1]
    assert len(refs) == 2 and "TFLite" in label and isinstance(reference, bytes)
    x = np.random.default_rng(9).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    want = ort.InferenceSession(reference).run(None, {"input": x})[0]

    class Same:
        def run(self, sample):
            return {"output": want}

    (row,) = check.float_agreement(reference, Same(), {"input": x})
    assert row.cosine > 0.9999


def _tflite_while_rnn(path, steps: int = 6, dynamic_range: bool = False):
    """A Keras RNN layer converted to TFLite (a WHILE op) and by tf2onnx to ONNX: Loop(M = INT64_MAX, cond =
    Less(0.0, n)) whose body reads step `i` of the time-major input with Gather, updates h = tanh(x W + h U),
    counts i + 1 and recomputes its cond as Less(Cast(i + 1, float), n)."""
    rng = np.random.default_rng(10)
    inits: list = []
    body_inits = [numpy_helper.from_array(rng.normal(0, 0.4, (4, 6)).astype(np.float32), "W"),
                  numpy_helper.from_array(rng.normal(0, 0.4, (6, 6)).astype(np.float32), "U"),
                  numpy_helper.from_array(np.array(1, np.int32), "one"),
                  numpy_helper.from_array(np.array(float(steps), np.float32), "n")]
    product = [helper.make_node("MatMul", ["x_t", "W"], ["xw"])]
    if dynamic_range:  # TFLite's dynamic-range cell: the input quantized per call, int8 weights dequantized
        w = numpy_helper.to_array(body_inits[0])
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        body_inits[0] = numpy_helper.from_array(np.round(w / scale).astype(np.int8), "W")
        body_inits += [numpy_helper.from_array(scale, "W/s"), numpy_helper.from_array(np.zeros(6, np.int8), "W/z")]
        product = [helper.make_node("DequantizeLinear", ["W", "W/s", "W/z"], ["W/f"], axis=1),
                   helper.make_node("DynamicQuantizeLinear", ["x_t"], ["x_t/q", "x_t/s", "x_t/z"]),
                   helper.make_node("DequantizeLinear", ["x_t/q", "x_t/s", "x_t/z"], ["x_t/f"]),
                   helper.make_node("MatMul", ["x_t/f", "W/f"], ["xw"])]
    body = helper.make_graph(
        [helper.make_node("Gather", ["xs_in", "i_in"], ["x_t"]),
         *product, helper.make_node("MatMul", ["h_in", "U"], ["hu"]),
         helper.make_node("Add", ["xw", "hu"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Add", ["i_in", "one"], ["i_out"]),
         helper.make_node("Cast", ["i_out"], ["i_float"], to=TensorProto.FLOAT),
         helper.make_node("Less", ["i_float", "n"], ["cond_out"]),
         helper.make_node("Identity", ["xs_in"], ["xs_out"]),
         helper.make_node("Identity", ["h_out"], ["y_t"])],
        "while_body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("i_in", TensorProto.INT32, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("xs_in", TensorProto.FLOAT, [steps, 1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("i_out", TensorProto.INT32, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 6]),
         helper.make_tensor_value_info("xs_out", TensorProto.FLOAT, [steps, 1, 4]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, 6])], body_inits)
    nodes = [helper.make_node("Transpose", ["input"], ["xs"], perm=[1, 0, 2]),
             helper.make_node("Less", [_const(inits, "zero_f", np.float32(0)), _const(inits, "n_f", np.float32(steps))],
                              ["first"]),
             helper.make_node("Loop", [_const(inits, "max_iterations", np.array(2**63 - 1, np.int64)), "first",
                                       _const(inits, "i0", np.array(0, np.int32)),
                                       _const(inits, "h0", np.zeros((1, 6), np.float32)), "xs"],
                              ["i_end", "h_end", "xs_end", "ys"], body=body, name="while_loop"),
             helper.make_node("Transpose", ["ys"], ["output"], perm=[1, 0, 2])]
    graph = helper.make_graph(nodes, "tflite_while", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, steps, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, steps, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_tflite_while_loop_with_int64_max_trip_count_unrolls(tmp_path):
    """A Keras GRU converted to TFLite and by tf2onnx: a Loop with M = INT64_MAX whose body counts to the
    sequence length. It was refused ('1 control-flow node(s): Loop (node while_loop)': M beyond MAX_STEPS);
    the cond alone now decides, as for a Loop without M."""
    path = _tflite_while_rnn(tmp_path / "m.onnx")
    xs = np.random.default_rng(11).normal(0, 1, (10, 1, 6, 4)).astype(np.float32)
    art = _integer_only(tmp_path, path, xs[:8])
    ref = ort.InferenceSession(str(path))
    for x in xs[8:]:
        assert _cos(art.run({"input": x})["output"], ref.run(None, {"input": x})[0]) > 0.99


def _concat_on_integers(path):
    """PP-OCR's DB head as TFLite quantizes it and tf2onnx writes it: two branches quantized to one grid, a
    Concat of the int8 tensors, one DequantizeLinear after it; the sigmoid map quantized and Reshaped on
    the integers into the int8 graph output."""
    rng = np.random.default_rng(12)
    inits: list = []
    nodes = [helper.make_node("DequantizeLinear", ["input", _const(inits, "x/s", np.float32(2 / 255)),
                                                   _const(inits, "x/z", np.int8(-1))], ["x"])]
    for k in range(2):
        w = rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32)
        nodes += _weight(inits, f"w{k}", w, 0)
        nodes += [helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
                  helper.make_node("QuantizeLinear", [f"r{k}", _const(inits, f"a{k}/s", np.float32(0.03)),
                                                      _const(inits, f"a{k}/z", np.int8(-128))], [f"a{k}/q"])]
    nodes += [helper.make_node("Concat", ["a0/q", "a1/q"], ["cat/q"], axis=1),
              helper.make_node("DequantizeLinear", ["cat/q", "a0/s", "a0/z"], ["cat"])]
    nodes += _weight(inits, "wh", rng.normal(0, 0.4, (1, 8, 3, 3)).astype(np.float32), 0)
    nodes += [helper.make_node("Conv", ["cat", "wh"], ["logit"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["logit"], ["prob"]),
              helper.make_node("QuantizeLinear", ["prob", _const(inits, "p/s", np.float32(1 / 256)),
                                                  _const(inits, "p/z", np.int8(-128))], ["prob/q"]),
              helper.make_node("Reshape", ["prob/q", _const(inits, "shape", np.array([1, 10, 10, 1], np.int64))],
                               ["output"])]
    graph = helper.make_graph(nodes, "tflite_concat", [helper.make_tensor_value_info("input", TensorProto.INT8, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("output", TensorProto.INT8, [1, 10, 10, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_concat_of_int8_tensors_and_reshaped_int8_output(tmp_path):
    """Both were left as QuantizeLinears the op check refused (PP-OCRv4's detector through onnx2tf and
    TFLite full-integer: 'QuantizeLinear (node .../ResizeNearestNeighbor_quantize)' x5 and the
    Sigmoid's); the Concat is now dequantized part by part and the output's quantize is written out
    before its Reshape."""
    path = _concat_on_integers(tmp_path / "m.onnx")
    model = onnx.load(path)
    assert strip_qdq(model) > 0
    ops = [n.op_type for n in model.graph.node]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops), ops
    rng = np.random.default_rng(13)
    xs = np.clip(rng.normal(0, 60, (10, 1, 1, 3, 10, 10)), -128, 127).astype(np.int8)
    art = _integer_only(tmp_path, path, xs[:8, 0])
    ref = ort.InferenceSession(str(path))
    for x in xs[8:, 0]:
        y, want = art.run({"input": x})["output"], ref.run(None, {"input": x})[0]
        assert y.dtype == np.int8 and y.shape == (1, 10, 10, 1)
        assert _cos(y.astype(np.float64) + 128, want.astype(np.float64) + 128) > 0.99


def _detector_head(path):
    """A detector head as TFLite quantizes it and tf2onnx writes it (PicoDet through onnx2tf): a conv's int8
    codes Sliced into boxes, Reshaped and Transposed straight into an int8 graph output, and into scores
    dequantized for a Sigmoid; two int8 score maps Concatenated and Transposed on the integers before one
    DequantizeLinear."""
    rng = np.random.default_rng(14)
    inits: list = []
    nodes = [helper.make_node("DequantizeLinear", ["input", _const(inits, "x/s", np.float32(2 / 255)),
                                                   _const(inits, "x/z", np.int8(-1))], ["x"])]
    for k in range(2):
        nodes += _weight(inits, f"w{k}", rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), 0)
        nodes += [helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1])]
    hs, hz = _const(inits, "h/s", np.float32(0.05)), _const(inits, "h/z", np.int8(3))
    ps, pz = _const(inits, "p/s", np.float32(1 / 256)), _const(inits, "p/z", np.int8(-128))
    ax, lo, mid, hi = (_const(inits, n, np.array(v, np.int64)) for n, v in
                       (("axis", [1]), ("lo", [0]), ("mid", [2]), ("hi", [4])))
    nodes += [helper.make_node("QuantizeLinear", ["c0", hs, hz], ["h/q"]),
              helper.make_node("Slice", ["h/q", lo, mid, ax], ["box/q"]),
              helper.make_node("Reshape", ["box/q", _const(inits, "shape", np.array([1, 2, 36], np.int64))], ["box/r"]),
              helper.make_node("Transpose", ["box/r"], ["boxes"], perm=[0, 2, 1]),
              helper.make_node("Slice", ["h/q", mid, hi, ax], ["cls/q"]),
              helper.make_node("DequantizeLinear", ["cls/q", hs, hz], ["cls"]),
              helper.make_node("Sigmoid", ["cls"], ["p0"]),
              helper.make_node("Sigmoid", ["c1"], ["p1"]),
              helper.make_node("QuantizeLinear", ["p0", ps, pz], ["p0/q"]),
              helper.make_node("QuantizeLinear", ["p1", ps, pz], ["p1/q"]),
              helper.make_node("Concat", ["p0/q", "p1/q"], ["cat/q"], axis=1),
              helper.make_node("Transpose", ["cat/q"], ["cat/t"], perm=[0, 2, 3, 1]),
              helper.make_node("DequantizeLinear", ["cat/t", ps, pz], ["cat"]),
              helper.make_node("ReduceMean", ["cat"], ["pooled"], axes=[1, 2], keepdims=0)]
    graph = helper.make_graph(nodes, "tflite_head", [helper.make_tensor_value_info("input", TensorProto.INT8, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("boxes", TensorProto.INT8, [1, 36, 2]),
                               helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_int8_codes_sliced_into_an_output_and_concat_through_a_transpose(tmp_path):
    """PicoDet's full-integer TFLite file through tf2onnx was refused (16 QuantizeLinear): a quantize read
    both by layout ops ending at an int8 graph output and by a dequantize, and a Concat of int8 maps read
    through a Transpose. The output branch now takes the float values quantized again to the same grid, and
    the Concat is dequantized part by part through the Transpose."""
    from runtime import check

    path = _detector_head(tmp_path / "m.onnx")
    model = onnx.load(path)
    assert strip_qdq(model) > 0
    ops = [n.op_type for n in model.graph.node]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops), ops
    ref, got = ort.InferenceSession(str(path)), ort.InferenceSession(model.SerializeToString())
    xs = np.clip(np.random.default_rng(15).normal(0, 60, (10, 1, 3, 6, 6)), -128, 127).astype(np.int8)
    for x in xs[:2]:  # the float graph: the same codes out (one step where the file rounded in between)
        a, b = ref.run(None, {"input": x}), got.run(None, {"input": x})
        assert b[0].dtype == np.int8 and np.abs(a[0].astype(int) - b[0].astype(int)).max() <= 1
        assert _cos(a[1], b[1]) > 0.999
    assert check._output_grids(str(path)) == {"boxes": (np.float32(0.05), 3.0)}
    art = _integer_only(tmp_path, path, xs[:8])
    for x in xs[8:]:
        y, want = art.run({"input": x}), ref.run(None, {"input": x})
        assert y["boxes"].dtype == np.int8
        assert _cos((y["boxes"].astype(np.float64) - 3) * 0.05, (want[0].astype(np.float64) - 3) * 0.05) > 0.99
        assert _cos(y["pooled"], want[1]) > 0.99


def _unrolled_steps(path):
    """A CRNN's recurrence as TFLite quantizes it and tf2onnx writes it: the conv features' int8 codes
    Transposed, Reshaped and Gathered step by step (constant indices) before each step's DequantizeLinear;
    each step's int8 result Reshaped and Concatenated twice (a Concat of a Concat) before one
    DequantizeLinear."""
    rng = np.random.default_rng(16)
    inits: list = []
    nodes = _qdq("input", "x", 2 / 255, -1, inits)
    nodes += _weight(inits, "w", rng.normal(0, 0.4, (4, 3, 1, 3)).astype(np.float32), 0)
    s, z = _const(inits, "a/s", np.float32(0.02)), _const(inits, "a/z", np.int8(-128))
    t, tz = _const(inits, "t/s", np.float32(1 / 128)), _const(inits, "t/z", np.int8(0))
    nodes += [helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 0, 1]), helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("QuantizeLinear", ["r", s, z], ["r/q"]),
              helper.make_node("Transpose", ["r/q"], ["r/t"], perm=[3, 0, 2, 1]),
              helper.make_node("Reshape", ["r/t", _const(inits, "steps", np.array([3, 4], np.int64))], ["seq/q"])]
    parts = []
    for k in range(3):
        nodes += [helper.make_node("Gather", ["seq/q", _const(inits, f"k{k}", np.array(k, np.int64))], [f"s{k}/q"], axis=0),
                  helper.make_node("DequantizeLinear", [f"s{k}/q", s, z], [f"s{k}"]),
                  helper.make_node("Tanh", [f"s{k}"], [f"h{k}"]),
                  helper.make_node("QuantizeLinear", [f"h{k}", t, tz], [f"h{k}/q"]),
                  helper.make_node("Reshape", [f"h{k}/q", _const(inits, f"row{k}", np.array([1, 1, 4], np.int64))],
                                   [f"h{k}/r"])]
        parts.append(f"h{k}/r")
    nodes += [helper.make_node("Concat", parts[:2], ["cat01/q"], axis=1),
              helper.make_node("Concat", ["cat01/q", parts[2]], ["cat/q"], axis=1),
              helper.make_node("DequantizeLinear", ["cat/q", t, tz], ["output"])]
    graph = helper.make_graph(nodes, "tflite_steps", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 1, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_gathered_steps_and_nested_concats_on_int8(tmp_path):
    """captcha-crnn (CNN + BiLSTM) through onnx2tf and TFLite full-integer was refused (41 QuantizeLinear):
    the steps Gathered out of the int8 features, and the per-step outputs in a Concat of Concats. Gather
    now commutes with the dequantize like the other layout ops, and nested Concats come apart from the
    outside in."""
    path = _unrolled_steps(tmp_path / "m.onnx")
    model = onnx.load(path)
    assert strip_qdq(model) > 0
    ops = [n.op_type for n in model.graph.node]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops), ops
    xs = np.random.default_rng(17).uniform(-1, 1, (10, 1, 3, 1, 3)).astype(np.float32)
    art = _integer_only(tmp_path, path, xs[:8])
    ref = ort.InferenceSession(str(path))
    for x in xs[8:]:
        assert _cos(art.run({"input": x})["output"], ref.run(None, {"input": x})[0]) > 0.99


def test_dynamic_range_recurrence_inside_a_tflite_while_loop(tmp_path):
    """A dynamic-range TFLite LSTM (g2p-id's encoder through onnx2tf): the cell's per-call input quantization
    and its int8 weights live in the WHILE loop's body, which the QDQ rewrite did not enter; after unrolling
    they were refused (DynamicQuantizeLinear, DequantizeLinear). Bodies are rewritten now, and the
    quantized constants the unrolled steps bring are folded."""
    path = _tflite_while_rnn(tmp_path / "m.onnx", dynamic_range=True)
    xs = np.random.default_rng(18).normal(0, 1, (10, 1, 6, 4)).astype(np.float32)
    art = _integer_only(tmp_path, path, xs[:8])
    ref = ort.InferenceSession(str(path))
    for x in xs[8:]:
        assert _cos(art.run({"input": x})["output"], ref.run(None, {"input": x})[0]) > 0.99
