"""Scan and constant-count Loop nodes unroll into plain ops (`frontends/onnx_loops.py`) that equal
onnxruntime's control flow, and a model with them compiles integer-only; loops that can stop early
or run a free number of steps stay and are refused with the node named."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_loops import unroll_loops

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def scan_model(in_dir=0, out_dir=0, in_axis=0, out_axis=0, steps=5, features=4, opset=17):
    """A running sum and a tanh of (state + x_t) per step: the state carried, one scan output."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "xt"], ["s2"]), helper.make_node("Tanh", ["s2"], ["yt"]),
         helper.make_node("Mul", ["yt", "w"], ["yw"])],
        "body", [helper.make_tensor_value_info("s", F, [features]), helper.make_tensor_value_info("xt", F, [features])],
        [helper.make_tensor_value_info("s2", F, [features]), helper.make_tensor_value_info("yw", F, [features])])
    shape = [steps, features] if in_axis == 0 else [features, steps]
    out_shape = [steps, features] if out_axis == 0 else [features, steps]
    node = helper.make_node("Scan", ["s0", "x"], ["sn", "y"], body=body, num_scan_inputs=1,
                            scan_input_directions=[in_dir], scan_output_directions=[out_dir],
                            scan_input_axes=[in_axis], scan_output_axes=[out_axis])
    w = numpy_helper.from_array(np.linspace(0.5, 1.5, features).astype(np.float32), "w")  # outer-scope constant
    model = _model([node], [helper.make_tensor_value_info("s0", F, [features]), helper.make_tensor_value_info("x", F, shape)],
                   [helper.make_tensor_value_info("sn", F, [features]), helper.make_tensor_value_info("y", F, out_shape)],
                   [w], opset)
    rng = np.random.default_rng(0)
    return model, {"s0": rng.standard_normal(features).astype(np.float32) * 0.3,
                   "x": rng.standard_normal(shape).astype(np.float32) * 0.3}


def loop_model(trip=4, cond_out="cond"):
    """v <- v * 0.9 + i * 0.1 (i the iteration number), scan output v per iteration."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["fi", "tenth"], ["di"]),
         helper.make_node("Mul", ["v", "decay"], ["vd"]), helper.make_node("Add", ["vd", "di"], ["v2"]),
         helper.make_node("Identity", ["v2"], ["y"]),
         *([helper.make_node("Identity", ["cond"], ["cond2"])] if cond_out == "cond" else
           [helper.make_node("Less", ["i", "three"], ["cond2"])])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("v", F, [3])],
        [helper.make_tensor_value_info("cond2", TensorProto.BOOL, []), helper.make_tensor_value_info("v2", F, [3]),
         helper.make_tensor_value_info("y", F, [3])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "tenth"), numpy_helper.from_array(np.array(0.9, np.float32), "decay"),
         numpy_helper.from_array(np.array(3, np.int64), "three")])
    node = helper.make_node("Loop", ["M", "", "v0"], ["vn", "ys"], body=body)
    model = _model([node], [helper.make_tensor_value_info("v0", F, [3])],
                   [helper.make_tensor_value_info("vn", F, [3]), helper.make_tensor_value_info("ys", F, [trip, 3])],
                   [numpy_helper.from_array(np.array(trip, np.int64), "M")])
    return model, {"v0": np.array([0.5, -0.2, 1.0], np.float32)}


@pytest.mark.parametrize("in_dir,out_dir,in_axis,out_axis,opset",
                         [(0, 0, 0, 0, 17), (1, 0, 0, 0, 17), (0, 1, 1, 0, 17), (1, 1, 1, 1, 11), (0, 0, 0, 1, 9)])
def test_scan_unrolled_equals_onnxruntime(in_dir, out_dir, in_axis, out_axis, opset):
    model, feeds = scan_model(in_dir, out_dir, in_axis, out_axis, opset=opset)
    want = _run(model, feeds)
    assert unroll_loops(model) == 1 and "Scan" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    for got, ref in zip(_run(model, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_loop_unrolled_equals_onnxruntime():
    model, feeds = loop_model()
    want = _run(model, feeds)
    assert unroll_loops(model) == 1 and "Loop" not in {n.op_type for n in model.graph.node}
    for got, ref in zip(_run(model, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_loops_that_can_stop_early_stay():
    model, _ = loop_model(cond_out="less")  # the body computes its own condition: it may stop early
    assert unroll_loops(model) == 0
    model, _ = scan_model()
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "T"  # a free length
    assert unroll_loops(model) == 0


def test_scan_model_compiles_integer_only(tmp_path):
    import runtime
    from runtime.compiler import compile_model

    model, feeds = scan_model(steps=6, features=8)
    onnx.save(model, tmp_path / "scan.onnx")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", **{k: (rng.standard_normal((16, *v.shape)) * 0.3).astype(np.float32)
                                        for k, v in feeds.items()})
    art = runtime.load(compile_model(tmp_path / "scan.onnx", output=tmp_path / "scan.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    got = art.run(feeds)
    for spec, ref in zip(art.manifest["outputs"], _run(model, feeds)):
        g = got[spec["name"]]
        assert float(g.ravel() @ ref.ravel() / (np.linalg.norm(g) * np.linalg.norm(ref))) >= 0.999, spec["name"]


def test_loop_that_can_stop_early_is_refused_by_name(tmp_path):
    from frontends import UnsupportedModelError, load_onnx

    model, _ = loop_model(cond_out="less")
    model.graph.node[0].name = "my_loop"
    onnx.save(model, tmp_path / "loop.onnx")
    for allow in (False, True):
        with pytest.raises(UnsupportedModelError) as err:
            load_onnx(tmp_path / "loop.onnx", allow_unsupported=allow)
        assert "Loop (node my_loop)" in str(err.value) and "computes its own condition" in str(err.value)
