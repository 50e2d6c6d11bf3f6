"""allow_float: every node that cannot be lowered runs in float, whatever its lowering did."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from frontends import UnsupportedModelError
from passes import QuantConfig, QuantizeToInteger, calibrate, verify_integer_only
from passes.lowering import LOWERINGS
from passes.quantize_to_integer import FLOAT_NODES_ATTR

R = relax.op


def _module():
    """x -> cumprod -> batch_norm (a tuple)[0] -> relu r -> (r, argsort(r): int32, r @ W, sort(relu(r @ W)))."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    const = [relax.const(v.astype("float32")) for v in (rng.uniform(0.5, 1.5, 8), rng.standard_normal(8) * 0.1,
                                                         rng.standard_normal(8) * 0.1, rng.uniform(0.5, 1.5, 8))]
    with bb.function("main", [x]):
        with bb.dataflow():
            cs = bb.emit(R.cumprod(x, axis=1), "cs")
            bn = bb.emit(R.nn.batch_norm(cs, *const, axis=1), "bn")
            b0 = bb.emit(relax.TupleGetItem(bn, 0), "b0")
            r = bb.emit(R.nn.relu(b0), "r")
            order = bb.emit(R.argsort(r, axis=1), "order")
            mm = bb.emit(R.matmul(r, relax.const(rng.standard_normal((8, 4)).astype("float32"))), "mm")
            acc = bb.emit(R.sort(R.nn.relu(mm), axis=1), "acc_sort")  # an int32 accumulator read in float
            out = bb.emit_output(relax.Tuple([r, order, mm, acc]))
        bb.emit_func_output(out)
    return bb.get()


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(n)]


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return [o.numpy() for o in vm["main"](tvm.runtime.tensor(x))]


def _lower(monkeypatch, lowering=None):
    mod = _module()
    if lowering is not None:
        monkeypatch.setitem(LOWERINGS, "relax.nn.relu", lowering)
    ranges = calibrate(mod, _samples(8), progress=False)
    return mod, QuantizeToInteger(ranges, QuantConfig(allow_float=True))(mod)


def _check_against_float(mod, int_mod):
    x = _samples(1, seed=5)[0]["x"]
    ref = _run(mod, x)
    boundary = json.loads(str(int_mod["main"].attrs["intq.boundary"]))
    scale = boundary["inputs"][0]["scale"]
    q = np.clip(np.round(x / scale), -128, 127).astype(boundary["inputs"][0]["dtype"])
    got = _run(int_mod, q)
    for meta, g, r in zip(boundary["outputs"], got, ref):
        value = g.astype(np.float64) * np.asarray(meta["scale"]).reshape(-1)
        if np.issubdtype(r.dtype, np.integer):
            np.testing.assert_array_equal(g, r)  # the int argsort stayed exact
        else:
            assert value.ravel() @ r.ravel() / np.linalg.norm(value) / np.linalg.norm(r) > 0.99


def test_ops_without_lowering_tuples_and_int_results_run_in_float(monkeypatch):
    mod, int_mod = _lower(monkeypatch)
    nodes = {n["node"]: n for n in json.loads(str(int_mod["main"].attrs[FLOAT_NODES_ATTR]))}
    assert nodes["cs"]["op"] == "relax.cumprod" and nodes["cs"]["reason"] == "no integer lowering"
    assert nodes["bn"]["op"] == "relax.nn.batch_norm" and nodes["order"]["op"] == "relax.argsort"
    assert "r" not in nodes and "mm" not in nodes  # relu and the matmul are integer (on quantized float results)
    assert not verify_integer_only(int_mod).integer_only
    _check_against_float(mod, int_mod)


@pytest.mark.parametrize("error", ["compile", "internal"])
def test_a_failing_lowering_falls_back_per_node(monkeypatch, error):
    def refuse(ctx, call, args):
        if error == "compile":
            ctx.fail("refused for the test")
        raise RuntimeError("lowering crashed")

    mod, int_mod = _lower(monkeypatch, refuse)
    nodes = {n["node"]: n for n in json.loads(str(int_mod["main"].attrs[FLOAT_NODES_ATTR]))}
    assert nodes["r"]["op"] == "relax.nn.relu"
    assert nodes["r"]["reason"] == ("refused for the test" if error == "compile" else "RuntimeError: lowering crashed")
    _check_against_float(mod, int_mod)


