"""Sentinel values: a constant the graph tests a tensor for (Keras' `Masking(mask_value=c)` padding)
is left out of the tensor's calibrated range and given the grid's end code (`calibrate._set_apart`,
`binary._compare_code`), so the padding neither coarsens the real values' grid nor is lost."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _masking_model(path, sentinel: float, steps=10, features=6):
    """Keras' Masking as tf2onnx writes it: mask = any(x != c over features); x * mask; then a dense
    layer with tanh per step and the mean over steps."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    inits = {"c": np.array(sentinel, np.float32), "axes": np.array([2], np.int64), "zero": np.array(0.0, np.float32),
             "w": rng.normal(0, 0.5, (features, 4)).astype(np.float32), "b": rng.normal(0, 0.1, 4).astype(np.float32)}
    nodes = [n("Equal", ["x", "c"], ["eq"]), n("Not", ["eq"], ["ne"]), n("Cast", ["ne"], ["nef"], to=TensorProto.FLOAT),
             n("ReduceSum", ["nef", "axes"], ["cnt"], keepdims=1), n("Greater", ["cnt", "zero"], ["keep"]),
             n("Cast", ["keep"], ["m"], to=TensorProto.FLOAT), n("Mul", ["x", "m"], ["xm"]),
             n("MatMul", ["xm", "w"], ["h"]), n("Add", ["h", "b"], ["hb"]), n("Tanh", ["hb"], ["t"]),
             n("ReduceMean", ["t"], ["y"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "masking",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def _samples(sentinel: float, count=8, steps=10, features=6):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 1.0, (count, 1, steps, features)).astype(np.float32)
    for i in range(count):
        x[i, :, 3 + i % 6:] = sentinel  # sequences of 3-8 steps, padded
    return x


@pytest.mark.parametrize("sentinel", [-4.2e6, 1e9])
def test_mask_padding_keeps_the_real_values_grid(tmp_path, sentinel):
    """Padding far below (mhcnuggets: -4.2e6 beside values in [0, 1]) or above the values: the
    artifact agrees with float onnxruntime within a few 8-bit steps, and warns of no saturation."""
    import onnxruntime as ort

    import runtime
    from runtime import compile_model

    path = str(tmp_path / "mask.onnx")
    _masking_model(path, sentinel)
    x = _samples(sentinel)
    np.savez(tmp_path / "calib.npz", x=x)
    art = runtime.load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["inputs"][0]["quant"]["sentinel"] == pytest.approx(sentinel)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the padding saturates on purpose: no warning about it
        errors = [np.abs(art.run({"x": s})["y"] - session.run(None, {"x": s})[0]).max() for s in x]
    assert max(errors) < 0.03, errors


def test_a_compared_value_inside_the_range_stays_a_value(tmp_path):
    """x == 1 where x holds 0, 0.5 and 1: 1 is one of the values (not far outside them), so the range
    keeps it and the masked product is exact."""
    import onnxruntime as ort

    import runtime
    from runtime import compile_model

    path = str(tmp_path / "ones.onnx")
    _masking_model(path, 1.0)
    rng = np.random.default_rng(2)
    x = (rng.integers(0, 3, (8, 1, 10, 6)) / 2).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    art = runtime.load(compile_model(path, "x86", tmp_path / "o.artifact", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert "sentinel" not in art.manifest["inputs"][0]["quant"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    errors = [np.abs(art.run({"x": s})["y"] - session.run(None, {"x": s})[0]).max() for s in x]
    assert max(errors) < 0.03, errors
