"""Tabular inputs whose features have ranges of their own get a scale per feature at the boundary
(passes/lowering/feature_inputs.py): raw features spanning [0.001, 0.03] beside [140, 2500],
standardized inside the graph, as scikit-learn pipelines exported by hummingbird or skl2onnx are."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from passes.lowering import feature_inputs
from runtime.compiler import compile_model

LOWS, HIGHS = np.array([140, 0.05, 7, 0.001]), np.array([2500, 0.16, 28, 0.03])


def _features(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(LOWS, HIGHS, (rows, 4)).astype(np.float32)


def _model(path, float64: bool = False, relu_too: bool = False) -> str:
    """(x - mean) / std @ W, every feature weighted alike; `float64`: the scaler computes in double
    between two Casts (hummingbird's export); `relu_too`: the input also feeds a Relu (not per feature)."""
    x = _features(400, 0)
    mean, inv = x.mean(0), 1.0 / x.std(0)
    dt = np.float64 if float64 else np.float32
    src = "xd" if float64 else "x"
    nodes = ([helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE)] if float64 else []) + [
        helper.make_node("Sub", [src, "mean"], ["c"]), helper.make_node("Mul", ["c", "inv"], ["zd" if float64 else "z"])]
    if float64:
        nodes.append(helper.make_node("Cast", ["zd"], ["z"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("MatMul", ["z", "w"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])]
    if relu_too:
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4]))
    inits = [numpy_helper.from_array(mean.astype(dt), "mean"), numpy_helper.from_array(inv.astype(dt), "inv"),
             numpy_helper.from_array(np.array([[0.5], [1.0], [-0.7], [1.0]], np.float32), "w")]
    graph = helper.make_graph(nodes, "tabular", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


def _compile(tmp_path, model: str, name: str):
    # calibration rows that reach each feature's ends, so that held-out rows stay inside
    calib = np.concatenate([LOWS[None], HIGHS[None], _features(10, 1)]).astype(np.float32)[:, None]
    np.savez(tmp_path / "calib.npz", x=calib)
    return runtime.load(compile_model(model, output=tmp_path / name, calib=tmp_path / "calib.npz", progress=False))


def _worst_error(art, model: str) -> tuple[float, float]:
    """(max |intq - float| over 200 held-out rows, the float output's std over them)."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rows = _features(200, 2)
    want = np.array([session.run(["y"], {"x": r[None]})[0].item() for r in rows])
    got = np.array([art.run({"x": r[None]})["y"].item() for r in rows])
    return float(np.abs(want - got).max()), float(want.std())


@pytest.mark.parametrize("float64", [False, True], ids=["float32", "float64-scaler"])
def test_features_of_their_own_ranges_get_a_scale_each(tmp_path, float64):
    model = _model(tmp_path / "tab.onnx", float64)
    art = _compile(tmp_path, model, "tab.artifact")
    quant = art.manifest["inputs"][0]["quant"]
    assert art.manifest["integer_only"] and quant["dtype"] == "int16" and quant["axis"] == 1
    assert len(quant["scale"]) == 4 and max(quant["scale"]) / min(quant["scale"]) > 1e4
    error, spread = _worst_error(art, model)
    assert error < 0.02 * spread, (error, spread)


def test_one_scale_loses_the_small_features(tmp_path, monkeypatch):
    """What the per-feature scales fix: with one scale (the rule switched off) the two small features
    sit on a step or two, and the output is off by about its own spread."""
    monkeypatch.setattr(feature_inputs, "MIN_LEVELS", 0)
    model = _model(tmp_path / "tab.onnx")
    art = _compile(tmp_path, model, "tab.artifact")
    assert art.manifest["inputs"][0]["quant"].get("axis") is None
    error, spread = _worst_error(art, model)
    assert error > 0.3 * spread, (error, spread)


def test_input_with_another_use_keeps_one_scale(tmp_path):
    model = _model(tmp_path / "tab.onnx", relu_too=True)
    art = _compile(tmp_path, model, "tab.artifact")
    assert art.manifest["inputs"][0]["quant"].get("axis") is None


def test_saturation_warning_names_the_feature(tmp_path):
    model = _model(tmp_path / "tab.onnx")
    art = _compile(tmp_path, model, "tab.artifact")
    row = _features(1, 3)
    row[0, 3] = 0.2  # feature 3 calibrated up to 0.03
    with pytest.warns(RuntimeWarning, match=r"input 'x' \(feature 3\)"):
        art.run({"x": row})
    manifest = json.loads((tmp_path / "tab.artifact" / "manifest.json").read_text())
    assert manifest["inputs"][0]["quant"]["axis"] == 1


def test_tree_thresholds_over_raw_features_compare_exactly(tmp_path):
    """hummingbird's GEMM trees: C @ x^T picks one feature per node (C one-hot, a Gemm with transB), then
    LessOrEqual with each node's threshold. The features keep their own scales through the transpose and
    the product, and the compare runs on the int32 sums (binary._compare_accumulator): every decision of
    float, where one grid for all features flipped the small features' decisions."""
    pick = np.array([0, 1, 1, 2, 3, 3, 0, 1])
    select = np.eye(4, dtype=np.float32)[pick]
    thresholds = (LOWS[pick] + (HIGHS[pick] - LOWS[pick]) * np.linspace(0.2, 0.8, 8)).astype(np.float32)[:, None]
    nodes = [helper.make_node("Gemm", ["select", "x"], ["picked"], transB=1),
             helper.make_node("LessOrEqual", ["picked", "thresholds"], ["left"]),
             helper.make_node("Cast", ["left"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 1])],
                              [numpy_helper.from_array(select, "select"), numpy_helper.from_array(thresholds, "thresholds")])
    model = str(tmp_path / "trees.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    art = _compile(tmp_path, model, "trees.artifact")
    assert art.manifest["integer_only"] and art.manifest["inputs"][0]["quant"]["axis"] == 1
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rows = _features(300, 4)
    want = np.stack([session.run(None, {"x": r[None]})[0] for r in rows])
    got = np.stack([art.run({"x": r[None]})["y"] for r in rows])
    assert np.array_equal(want, got), int((want != got).sum())


def test_whole_number_inputs_stay_whole(tmp_path):
    """Levels 0..16 (load_digits' pixels, counts) compared with thresholds equal to data values, x <= t as
    hummingbird's forests split: calibration saw whole numbers only, so the input's grid is a power of two
    and every level is exact; at 16 / 127 per step, 2 came out as 2.016 and x <= 2 said no."""
    t = np.arange(17, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("LessOrEqual", ["x", "t"], ["le"]),
                               helper.make_node("Cast", ["le"], ["y"], to=TensorProto.FLOAT)], "levels",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 17])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 17])],
                              [numpy_helper.from_array(t, "t")])
    model = str(tmp_path / "levels.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).integers(0, 17, (8, 1, 17)).astype(np.float32))
    art = runtime.load(compile_model(model, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    scale = art.manifest["inputs"][0]["quant"]["scale"]
    assert np.log2(scale) == np.round(np.log2(scale)) and scale <= 1
    for x in (t[None], t[None] - 1, t[None] + 1):
        np.testing.assert_array_equal(art.run({"x": x})["y"], (x <= t).astype(np.float32))


@pytest.mark.parametrize("normalize", ["batchnorm", "folded"])
def test_feature_sequences_get_a_scale_per_feature(tmp_path, normalize):
    """A sequence of feature vectors [1, T, F] (a sleep stager's per-epoch HRV features: 1e-3 beside
    3e5), normalized by a BatchNormalization between two transposes (as torch and Keras export it)
    or by weights that fold it, then a Dense: the per-feature scales follow the transposes and the
    importer's [1, T, F] -> [T, F] reshape (hunt 14 F5: cosine 0.39 and 0.32, where one [1, F] row
    of the same features had its scales)."""
    rng = np.random.default_rng(0)
    mag = np.array([1.0, 0.06, 180.0, 0.003, 3e5, 0.001, 65.0, 8e4], np.float32)
    f, t = mag.size, 16
    x = (mag * (1 + 0.25 * rng.standard_normal((10, 1, t, f)))).astype(np.float32)
    mean, var = x.reshape(-1, f).mean(0), x.reshape(-1, f).var(0)
    w, b = rng.normal(0, 0.3, (f, 12)).astype(np.float32), rng.normal(0, 0.1, 12).astype(np.float32)
    n = helper.make_node
    if normalize == "batchnorm":
        nodes = [n("Transpose", ["x"], ["t"], perm=[0, 2, 1]), n("BatchNormalization", ["t", "g", "be", "mu", "va"], ["bn"]),
                 n("Transpose", ["bn"], ["z"], perm=[0, 2, 1])]
        inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in
                 (("g", np.ones(f)), ("be", np.zeros(f)), ("mu", mean), ("va", var))]
    else:
        s = 1.0 / np.sqrt(var + 1e-5)
        w, b = (w * s[:, None]).astype(np.float32), (b - (mean * s) @ w).astype(np.float32)
        nodes, inits = [n("Identity", ["x"], ["z"])], []
    nodes += [n("MatMul", ["z", "w"], ["m"]), n("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, t, f])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, t, 12])],
                              inits + [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=x[:8])
    art = runtime.load(compile_model(tmp_path / "m.onnx", output=tmp_path / "a", calib=tmp_path / "c.npz", progress=False))
    assert art.manifest["inputs"][0]["quant"]["axis"] == 2
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for v in x[8:]:
        want, got = session.run(None, {"x": v})[0].ravel(), art.run({"x": v})["y"].ravel()
        assert want @ got / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.995


def test_quantize_by_a_kept_reciprocal_is_quantize():
    """boundary.quantize_by (the per-feature runs' path) gives quantize's integers bit for bit, with the
    largest |x / scale| it reports, on random values, grid ends, half steps and values past the grid."""
    from runtime.boundary import quantize, quantize_by, reciprocal, scale_array

    scale = scale_array({"scale": [1e-3, 0.37, 2.5, 1e-5], "axis": 1}, 2)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 20, (64, 4)), (np.arange(-40, 40)[:, None] + 0.5) * scale.reshape(1, 4),
                        32767.5 * scale, -32768.5 * scale, 1e9 * np.ones((1, 4))]).astype(np.float32)
    for dtype in ("int16", "int8", "uint8"):
        out = np.empty(x.shape, dtype)
        q, peak = quantize_by(x, reciprocal(scale), dtype, peak=True, out=out)
        assert q is out and np.array_equal(q, quantize(x, scale, dtype)) and q.dtype == dtype
        assert peak == np.abs(x * reciprocal(scale)).max()


def test_per_feature_inputs_quantize_into_the_kept_argument(tmp_path):
    """A scale per feature: `run` quantizes into this thread's kept, aligned buffer that is already the
    VM's argument (no new array, no aligned copy, no DLPack wrap per run) and skips the per-feature
    saturation search while no |x / scale| is near its bound; integers and outputs as before."""
    from runtime.boundary import quantize

    art = _compile(tmp_path, _model(tmp_path / "tab.onnx"), "tab.artifact")
    rows = _features(6, 4)
    for r in rows:
        x = {"x": r[None]}
        q = art._quantized(x, reuse=True)[0]
        assert q is art._local.buffers[0][0] and id(q) in art._local.buffer_args
        assert np.array_equal(q, quantize(r[None], art._scale(0, 2, "inputs"), "int16"))
        assert np.array_equal(art.run(x)["y"], art.run({"x": r[None].copy()})["y"])
        assert np.array_equal(art.run_integer(art.quantize_inputs(x))[0], art.run_integer([q.copy()])[0])