def test_without_allow_float_every_op_is_listed():
    mod = _module()
    ranges = calibrate(mod, _samples(2), progress=False)
    with pytest.raises(UnsupportedModelError) as err:
        QuantizeToInteger(ranges, QuantConfig())(mod)
    assert "relax.cumprod" in str(err.value) and "relax.nn.batch_norm" in str(err.value)


def test_without_allow_float_failing_lowerings_are_refused_at_once(monkeypatch):
    mod = _module()
    ranges = calibrate(mod, _samples(2), progress=False)
    for name in ("relax.cumprod", "relax.nn.batch_norm", "relax.argsort", "relax.sort"):  # give every op a lowering...
        monkeypatch.setitem(LOWERINGS, name, lambda ctx, call, args: ctx.fail("refused for the test"))
    monkeypatch.setitem(LOWERINGS, "relax.nn.relu", lambda ctx, call, args: 1 / 0)  # ...and crash one
    with pytest.raises(UnsupportedModelError) as err:
        QuantizeToInteger(ranges, QuantConfig())(mod)
    text = str(err.value)
    assert "binding 'cs' (relax.cumprod): refused for the test" in text and "binding 'bn' (relax.nn.batch_norm)" in text
    assert "(relax.nn.relu): ZeroDivisionError" in text and "--allow-float" in text


