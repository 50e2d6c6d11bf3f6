"""Pre-quantized files as toolkits other than onnxruntime write them (hunt 22): brevitas' QCDQ export
(QuantizeLinear -> Clip -> DequantizeLinear, weights per output channel), qonnx's Quant -> QCDQ conversion and
torch's fake-quant exports with reduce_range (an integer Clip between the pair)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_qdq import strip_qdq


def _cos(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _qcdq(x: str, out: str, scale, zero, lo: int, hi: int, inits: list, axis: int = 1, dtype=np.int8) -> list:
    """QuantizeLinear -> Clip(lo, hi) on the integers -> DequantizeLinear, brevitas' QCDQ triple."""
    scale = np.asarray(scale, np.float32)
    zero = np.zeros(scale.shape, dtype) + np.asarray(zero, dtype)
    inits += [numpy_helper.from_array(scale, f"{out}/s"), numpy_helper.from_array(zero, f"{out}/z"),
              numpy_helper.from_array(np.array(lo, dtype), f"{out}/lo"), numpy_helper.from_array(np.array(hi, dtype), f"{out}/hi")]
    return [helper.make_node("QuantizeLinear", [x, f"{out}/s", f"{out}/z"], [f"{out}/q"], axis=axis),
            helper.make_node("Clip", [f"{out}/q", f"{out}/lo", f"{out}/hi"], [f"{out}/c"]),
            helper.make_node("DequantizeLinear", [f"{out}/c", f"{out}/s", f"{out}/z"], [out], axis=axis)]


def _brevitas_like(tmp_path):
    """x -> QCDQ (int8, narrow) -> conv (weights QCDQ per output channel, [-127, 127]) -> relu -> QCDQ of a
    4-bit activation in an int8 container ([-8, 7]) -> mean -> gemm (weights QCDQ per channel) -> y."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 0.3, (5, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(wf, "wf"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "bf")]
    nodes = _qcdq("x", "xq", 3.0 / 127, 0, -127, 127, inits)
    nodes += _qcdq("w", "wq", np.abs(w).reshape(8, -1).max(1) / 127, 0, -127, 127, inits, axis=0)
    nodes += [helper.make_node("Conv", ["xq", "wq", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])]
    nodes += _qcdq("r", "rq", 0.25, 0, -8, 7, inits)
    nodes += [helper.make_node("ReduceMean", ["rq"], ["m"], axes=[2, 3], keepdims=0)]
    nodes += _qcdq("wf", "wfq", np.abs(wf).max(1) / 127, 0, -127, 127, inits, axis=0)
    nodes += [helper.make_node("Gemm", ["m", "wfq", "bf"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "brevitas_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "qcdq.onnx"
    onnx.save(model, path)
    return path


def test_qcdq_weights_fold_and_integer_clips_become_clamps(tmp_path):
    """Per-channel weight triples became constants (they were left as DequantizeLinear, which the
    integer-only path refused); the 4-bit activation's Clip(-8, 7) is the clamp it imposes."""
    path = _brevitas_like(tmp_path)
    model = onnx.load(path)
    assert strip_qdq(model) > 0
    ops = [n.op_type for n in model.graph.node]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops), ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["wq"].dtype == np.float32 and inits["wq"].shape == (8, 4, 3, 3)
    # the relu's QCDQ clamps at (-8 .. 7) * 0.25: what reaches the mean is at most 1.75
    clamp = next(n for n in model.graph.node if n.op_type == "Clip" and n.output[0] == "rq")
    assert float(inits[clamp.input[2]]) == 1.75 and float(inits[clamp.input[1]]) == -2.0
    xs = np.random.default_rng(1).normal(0, 1, (4, 1, 4, 8, 8)).astype(np.float32)
    ref, got = ort.InferenceSession(str(path)), ort.InferenceSession(model.SerializeToString())
    for x in xs:  # the float graph is the file without its rounding
        assert _cos(got.run(None, {"x": x})[0], ref.run(None, {"x": x})[0]) > 0.99


