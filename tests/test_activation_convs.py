"""Convs whose weights are activations: Siamese trackers (SiamFC, SiamRPN++, NanoTrack, LightTrack) correlate
the search image's features with the template's, per channel (the template reshaped to [C, 1, h, w], groups C)
or densely (the template as one filter), and dynamic-filter nets predict their kernels. Both operands are 8-bit
activations; the int32 sums are the float conv's on their grids. Refused before: 'conv2d with a non-constant
weight is not supported'."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _tracker_head(path) -> str:
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["search", "w"], ["fs"], pads=[1, 1, 1, 1]), n("Relu", ["fs"], ["rs"]),
             n("Conv", ["template", "w"], ["ft"], pads=[1, 1, 1, 1]), n("Relu", ["ft"], ["rt"]),
             n("Reshape", ["rt", "per_channel"], ["kernel"]),  # [8, 1, 4, 4]
             n("Conv", ["rs", "kernel"], ["depthwise"], group=8),  # [1, 8, 13, 13]
             n("Conv", ["rs", "rt"], ["dense"], strides=[2, 2], pads=[1, 1, 1, 1])]  # [1, 1, 8, 8]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([8, 1, 4, 4], np.int64), "per_channel")]
    graph = helper.make_graph(nodes, "xcorr", [helper.make_tensor_value_info("search", TensorProto.FLOAT, [1, 3, 16, 16]),
                                               helper.make_tensor_value_info("template", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("depthwise", "dense")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_cross_correlation_of_two_activations_compiles_integer_only(tmp_path):
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(1)
    path = _tracker_head(tmp_path / "head.onnx")
    feeds = lambda count: {"search": rng.normal(0, 1, (count, 1, 3, 16, 16)).astype(np.float32),  # noqa: E731
                           "template": rng.normal(0, 1, (count, 1, 3, 4, 4)).astype(np.float32)}
    np.savez(tmp_path / "calib.npz", **feeds(8))
    model = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path)
    held_out = feeds(3)
    for i in range(3):
        sample = {k: v[i] for k, v in held_out.items()}
        got, want = model.run(sample), dict(zip(("depthwise", "dense"), session.run(None, sample)))
        for name, ref in want.items():
            cos = np.dot(got[name].ravel(), ref.ravel()) / np.linalg.norm(got[name]) / np.linalg.norm(ref)
            assert got[name].shape == ref.shape and cos > 0.999, (name, cos)