def test_importer_primfuncs_kept_for_float_call_tirs(tmp_path):
    # an Einsum that is no matmul (a diagonal) reaches Relax as call_tir(einsum): with --allow-float it stays
    # float, and the lowered module must keep the importer's PrimFunc it calls (was: "no definition of
    # GlobalVar einsum"). An ellipsis alone no longer does: it is written out and becomes a matmul (hunt 19)
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from runtime import compile_model, load

    n = helper.make_node
    nodes = [n("Relu", ["x"], ["r"]), n("Einsum", ["r", "x"], ["e"], equation="...ii,...ij->...ij"), n("Relu", ["e"], ["o"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "e.onnx")
    data = np.random.default_rng(0).standard_normal((6, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data[:4])
    art = load(compile_model(tmp_path / "e.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz", allow_float=True,
                             progress=False))
    assert [f["op"] for f in art.manifest["float_nodes"]] == ["relax.call_tir"]
    sess = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    for x in data[4:]:
        want, got = sess.run(None, {"x": x})[0].ravel(), np.asarray(art.run({"x": x})["o"]).ravel()
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.99


def test_embedding_table_with_inf_rows_falls_back_to_float(tmp_path):
    """A Graphormer-style bias table whose entry 0 is -inf (the padding mask): integer-only refuses the
    lookup naming the non-finite table (its integers were NaN before: cosine 0.85 with --allow-float);
    --allow-float runs it in float, and so the add and softmax its -inf reaches (they held infinities on
    the calibration data), which then agree with onnxruntime (masked positions exactly 0)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import runtime

    table = np.random.default_rng(0).standard_normal(5).astype(np.float32)
    table[0] = -np.inf
    nodes = [helper.make_node("Gather", ["table", "ids"], ["bias"]), helper.make_node("Add", ["bias", "x"], ["s"]),
             helper.make_node("Softmax", ["s"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "bias.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 5, (8, 1, 6)).astype(np.int64)
    ids[:, :, -1] = 0  # a padded position in every sample
    x = rng.standard_normal((8, 1, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", ids=ids[:4], x=x[:4])
    with pytest.raises(UnsupportedModelError, match="non-finite"):
        runtime.compile_model(path, "x86", tmp_path / "int", calib=tmp_path / "c.npz", progress=False)
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "flt", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    # the lookup, and what its infinities reach: saturated onto an integer grid, -inf masked nothing
    assert [n["op"] for n in art.manifest["float_nodes"]] == ["relax.take", "relax.add", "relax.nn.softmax"]
    session = ort.InferenceSession(str(path))
    for i in range(4, 8):
        got = art.run({"ids": ids[i], "x": x[i]})["y"]
        want = session.run(None, {"ids": ids[i], "x": x[i]})[0]
        assert np.isfinite(got).all() and np.abs(got - want).max() < 0.02 and not got[0, -1]


def test_nan_constants_stay_float_and_the_check_compares_the_rest(tmp_path):
    """A model that outputs NaN on purpose (masked targets: where(mask, y, NaN)): the NaN constant has
    no integer value, so the where runs in float and the artifact keeps the NaNs (they came out as
    -358 before); the compile check compares NaN positions exactly and the rest by cosine."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import runtime
    from runtime import check

    keep = np.array([[True, False, True, True, False, True]])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Where", ["keep", "r", "nan"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                              [numpy_helper.from_array(keep, "keep"),
                               numpy_helper.from_array(np.full((1, 6), np.nan, np.float32), "nan")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(2).standard_normal((6, 1, 6)).astype(np.float32) + 1.0
    np.savez(tmp_path / "c.npz", x=x[:4])
    with pytest.raises(UnsupportedModelError, match="non-finite"):
        runtime.compile_model(path, "x86", tmp_path / "int", calib=tmp_path / "c.npz", progress=False)
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "flt", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    y = art.run({"x": x[5]})["y"]
    assert np.array_equal(np.isnan(y), ~keep)
    (row,) = check.float_agreement(path, art, {"x": x[5]})
    assert row.name == "y" and row.cosine > 0.99
    (row,) = check.float_agreement(path, art, {"x": x[5]}, got={"y": np.nan_to_num(y)})
    assert not row.cosine >= 0.99  # NaNs where float has none: reported below the bar


def test_decoder_gathers_a_constant_table_and_names_a_multiplied_mask(tmp_path):
    """A pitch decoder in the graph (FCPE's local argmax): GatherElements of a constant cents table at
    indices around the argmax lowers on the table's own 16-bit grid (it raised TypeError inside the
    lowering), and `cents * where(max <= t, -inf, 1)` is refused with a sentence, not an AttributeError."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import runtime

    bins = 64
    table = np.linspace(2000.0, 9000.0, bins, dtype=np.float32)[None, None, :].repeat(8, 1)
    nodes = [helper.make_node("Sigmoid", ["x"], ["p"]), helper.make_node("ArgMax", ["p"], ["i"], axis=2, keepdims=1),
             helper.make_node("GatherElements", ["table", "i"], ["cents"], axis=2)]
    inits = [numpy_helper.from_array(table, "table")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, bins])],
                              [helper.make_tensor_value_info("cents", TensorProto.FLOAT, [1, 8, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx")
    x = np.random.default_rng(0).standard_normal((6, 1, 8, bins)).astype(np.float32) * 3
    np.savez(tmp_path / "c.npz", x=x)
    art = runtime.load(runtime.compile_model(tmp_path / "g.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    want = table[0, 0][np.argmax(x[5], axis=2)][..., None]
    assert np.abs(art.run({"x": x[5]})["cents"] - want).max() < 0.2  # the table's 16-bit step is 0.14

    nodes += [helper.make_node("ReduceMax", ["p"], ["m"], axes=[2], keepdims=1),
              helper.make_node("LessOrEqual", ["m", "t"], ["unvoiced"]),
              helper.make_node("Where", ["unvoiced", "ninf", "one"], ["mask"]),
              helper.make_node("Mul", ["cents", "mask"], ["y"])]
    inits += [numpy_helper.from_array(np.array(0.5, np.float32), n) if n == "t" else
              numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("t", 0.5), ("ninf", -np.inf), ("one", 1.0))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, bins])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match="a mask of -inf") as err:
        runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "b", calib=tmp_path / "c.npz", progress=False)
    assert "Error:" not in str(err.value)  # no Python exception text as the reason


def _detector(path):
    """A small detector: a conv net's 256 boxes and sigmoid scores, then NonMaxSuppression (its IoU
    threshold a graph input) and a Gather of the kept boxes: `det` has as many rows as it keeps."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {"w1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
              "w2": (rng.standard_normal((5, 8, 1, 1)) * 0.3).astype(np.float32),
              "shape": np.array([1, 5, 256], np.int64), "s0": np.array([0], np.int64), "s4": np.array([4], np.int64),
              "s5": np.array([5], np.int64), "ax1": np.array([1], np.int64), "maxb": np.array([20], np.int64),
              "sth": np.array([0.3], np.float32), "col": np.array([2], np.int64),
              "grid": np.repeat(np.arange(256, dtype=np.float32).reshape(1, 256, 1), 4, 2)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]), n("Conv", ["r1", "w2"], ["c2"]),
             n("Reshape", ["c2", "shape"], ["flat"]), n("Slice", ["flat", "s0", "s4", "ax1"], ["braw"]),
             n("Transpose", ["braw"], ["bt"], perm=[0, 2, 1]), n("Mul", ["bt", "bt"], ["bsq"]),
             n("Add", ["bsq", "grid"], ["boxes"]), n("Slice", ["flat", "s4", "s5", "ax1"], ["sraw"]),
             n("Sigmoid", ["sraw"], ["scores"]),
             n("NonMaxSuppression", ["boxes", "scores", "maxb", "iou", "sth"], ["sel"], name="nms"),
             n("Gather", ["sel", "col"], ["idx2"], axis=1), n("Squeeze", ["idx2", "ax1"], ["idx"]),
             n("Squeeze", ["boxes", "s0"], ["boxes0"]), n("Gather", ["boxes0", "idx"], ["det"], axis=0)]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]),
                       helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 256]),
         helper.make_tensor_value_info("det", TensorProto.FLOAT, ["k", 4])],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_detector_nms_runs_in_onnxruntime_after_the_integer_network(tmp_path):
    """NonMaxSuppression keeps as many boxes as the scores decide: no static compile takes it. With
    --allow-float the network is compiled (integer-only up to its outputs) and NMS and the Gather
    after it run in onnxruntime on the artifact's boxes and scores (frontends/onnx_tail.py); the IoU
    threshold, an input only NMS reads, is passed through. Without the flag: refused, naming NMS."""
    import onnxruntime as ort

    from runtime import compile_model, load

    path = _detector(tmp_path / "det.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32),
             iou=np.full((8, 1), 0.5, np.float32))
    with pytest.raises(UnsupportedModelError, match=r"NonMaxSuppression \(node nms\)"):
        compile_model(path, output=tmp_path / "int", calib=tmp_path / "calib.npz", progress=False)
    art = load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", allow_float=True,
                             progress=False))
    tail = art.manifest["tail"]
    assert tail["boundary"] == ["boxes", "scores", "boxes0"] and [i["name"] for i in tail["inputs"]] == ["iou"]
    assert [o["name"] for o in art.manifest["outputs"]] == ["scores", "boxes", "boxes0"]
    assert art.manifest["integer_only"] is False
    assert {n["node"] for n in art.manifest["float_nodes"]} >= {"nms", "det"}
    session = ort.InferenceSession(str(path))
    for seed in range(3):
        feeds = {"x": np.random.default_rng(10 + seed).standard_normal((1, 3, 16, 16)).astype(np.float32),
                 "iou": np.array([0.5], np.float32)}
        got, (scores, det) = art.run(feeds), session.run(None, feeds)
        assert list(got) == ["scores", "det"] and got["det"].shape[1] == 4
        close = [np.abs(got["det"] - row).max(axis=1).min() < 1.0 for row in det]  # the same boxes (of 0..300) kept
        assert np.mean(close) >= 0.8 and abs(len(got["det"]) - len(det)) <= 2


