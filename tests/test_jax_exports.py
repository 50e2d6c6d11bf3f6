"""JAX / Flax models as jax2onnx 0.17 writes them (hunt 24): each idiom built with onnx.helper in the exact form
jax2onnx gives it (no jax needed): `lax.reduce_window` pooling as a pool over four spatial axes, Flax's
fast-variance LayerNorm and the ReduceSum / n means of `jnp.mean`, softmax as exp(x - max) / sum with the
reductions' axes put back by a Reshape, over a `where(mask, s, finfo.min)`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _model(nodes, inputs, outputs, inits, path):
    graph = helper.make_graph(nodes, "jax_model", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def _const(inits, name, value, dtype=np.float32):
    inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name


# ------------------------------------------------------------------------------------------------ reduce_window
def _reduce_window_cnn(path):
    """x [1, 8, 8, 4] NHWC -> reduce_window max (1, 2, 2, 1) -> reduce_window sum (1, 2, 2, 1) / 4 -> y [1, 2, 2, 4],
    as jax2onnx writes them: Unsqueeze(0), Unsqueeze(1), then MaxPool / a ones-kernel Conv over [1, 1, N, H, W, C]."""
    inits = []
    for name, v in (("ax0", [0]), ("ax1", [1]), ("sq", [0, 1])):
        _const(inits, name, v, np.int64)
    _const(inits, "ones", np.ones((1, 1, 1, 2, 2, 1)))
    _const(inits, "four", 4.0)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax0"], ["u0"]), helper.make_node("Unsqueeze", ["u0", "ax1"], ["u1"]),
             helper.make_node("MaxPool", ["u1"], ["mp"], kernel_shape=[1, 2, 2, 1], strides=[1, 2, 2, 1]),
             helper.make_node("Squeeze", ["mp", "sq"], ["m"]),
             helper.make_node("Unsqueeze", ["m", "ax0"], ["v0"]), helper.make_node("Unsqueeze", ["v0", "ax1"], ["v1"]),
             helper.make_node("Conv", ["v1", "ones"], ["sp"], strides=[1, 2, 2, 1], group=1),
             helper.make_node("Squeeze", ["sp", "sq"], ["s"]), helper.make_node("Div", ["s", "four"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 4])], inits, path)


def _reduce_window_reference(x):
    m = x.reshape(1, 4, 2, 4, 2, 4).max(axis=(2, 4))
    return m.reshape(1, 2, 2, 2, 2, 4).mean(axis=(2, 4))


def test_reduce_window_pools_over_four_axes_fold_to_two(tmp_path):
    """TVM's importer refused the model ('Currently only 1D/2D/3D/ pooling is supported'; onnxruntime cannot run
    it either): the unit-window axes fold into the channels, and the folded graph computes the pools."""
    from frontends.onnx_window_axes import fold_unit_window_axes

    model = onnx.shape_inference.infer_shapes(onnx.load(_reduce_window_cnn(tmp_path / "rw.onnx")))
    assert fold_unit_window_axes(model) == 2
    pools = [n for n in model.graph.node if n.op_type in ("MaxPool", "Conv")]
    assert [len(helper.get_attribute_value(next(a for a in n.attribute if a.name == "strides"))) for n in pools] == [2, 2]
    x = np.random.default_rng(0).normal(0, 1, (1, 8, 8, 4)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _reduce_window_reference(x), rtol=1e-5, atol=1e-6)


def test_reduce_window_cnn_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _reduce_window_cnn(tmp_path / "rw.onnx")
    xs = np.random.default_rng(1).normal(0, 1, (8, 1, 8, 8, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"]
    for x in xs[:2]:
        assert _cos(art.run({"x": x})["y"], _reduce_window_reference(x)) > 0.999
