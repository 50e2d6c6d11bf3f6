"""Geometry in the graph: a handful of values, each of its own magnitude (a crop transform's scales
near 0.3-1 beside translations near 20-30), composed by products of two activations and applied
to a constant sampling grid (MediaPipe's attention face mesh). Small tensors are carried at 16
bits, small activation x activation products keep those 16 bits, and constants on a power-of-two
grid (the sampling grid's whole numbers) are taken exactly."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from passes.reference.kernels import quantize_weights


def _unit(i, j):
    m = np.zeros((4, 4), np.float32)
    m[i, j] = 1.0
    return m


def _transform_model(path, side=8):
    """points [1, 24, 2] -> min / max -> S = diag(sx, sy, 1, 1), T = translation(tx, ty) -> M = T @ S ->
    M @ grid (homogeneous [u, v, 0, 1] of a side x side grid): outputs M and the sampling coordinates."""
    u, v = np.meshgrid(np.arange(side), np.arange(side))
    grid = np.stack([u.ravel(), v.ravel(), np.zeros(side * side), np.ones(side * side)]).astype(np.float32)
    consts = {"inv": np.full((1, 2), 1 / 32, np.float32), "quarter": np.full((1, 2), 0.25, np.float32),
              "e00": _unit(0, 0), "e11": _unit(1, 1), "e23": _unit(2, 2) + _unit(3, 3), "e03": _unit(0, 3),
              "e13": _unit(1, 3), "eye": np.eye(4, dtype=np.float32), "grid": grid}
    n = helper.make_node
    nodes = [n("ReduceMin", ["pts"], ["lo"], axes=[1], keepdims=0), n("ReduceMax", ["pts"], ["hi"], axes=[1], keepdims=0),
             n("Sub", ["hi", "lo"], ["size"]), n("Mul", ["size", "inv"], ["s"]), n("Mul", ["lo", "quarter"], ["t"]),
             n("Split", ["s"], ["sx", "sy"], axis=1), n("Split", ["t"], ["tx", "ty"], axis=1),
             n("Mul", ["sx", "e00"], ["a"]), n("Mul", ["sy", "e11"], ["b"]), n("Add", ["a", "b"], ["ab"]),
             n("Add", ["ab", "e23"], ["S"]), n("Mul", ["tx", "e03"], ["c"]), n("Mul", ["ty", "e13"], ["d"]),
             n("Add", ["c", "d"], ["cd"]), n("Add", ["cd", "eye"], ["T"]), n("MatMul", ["T", "S"], ["M"]),
             n("MatMul", ["M", "grid"], ["xy"])]
    graph = helper.make_graph(nodes, "transform", [helper.make_tensor_value_info("pts", TensorProto.FLOAT, [1, 24, 2])],
                              [helper.make_tensor_value_info("M", TensorProto.FLOAT, [4, 4]),
                               helper.make_tensor_value_info("xy", TensorProto.FLOAT, [4, side * side])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _points(rng, count):
    centre = rng.uniform(60, 130, (count, 1, 1, 2))
    size = rng.uniform(20, 60, (count, 1, 1, 2))
    return (centre + rng.uniform(-0.5, 0.5, (count, 1, 24, 2)) * size).astype(np.float32)


def test_crop_transform_and_its_sampling_grid_keep_their_precision(tmp_path):
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    path = _transform_model(tmp_path / "t.onnx")
    np.savez(tmp_path / "calib.npz", pts=_points(rng, 8))
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(path))
    for pts in _points(rng, 4):
        want = dict(zip(["M", "xy"], session.run(None, {"pts": pts})))
        got = art.run({"pts": pts})
        # the input's own 16-bit grid (steps of ~0.005 over [0, 160]) bounds both; an 8-bit matrix was 10% off
        # in scale (1.0 -> 0.904), and the grid's 1 as 64/63.5 of its column moved every coordinate by 0.1-0.2
        np.testing.assert_allclose(got["M"], want["M"], atol=0.01)
        np.testing.assert_allclose(got["xy"], want["xy"], atol=0.05)


def test_constants_on_a_power_of_two_grid_are_quantized_exactly():
    w = np.array([[2, 0, 0, 1], [15, 3, 0, 1], [0.5, 0.25, 0, 1], [0.1, 0.3, 0.2, 1]], np.float32)
    q, scale = quantize_weights(w, 8, axis=0)
    np.testing.assert_array_equal(q[:3] * scale[:3, None], w[:3])  # whole numbers, quarters: exact
    assert scale[0] == 1 / 32 and scale[1] == 1 / 8 and scale[3] == 1 / 127
    learned = np.random.default_rng(1).standard_normal((16, 9)).astype(np.float32)
    np.testing.assert_allclose(quantize_weights(learned, 8, axis=0)[1], np.abs(learned).max(1) / 127, rtol=1e-6)


def test_small_table_inputs_keep_their_width(tmp_path):
    """A small tensor that table lookups alone read (a small gate's sigmoid input) stays 8-bit: at 16 bits its
    table has 65536 entries, one per step of an unrolled recurrence. The sigmoid's output, which a product
    reads, is carried at 16 bits."""
    from runtime import compile_model, load

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x2"], ["o"])]
    graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
                                              helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((4, 1, 16)).astype(np.float32),
             x2=rng.standard_normal((4, 1, 16)).astype(np.float32))
    art = load(compile_model(tmp_path / "g.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False))
    assert [i["quant"]["dtype"] for i in art.manifest["inputs"]] == ["int8", "int16"]


def test_homogeneous_coordinates_keep_their_one(tmp_path):
    """points [x, y] near 15-40 joined with a column of ones and multiplied by a 3 x 3 transform (an
    activation): the small concat of parts so different is one 16-bit grid, where 8 bits read the 1 as 1.1
    and moved every point by a tenth of the translation."""
    import onnxruntime as ort

    from runtime import compile_model, load

    n = helper.make_node
    nodes = [n("Mul", ["pts", "zero"], ["z"]), n("Slice", ["z", "s0", "s1", "ax"], ["zc"]), n("Add", ["zc", "one"], ["ones"]),
             n("Concat", ["pts", "ones"], ["hom"], axis=2), n("MatMul", ["hom", "T"], ["moved"])]
    consts = {"zero": np.array(0, np.float32), "one": np.array(1, np.float32), "s0": np.array([0], np.int64),
              "s1": np.array([1], np.int64), "ax": np.array([2], np.int64)}
    graph = helper.make_graph(nodes, "hom", [helper.make_tensor_value_info("pts", TensorProto.FLOAT, [1, 60, 2]),
                                             helper.make_tensor_value_info("T", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("hom", TensorProto.FLOAT, [1, 60, 3]),
                               helper.make_tensor_value_info("moved", TensorProto.FLOAT, [1, 60, 3])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "h.onnx")
    rng = np.random.default_rng(3)

    def transforms(count):
        a = rng.uniform(-0.2, 0.2, count)
        t = np.zeros((count, 3, 3), np.float32)
        t[:, 0, 0], t[:, 0, 1], t[:, 1, 0], t[:, 1, 1] = np.cos(a), np.sin(a), -np.sin(a), np.cos(a)
        t[:, 2, 0], t[:, 2, 1], t[:, 2, 2] = rng.uniform(-8, 8, count), rng.uniform(-8, 8, count), 1
        return t

    np.savez(tmp_path / "c.npz", pts=rng.uniform(15, 40, (8, 1, 60, 2)).astype(np.float32), T=transforms(8))
    art = load(compile_model(tmp_path / "h.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False))
    session = ort.InferenceSession(str(tmp_path / "h.onnx"))
    for pts, t in zip(rng.uniform(15, 40, (3, 1, 60, 2)).astype(np.float32), transforms(3)):
        got, want = art.run({"pts": pts, "T": t}), session.run(None, {"pts": pts, "T": t})
        np.testing.assert_allclose(got["hom"][..., 2], 1.0, atol=0.005)
        np.testing.assert_allclose(got["moved"], want[1], atol=0.25)  # the points' own 8-bit grid: steps of 0.16