def _masked_model(tail: bool, fill: float, S: int = 8, H: int = 32):
    """A [1, S] key mask as Where(mask, 0, fill) unsqueezed and broadcast to [1, 1, S, S]: (tail) handed to a causal
    com.microsoft Attention in a form intq leaves to onnxruntime's tail (a shared cache buffer), as its
    attention_bias; or added to q k^T."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(3)
    c = lambda n, v: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    nodes = [helper.make_node("Cast", ["mask"], ["mb"], to=TensorProto.BOOL), helper.make_node("Where", ["mb", "zero", "neg"], ["b2"]),
             helper.make_node("Unsqueeze", ["b2", "ax12"], ["b4"]), helper.make_node("Expand", ["b4", "shape4"], ["bias"]),
             helper.make_node("MatMul", ["x", "w0"], ["h"])]
    inits = [c("w0", 0.3 * r.standard_normal((H, H))), c("zero", 0.0), c("neg", fill),
             numpy_helper.from_array(np.array([1, 1, S, S], np.int64), "shape4"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "ax12")]
    if tail:
        nodes.append(helper.make_node("Attention", ["h", "qkv", "qkv_b", "", "", "bias"], ["y"], domain="com.microsoft",
                                      num_heads=4, unidirectional=1, past_present_share_buffer=1))
        inits += [c("qkv", 0.3 * r.standard_normal((H, 3 * H))), c("qkv_b", np.zeros(3 * H))]
    else:
        nodes += [helper.make_node("Unsqueeze", ["h", "ax"], ["h4"]), helper.make_node("Transpose", ["h4"], ["ht"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", ["h4", "ht"], ["s"]), helper.make_node("Add", ["s", "bias"], ["sm"]),
                  helper.make_node("Softmax", ["sm"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "h4"], ["y4"]),
                  helper.make_node("Squeeze", ["y4", "ax"], ["y"])]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, H]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, [1, S])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _key_mask(valid: int, S: int = 8) -> np.ndarray:
    return (np.arange(S) < valid).astype(np.int64)[None]


def test_an_attention_mask_handed_to_the_tail(tmp_path):
    """--allow-float where the tail begins at an attention op that takes the model's additive mask: the mask left the
    integer part as 0 / -1 at scale |fill| (exactly 0 or the fill) instead of 'a mask of -inf ... has no integer
    value' (exit 2: all-MiniLM-L6-v2 at 4 bits hit it before its MatMulNBits were rewritten)."""
    import onnx

    import runtime
    from runtime import check

    onnx.save(_masked_model(tail=True, fill=float(np.finfo(np.float32).min)), tmp_path / "m.onnx")
    r = np.random.default_rng(4)
    np.savez(tmp_path / "c.npz", x=r.standard_normal((6, 1, 8, 32)).astype(np.float32),
             mask=np.stack([_key_mask(v) for v in (8, 5, 3, 8, 6, 7)]))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    assert art.manifest["tail"]
    (row,) = check.float_agreement(tmp_path / "m.onnx", art, {"x": r.standard_normal((1, 8, 32)).astype(np.float32),
                                                               "mask": _key_mask(5)})
    assert row.cosine > 0.99, row