def test_qcdq_file_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _brevitas_like(tmp_path)
    xs = np.random.default_rng(2).normal(0, 1, (8, 1, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(path))
    x = np.random.default_rng(3).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    assert _cos(art.run({"x": x})["y"], ref.run(None, {"x": x})[0]) > 0.98


def test_fake_quant_export_with_shared_zero_points_and_reduce_range(tmp_path):
    """torch's fake-quant export (torch.onnx, TorchScript): a zero point shared through an Identity node,
    reduce_range as Clip(q, '', 127) on the uint8 tensor. The zero point was read as absent (0, and the
    clamp cut every negative value): the stripped graph was at cosine 0.02 to the file (EfficientNet-Lite0)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(64, np.uint8), "zp"), numpy_helper.from_array(np.array(127, np.uint8), "hi"),
             numpy_helper.from_array((np.abs(w).reshape(6, -1).max(1) / 63).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(6, np.int8), "wz")]
    nodes = [helper.make_node("Identity", ["zp"], ["zp_shared"])]
    for x, out in (("x", "xq"), ("c", "y")):
        nodes += [helper.make_node("QuantizeLinear", [x, "s", "zp_shared"], [f"{out}/q"]),
                  helper.make_node("Clip", [f"{out}/q", "", "hi"], [f"{out}/c"]),
                  helper.make_node("DequantizeLinear", [f"{out}/c", "s", "zp_shared"], [out])]
        if x == "x":
            nodes += [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq/q"], axis=0),
                      helper.make_node("DequantizeLinear", ["wq/q", "ws", "wz"], ["wq"], axis=0),
                      helper.make_node("Conv", ["xq", "wq"], ["c"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "fake_quant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "fq.onnx"
    onnx.save(model, path)
    assert strip_qdq(model) > 0
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in model.graph.node}
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert ref.min() < -1.0 and got.min() < -1.0  # clamped at (0 - 64) * 0.05 = -3.2, not at 0
    assert _cos(got, ref) > 0.99


def test_qonnx_nodes_without_a_standard_form_are_refused_by_name(tmp_path):
    """brevitas' export_qonnx writes qonnx.custom_op.general nodes; Quant nodes of weights and of 8-bit-or-narrower
    activations are read (tests/test_onnx_qonnx.py). What has no QuantizeLinear form (a Trunc, a 16-bit activation
    Quant) is refused in both modes, each node named, with the conversion to QCDQ (onnxruntime cannot load them)."""
    import pytest

    from frontends.errors import UnsupportedModelError
    from frontends.onnx_import import load_onnx

    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s", 0.1), ("z", 0.0), ("b", 16.0),
                                                                              ("b8", 8.0))]
    quant = helper.make_node("Quant", ["x", "s", "z", "b"], ["q"], name="act_quant", domain="qonnx.custom_op.general",
                             signed=1, narrow=0, rounding_mode="ROUND")
    trunc = helper.make_node("Trunc", ["q", "s", "z", "b", "b8"], ["y"], name="pool_trunc",
                             domain="qonnx.custom_op.general", rounding_mode="FLOOR")
    graph = helper.make_graph([quant, trunc], "qonnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "q.onnx")
    for allow in (False, True):
        with pytest.raises(UnsupportedModelError, match=r"2 QONNX node\(s\)(.|\n)*Quant \(node act_quant\)(.|\n)*"
                                                        r"Trunc \(node pool_trunc\)(.|\n)*QuantToQCDQ"):
            load_onnx(tmp_path / "q.onnx", allow_unsupported=allow)


def test_matmul_of_two_dynamically_quantized_activations(tmp_path):
    """optimum's ORTQuantizer (avx512_vnni / arm64, is_static=False) quantizes q @ k^T and attention @ v with
    DynamicQuantizeLinear on both operands: MatMulInteger(a, b) had no constant weight and stayed, refused
    integer-only (24 nodes in all-MiniLM-L6-v2). Now the float operands' MatMul."""
    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["k"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1])]
    for t in ("x", "kt"):
        nodes.append(helper.make_node("DynamicQuantizeLinear", [t], [f"{t}_q", f"{t}_s", f"{t}_z"]))
    nodes += [helper.make_node("MatMulInteger", ["x_q", "kt_q", "x_z", "kt_z"], ["acc"]),
              helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["x_s", "kt_s"], ["scales"]), helper.make_node("Mul", ["accf", "scales"], ["y"])]
    graph = helper.make_graph(nodes, "dyn_qk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    stripped = onnx.load(path)
    assert strip_qdq(stripped) > 0
    ops = {n.op_type for n in stripped.graph.node}
    assert not ops & {"MatMulInteger", "DynamicQuantizeLinear"}, ops
    xs = rng.normal(0, 1, (8, 1, 8, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.normal(0, 1, (1, 8, 16)).astype(np.float32)
    ref = x @ (x @ inits_w(inits)).transpose(0, 2, 1)
    assert _cos(art.run({"x": x})["y"], ref) > 0.99


def inits_w(inits):
    return numpy_helper.to_array(inits[0])


def test_static_qdq_around_an_additive_mask(tmp_path):
    """quantize_static (QDQ, here 16-bit activations) puts a pair on BERT's additive mask (Where -> float32's
    lowest) and on logits + mask: grids of step ~5e33 whose clamps hid the mask from the softmax ("softmax
    logit scale 2.08e+34 too coarse") and cut the logits at 0 (all-MiniLM-L6-v2 refused integer-only). Such
    pairs are no clamps now: the float graph, integer-only."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    f32 = np.finfo(np.float32)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (16, 16)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(f32.min, np.float32), "fill"),
              numpy_helper.from_array(np.array(0.0, np.float32), "open"), numpy_helper.from_array(np.array([1, 1, 8], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", w], [t]) for w, t in (("wq", "q"), ("wk", "k"), ("wv", "v"))]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["logits"]),
              helper.make_node("Equal", ["attention_mask", "zero"], ["masked"]),
              helper.make_node("Where", ["masked", "fill", "open"], ["bias"]), helper.make_node("Reshape", ["bias", "shape"], ["bias3"]),
              helper.make_node("Add", ["logits", "bias3"], ["scores"]), helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "masked_attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
                                                         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "float.onnx")
    xs = rng.normal(0, 1, (8, 1, 8, 16)).astype(np.float32)
    masks = np.ones((8, 1, 8), np.int64)
    masks[:, :, 6:] = 0

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": x, "attention_mask": m} for x, m in zip(xs, masks))

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt16, weight_type=QuantType.QInt8)
    stripped = onnx.load(tmp_path / "qdq.onnx")
    assert {"bias3", "scores"} <= {i for n in stripped.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    np.savez(tmp_path / "calib.npz", x=xs, attention_mask=masks)
    art = load(compile_model(tmp_path / "qdq.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.normal(0, 1, (1, 8, 16)).astype(np.float32)
    feed = {"x": x, "attention_mask": masks[0]}
    ref = ort.InferenceSession(str(tmp_path / "float.onnx")).run(None, feed)[0]
    assert _cos(art.run(feed)["y"], ref) > 0.99


def test_one_element_grids_and_back_to_back_clips(tmp_path):
    """torch's TorchScript export writes scale and zero point as 1-element 1-d tensors (the mask-fill check
    failed on them: "only 0-dimensional arrays can be converted"), and a pair's clamp, the model's ReLU6 and the
    next pair's clamp back to back: those clips become one."""
    inits = [numpy_helper.from_array(np.array([0.1], np.float32), "s"), numpy_helper.from_array(np.array([128], np.uint8), "zp"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["a/q"]), helper.make_node("DequantizeLinear", ["a/q", "s", "zp"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["b/q"]), helper.make_node("DequantizeLinear", ["b/q", "s", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "clips", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "clips.onnx"
    onnx.save(model, path)
    assert strip_qdq(model) > 0
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1 and not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in model.graph.node}
    lo, hi = (float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == n))) for n in clips[0].input[1:])
    assert (lo, hi) == (0.0, 6.0)
    x = np.linspace(-20, 20, 64, dtype=np.float32)[None]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.clip(x, 0, 6))


def test_integer_clip_chains_are_not_merged_into_float_bounds():
    """Back-to-back Clips merge into one only where their bounds are float: an int32 chain (an index
    clamped twice) keeps its integer bounds, and the graph stays valid for onnxruntime."""
    from frontends.onnx_qdq import _merge_clips

    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["a"]), helper.make_node("Clip", ["a", "lo2", "hi2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4])],
        [numpy_helper.from_array(np.array(v, np.int32), n) for n, v in (("lo", -5), ("hi", 9), ("lo2", 0), ("hi2", 6))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert _merge_clips(model) == 0
    onnx.checker.check_model(model)
    x = np.array([-9, -1, 3, 12], np.int32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, np.clip(np.clip(x, -5, 9), 0, 6))