def test_a_moderate_mask_keeps_its_fill_through_a_broadcast(tmp_path):
    """BERT's -10000 mask, unsqueezed and broadcast before the logits: with every key masked, softmax(x - 10000) =
    softmax(x) in float. The layout ops dropped the fill, and the rows came out uniform."""
    import onnx
    import onnxruntime as ort

    import runtime

    onnx.save(_masked_model(tail=False, fill=-10000.0), tmp_path / "m.onnx")
    r = np.random.default_rng(5)
    np.savez(tmp_path / "c.npz", x=r.standard_normal((6, 1, 8, 32)).astype(np.float32),
             mask=np.stack([_key_mask(v) for v in (8, 5, 0, 8, 6, 0)]))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    feed = {"x": r.standard_normal((1, 8, 32)).astype(np.float32), "mask": _key_mask(0)}
    got = art.run(feed)["y"].ravel()
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, feed)[0].ravel()
    assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.98


def _imputer_mlp(path, first: bool):
    """x -> [Imputer ->] Gemm -> Relu r -> Imputer -> Gemm -> Tanh -> Gemm (+ ReduceMax(r)) -> z, and r: the
    ai.onnx.ml Imputer has no converter and no shape inference; `first` puts one before everything."""
    rng = np.random.default_rng(0)
    inits = {"w1": (16, 32), "w2": (32, 24), "w3": (24, 8)}
    n = helper.make_node
    imputer = dict(domain="ai.onnx.ml", imputed_value_floats=[0.5], replaced_value_float=0.0)
    nodes = ([n("Imputer", ["x"], ["x1"], name="imputer0", **imputer)] if first else []) + [
        n("Gemm", ["x1" if first else "x", "w1"], ["a"]), n("Relu", ["a"], ["r"]),
        n("Imputer", ["r"], ["i"], name="imputer1", **imputer), n("Gemm", ["i", "w2"], ["b"]), n("Tanh", ["b"], ["t"]),
        n("ReduceMax", ["r"], ["r0"], keepdims=1, axes=[1]), n("Gemm", ["t", "w3"], ["y"]), n("Add", ["y", "r0"], ["z"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), k)
                               for k, s in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    onnx.save(model, path)


@pytest.mark.parametrize("first", [False, True], ids=["compiled-onnxruntime-compiled", "onnxruntime-compiled"])
def test_nodes_after_an_unconvertible_one_are_compiled_again(tmp_path, first):
    """Only the op no converter takes runs in onnxruntime (its output shape from one run, onnx having no shape
    function for it); the nodes after it are an artifact of their own, integer-only, calibrated on what
    onnxruntime gives them (before session 38 they all ran in float, and with `first` nothing compiled)."""
    import onnxruntime as ort

    import runtime

    from runtime.bench import benchmark

    _imputer_mlp(tmp_path / "m.onnx", first)
    x = np.random.default_rng(1).standard_normal((36, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:32, 0] if first else x[:32])  # samples of a batch-1 input, its 1 left out too
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    assert [n["op"] for n in art.manifest["float_nodes"]] == ["Imputer"] * (1 + first)
    assert art.onnxruntime_only is first and art.output_names == ["z", "r"]
    assert benchmark(art, repeat=2)["timed"] == "whole run (onnxruntime's part included)"
    rest = runtime.load(tmp_path / "a" / art.manifest["tail"]["rest"]["folder"])
    assert rest.manifest["integer_only"] is (not first)  # the second Imputer: the rest's own tail
    assert rest.manifest["source"]["path"] == str(tmp_path / "m.onnx")  # not the temporary file it was compiled from
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for v in x[32:]:
        ours, want = art.run({"x": v}), dict(zip(["z", "r"], session.run(None, {"x": v})))
        for k in want:
            assert ours[k].shape == want[k].shape
            assert ours[k].ravel() @ want[k].ravel() / np.linalg.norm(ours[k]) / np.linalg.norm(want[k]) > 0.999


def _gemm_relu(path):
    """x [1, 16] -> Gemm -> Relu -> z [1, 8]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["z"])],
                              "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_graph_tvm_cannot_import_runs_in_onnxruntime_with_allow_float(tmp_path, monkeypatch):
    """TVM's importer failing on a graph (a converter's own limits: 'Dynamic pads are not supported yet') is a
    refusal integer-only, naming the error; with --allow-float onnxruntime runs the model as the file gives it,
    every node listed with that error (it was refused in both modes)."""
    import onnxruntime as ort

    import frontends.onnx_import as onnx_import
    import runtime
    from frontends import load_onnx

    _gemm_relu(tmp_path / "m.onnx")

    def failing(model):
        raise ValueError("Dynamic pads are not supported yet.")

    monkeypatch.setattr(onnx_import, "import_onnx", failing)
    with pytest.raises(UnsupportedModelError, match="TVM's ONNX importer failed: Dynamic pads"):
        load_onnx(tmp_path / "m.onnx")
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", allow_float=True,
                                             progress=False))
    assert art.onnxruntime_only and art.manifest["tail"]["rest"] is None
    assert {n["reason"] for n in art.manifest["float_nodes"]} == {
        "runs in onnxruntime: TVM's ONNX importer failed: Dynamic pads are not supported yet."}
    assert [n["op"] for n in art.manifest["float_nodes"]] == ["Gemm", "Relu"]
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(art.run({"x": x})["z"], want)


def test_a_rest_that_does_not_compile_runs_in_onnxruntime(tmp_path, monkeypatch):
    """Where the nodes after onnxruntime's fail to compile on their own, onnxruntime runs them too (what
    --allow-float did before the rest was compiled again): the artifact still runs, nothing half-written."""
    import onnxruntime as ort

    import runtime
    import runtime.compiler as compiler
    from frontends import CompileError

    def failing(rest, folder, **_):
        folder.mkdir()
        raise CompileError("no lowering for this")

    monkeypatch.setattr(compiler, "_compile_rest", failing)
    _imputer_mlp(tmp_path / "m.onnx", first=False)
    x = np.random.default_rng(1).standard_normal((34, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:32])
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    assert art.manifest["tail"]["rest"] is None and not (tmp_path / "a" / "rest.artifact").exists()
    assert [n["op"] for n in art.manifest["float_nodes"]] == ["Imputer", "Gemm", "Tanh", "Gemm", "Add"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ours, want = art.run({"x": x[33]}), session.run(None, {"x": x[33]})[0]
    assert ours["z"].ravel() @ want.ravel() / np.linalg.norm(ours["z"]) / np.linalg.norm(want) > 0.999


def test_an_internal_failure_on_the_graph_runs_in_onnxruntime_with_allow_float(tmp_path, monkeypatch):
    """An internal error on a graph (a bool ReduceMax that TVM's reduction could not build was one:
    'Cannot decide min_value for bool') stays a traceback integer-only (exit 1: a bug to report); with
    --allow-float the promise holds: onnxruntime runs the model, the error named on every node, nothing
    half-written before."""
    import onnxruntime as ort

    import runtime
    import runtime.compiler as compiler

    def failing(*args, **kwargs):
        raise RuntimeError("Cannot decide min_value for bool")

    monkeypatch.setattr(compiler, "calibrate", failing)
    _gemm_relu(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((5, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:4])
    with pytest.raises(RuntimeError, match="min_value"):
        runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False)
    assert not (tmp_path / "a").exists()
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             allow_float=True, progress=False))
    assert art.onnxruntime_only and [n["op"] for n in art.manifest["float_nodes"]] == ["Gemm", "Relu"]
    assert {n["reason"] for n in art.manifest["float_nodes"]} == {
        "runs in onnxruntime: intq failed on this graph (RuntimeError: Cannot decide min_value for bool)"}
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(art.run({"x": x[4]})["z"], session.run(None, {"x": x[4]})[0])


def test_reductions_of_a_bool_mask_compile_integer_only(tmp_path):
    """ReduceMax / ReduceMin of a bool mask (any / all): TVM's reductions cannot build over bool; over
    uint8 0 / 1 they do (frontends/relax_cleanup.bool_reductions). Exact."""
    import onnxruntime as ort

    import runtime

    nodes = [helper.make_node("ReduceMax", ["mask", "axes"], ["any"], keepdims=0),
             helper.make_node("ReduceMin", ["mask", "axes"], ["all"], keepdims=1)]
    graph = helper.make_graph(nodes, "any_all", [helper.make_tensor_value_info("mask", TensorProto.BOOL, [3, 5])],
                              [helper.make_tensor_value_info("any", TensorProto.BOOL, [3]),
                               helper.make_tensor_value_info("all", TensorProto.BOOL, [3, 1])],
                              [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "m.onnx")
    mask = np.random.default_rng(0).random((6, 3, 5)) > 0.3
    np.savez(tmp_path / "c.npz", mask=mask)
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for m in mask:
        ours, want = art.run({"mask": m}), session.run(None, {"mask": m})
        assert np.array_equal(ours["any"], want[0]) and np.array_equal(ours["all"], want[1])


@pytest.mark.parametrize("scale, rois_input", [(0.5, False), (0.0625, True)])
def test_roi_align_in_float_agrees_with_onnxruntime(tmp_path, scale, rois_input):
    """A two-stage detector's RoiAlign (opset 16: half-pixel coordinates) left in float by --allow-float agrees
    with onnxruntime: TVM's converter shifted the rois by 1/2 before the spatial scale (frontends/onnx_roi_align.py),
    cosine 0.97 at scale 1/2 and worse at a backbone's 1/16."""
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(3)
    side = int(8 / scale)  # boxes in image pixels over the feature map's extent
    boxes = np.array([[2, 2, side * 0.6, side * 0.5], [1, 3, side * 0.9, side * 0.95], [5.3, 1.2, 6.1, 2.0]], np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("RoiAlign", ["r", "rois", "batch"], ["y"], output_height=3, output_width=4, sampling_ratio=2,
                              spatial_scale=scale)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    inits = [numpy_helper.from_array(np.zeros(3, np.int64), "batch")]
    if rois_input:
        inputs.append(helper.make_tensor_value_info("rois", TensorProto.FLOAT, [3, 4]))
    else:
        inits.append(numpy_helper.from_array(boxes, "rois"))
    graph = helper.make_graph(nodes, "roi", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "roi.onnx")
    feeds = {"x": rng.normal(0, 1, (8, 1, 4, 8, 8)).astype(np.float32)}
    if rois_input:
        feeds["rois"] = np.repeat(boxes[None], 8, axis=0)
    np.savez(tmp_path / "calib.npz", **feeds)
    art = load(compile_model(tmp_path / "roi.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             allow_float=True, progress=False))
    assert any("RoiAlign" in node.get("onnx", "") for node in art.manifest["float_nodes"])
    session = ort.InferenceSession(str(tmp_path / "roi.onnx"))
    sample = {k: v[0] for k, v in feeds.items()}
    got, want = art.run(sample)["y"], session.run(None, sample)[0]
    cos = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.999, cos
