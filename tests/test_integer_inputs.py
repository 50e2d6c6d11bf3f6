"""Float inputs that the graph only casts to integers (tf2onnx's Keras Embedding: float ids -> Cast ->
Gather): passed as exact integers (`scale: None`), cast at the boundary as ONNX Cast does
(passes/lowering/integer_inputs.py, runtime.boundary.to_integer)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from frontends import CompileError, InputError
from runtime.boundary import to_integer
from runtime.compile import main as compile_main
from runtime.run import main as run_main

VOCAB, DIM = 50, 16


def _model(path, to=TensorProto.INT32, reshape: bool = False, also_mul: bool = False, select: bool = False) -> str:
    """ids (float) [-> Reshape] -> Cast(to) -> Gather(table) -> MatMul -> y, and the cast ids + 1 as `idx`
    (an integer output, compared exactly); `also_mul`: ids * 0.5 also reaches y (a non-Cast use);
    `select`: TensorFlow's GatherV2 index as tf2onnx writes it, where(float(ix) < 0.0, ix + VOCAB, ix)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, DIM)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((DIM, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array(1, onnx.helper.tensor_dtype_to_np_dtype(to)), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    src = "ids"
    nodes = []
    if reshape:
        nodes.append(helper.make_node("Reshape", ["ids", "shape"], ["ids2"]))
        src = "ids2"
    nodes.append(helper.make_node("Cast", [src], ["ix"], to=to))
    if select:
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                  numpy_helper.from_array(np.array(VOCAB, onnx.helper.tensor_dtype_to_np_dtype(to)), "vocab")]
        nodes += [helper.make_node("Cast", ["ix"], ["fx"], to=TensorProto.FLOAT),
                  helper.make_node("Less", ["fx", "zero"], ["neg"]),
                  helper.make_node("Add", ["ix", "vocab"], ["up"]),
                  helper.make_node("Where", ["neg", "up", "ix"], ["gx"])]
    nodes += [helper.make_node("Gather", ["table", "gx" if select else "ix"], ["emb"], axis=0),
              helper.make_node("MatMul", ["emb", "w"], ["mm"]),
              helper.make_node("Add", ["ix", "one"], ["idx"])]
    if also_mul:
        nodes += [helper.make_node("Mul", [src, "half"], ["scaled"]),
                  helper.make_node("Unsqueeze", ["scaled", "axis2"], ["s3"]),
                  helper.make_node("Add", ["mm", "s3"], ["y"])]
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    else:
        nodes.append(helper.make_node("Identity", ["mm"], ["y"]))
    graph = helper.make_graph(nodes, "float_ids",
                              [helper.make_tensor_value_info("ids", TensorProto.FLOAT, [8] if reshape else [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4]),
                               helper.make_tensor_value_info("idx", to, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _ids(count: int, shape=(1, 8), seed: int = 1) -> np.ndarray:
    """Ids with fractions (truncated by Cast), as float32."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, VOCAB, (count, *shape)) + rng.uniform(0, 0.99, (count, *shape))).astype(np.float32)


def _calib(tmp_path, shape=(1, 8)):
    np.savez(tmp_path / "calib.npz", ids=_ids(4, shape))
    return str(tmp_path / "calib.npz")


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("to, reshape, select, dtype", [(TensorProto.INT32, False, False, "int32"),
                                                        (TensorProto.INT64, True, False, "int64"),
                                                        (TensorProto.INT32, False, True, "int32")])
def test_cast_only_float_input_is_an_exact_integer_input(tmp_path, to, reshape, select, dtype):
    """Integer-only (also with tf2onnx's Less on the ids cast back to float: the 0.0 becomes an integer
    constant); the manifest keeps the float dtype for the user, `scale: null` and the Cast's dtype for
    the graph; the cast ids equal onnxruntime's exactly, the embedding matmul agrees."""
    shape = (8,) if reshape else (1, 8)
    path = _model(tmp_path / "m.onnx", to, reshape, select=select)
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=_calib(tmp_path, shape),
                                               progress=False))
    assert model.manifest["integer_only"] is True
    spec = model.manifest["inputs"][0]
    assert spec["dtype"] == "float32" and spec["quant"]["scale"] is None and spec["quant"]["dtype"] == dtype
    assert "float32" not in open(tmp_path / "a" / model.manifest["relax"]).read().split("def main", 1)[1]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for x in _ids(3, shape, seed=5):
        ours, (y, idx) = model.run({"ids": x}), session.run(None, {"ids": x})
        np.testing.assert_array_equal(ours["idx"], idx.astype(np.float32))  # truncation, bit for bit
        assert _cosine(ours["y"], y) > 0.999


def test_cli_compile_and_run(tmp_path, capsys):
    path = _model(tmp_path / "m.onnx")
    out = tmp_path / "cli.artifact"
    assert compile_main([path, "--calib", _calib(tmp_path), "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["integer_only"] is True and manifest["inputs"][0]["quant"]["scale"] is None
    x = np.array([[0.0, 1.9, 2.5, 49.99, 7.0, 3.2, 10.7, 0.4]], np.float32)
    np.savez(tmp_path / "in.npz", ids=x)
    assert run_main([str(out), "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["idx"], np.trunc(x) + 1)


def test_runtime_refuses_ids_it_cannot_cast(tmp_path):
    """Non-finite values as for any float input; a value outside the Cast's dtype (undefined in ONNX) too."""
    path = _model(tmp_path / "m.onnx")
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=_calib(tmp_path), progress=False))
    x = _ids(1)[0]
    for bad, message in ((np.nan, "NaN or infinite"), (3e9, "outside int32")):
        x[0, 3] = bad
        with pytest.raises(InputError, match=message):
            model.run({"ids": x})


def test_float_input_with_another_use_stays_quantized(tmp_path):
    """ids also feed a Mul: still a quantized input, whose Cast is a table over its 16-bit grid
    (toward zero, as Cast: these ids carry fractions), fine enough that the ids come back exactly."""
    path = _model(tmp_path / "m.onnx", also_mul=True)
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=_calib(tmp_path), progress=False))
    quant = model.manifest["inputs"][0]["quant"]
    assert model.manifest["integer_only"] and quant["scale"] is not None and quant["dtype"] in ("int8", "int16")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for ids in _ids(3, (1, 8)):
        got, want = model.run({"ids": ids}), dict(zip(["y", "idx"], session.run(None, {"ids": ids})))
        np.testing.assert_array_equal(got["idx"], want["idx"])


def test_to_integer_is_onnx_cast():
    x = np.array([-2.9, -1.0, -0.5, 0.0, 0.99, 1.5, 2147483647.0], np.float64)
    np.testing.assert_array_equal(to_integer(x, "int64"), [-2, -1, 0, 0, 0, 1, 2147483647])
    np.testing.assert_array_equal(to_integer(x[:-1].astype(np.float32), "int32"), x[:-1].astype(np.int32))
    with pytest.raises(ValueError, match="outside uint8"):
        to_integer(np.array([-1.0]), "uint8")
    with pytest.raises(ValueError, match="outside int32"):
        to_integer(np.array([2.0**31]), "int32")


def _casts(path, targets) -> str:
    """ids (float) -> one Cast per dtype in `targets`, each output as it is."""
    nodes = [helper.make_node("Cast", ["ids"], [f"c{k}"], to=t) for k, t in enumerate(targets)]
    graph = helper.make_graph(nodes, "casts", [helper.make_tensor_value_info("ids", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"c{k}", t, [1, 8]) for k, t in enumerate(targets)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("targets, dtype", [
    ((TensorProto.INT32,), "int32"), ((TensorProto.INT8,), "int8"), ((TensorProto.UINT16,), "uint16"),
    ((TensorProto.INT16, TensorProto.INT32), "int32"), ((TensorProto.UINT8, TensorProto.INT8), "int64"),
    ((TensorProto.BOOL,), None), ((TensorProto.INT32, TensorProto.FLOAT16), None)])
def test_which_inputs_are_exact(tmp_path, targets, dtype):
    """The dtype is the Cast's `to` as written (found past TVM's int64 wrap), the widest of several (int64
    when signed and unsigned mix); a Cast to bool (x != 0) or to a float type keeps the input quantized."""
    from frontends import load_onnx
    from passes import bind_weights
    from passes.lowering.integer_inputs import find_exact_inputs

    path = _casts(tmp_path / "c.onnx", targets)
    imported = load_onnx(path, None)
    found = find_exact_inputs(bind_weights(imported.mod, imported.params)["main"])
    assert found.dtypes == ({} if dtype is None else {"ids": dtype})
    if dtype is None:
        return
    x = np.array([[-3.7, -1.2, -0.0, 0.5, 1.9, 7.99, 100.2, 127.0]], np.float32)
    x = np.abs(x) if any(t in (TensorProto.UINT8, TensorProto.UINT16) for t in targets) else x
    np.savez(tmp_path / "calib.npz", ids=x[None])
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                                               progress=False))
    assert model.manifest["integer_only"] is True
    ours = model.run({"ids": x})
    for k, want in enumerate(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"ids": x})):
        np.testing.assert_array_equal(ours[f"c{k}"], want.astype(np.float32))


def test_one_hot_mask_into_matmul_is_exact_uint8(tmp_path):
    """A one-hot built in the graph, Cast(Equal(byte ids, arange)) to float, into a MatMul (magika's byte
    embedding): the 0/1 values are exact uint8 operands at scale 1, integer-only (was an internal error)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.arange(8, dtype=np.int32).reshape(1, 1, 8), "levels"),
             numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 5, 1], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["ids", "shape"], ["ids3"]),
             helper.make_node("Equal", ["ids3", "levels"], ["hot"]),
             helper.make_node("Cast", ["hot"], ["hotf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["hotf", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "onehot.onnx"
    onnx.save(model, path)
    ids = rng.integers(0, 8, (6, 1, 5)).astype(np.int32)
    np.savez(tmp_path / "calib.npz", ids=ids)
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    want = ort.InferenceSession(str(path)).run(None, {"ids": ids[3]})[0]
    got = art.run({"ids": ids[3]})["y"]
    assert float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999


def test_float_cast_to_an_index_is_a_table(tmp_path):
    """Relu(x) * 4 -> Floor -> Clip -> Cast(int64) -> Gather: the cast of a quantized tensor to
    integers is a table over its grid, rounding to the nearest where calibration saw whole numbers
    only (the grid need not hold them: 5 at a step of 0.496 is 4.96, which truncates to 4). It was
    refused; with --allow-float, 40% of the rows came from the neighbouring table entry."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import runtime
    from runtime import compile_model

    table = np.random.default_rng(0).normal(0, 1, (64, 8)).astype(np.float32)
    consts = {"four": np.array(4, np.float32), "lo": np.array(0, np.float32), "hi": np.array(63, np.float32),
              "tab": table}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "four"], ["m"]),
             helper.make_node("Floor", ["m"], ["f"]), helper.make_node("Clip", ["f", "lo", "hi"], ["c"]),
             helper.make_node("Cast", ["c"], ["i"], to=TensorProto.INT64),
             helper.make_node("Gather", ["tab", "i"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cast.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=np.abs(rng.normal(0, 5, (8, 1, 16))).astype(np.float32))
    art = runtime.load(compile_model(path, "x86", tmp_path / "a.artifact", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = same = 0
    for x in np.abs(rng.normal(0, 5, (100, 1, 16))).astype(np.float32):
        got, want = art.run({"x": x})["y"], session.run(None, {"x": x})[0]
        same += int(np.sum(np.all(np.abs(got - want) < 1e-3, axis=-1)))
        rows += 16
    assert same >= 0.98 * rows, (same, rows)  # the rest: x * 4 within one input step of a whole number


def test_topk_of_integer_lengths_stays_exact(tmp_path):
    """torch's pack_padded_sequence(enforce_sorted=False) sorts the batch by length: TopK of an int64
    input, its indices gathering the activations. The lengths were never a float; it was refused
    ("an exact int64 tensor used as a float activation") though --allow-float's artifact verified
    integer-only. Now the sort runs on the integers: order and values as onnxruntime's."""
    batch, length, width = 3, 8, 16
    n = helper.make_node
    nodes = [n("Shape", ["lengths"], ["shp"]), n("Gather", ["shp", "zero"], ["k"], axis=0),
             n("Unsqueeze", ["k", "ax0"], ["k1"]),
             n("TopK", ["lengths", "k1"], ["sorted_lengths", "order"], axis=-1, largest=1),
             n("Gather", ["x", "order"], ["xs"], axis=0), n("MatMul", ["xs", "w"], ["y0"]), n("Relu", ["y0"], ["y"])]
    w = np.random.default_rng(0).standard_normal((width, width)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, length, width]),
                     helper.make_tensor_value_info("lengths", TensorProto.INT64, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, length, width]),
         helper.make_tensor_value_info("sorted_lengths", TensorProto.INT64, [batch])],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0]), helper.make_tensor("ax0", TensorProto.INT64, [1], [0]),
         numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, batch, length, width)).astype(np.float32),
             lengths=rng.integers(1, length + 1, (6, batch)).astype(np.int64))
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", output=tmp_path / "a", calib=tmp_path / "calib.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    feeds = {"x": rng.standard_normal((batch, length, width)).astype(np.float32), "lengths": np.array([4, 7, 5])}
    got, (y, lengths) = art.run(feeds), ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, feeds)
    assert got["sorted_lengths"].tolist() == lengths.tolist() == [7, 5, 4]
    assert float(got["y"].ravel() @ y.ravel() / (np.linalg.norm(got["y"]) * np.linalg.norm(y))) >= 0.999


@pytest.mark.parametrize("dtype", [TensorProto.UINT8, TensorProto.INT32])
def test_l2_norm_of_integer_counts_is_integer_only(tmp_path, dtype):
    """Counts cast to float and L2-normalized (TransNetV2's colour histograms: ScatterElements counts ->
    Cast -> ReduceL2 -> Div): the squares of exact integers were refused as 'a float product of two exact
    integer tensors' (hunt 16 F2); they multiply as the 16-bit activations they stand for."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceL2", ["xf"], ["n"], axes=[1], keepdims=1),
             helper.make_node("Div", ["xf", "n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [4, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 512])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "l2.onnx")
    np_dtype = np.uint8 if dtype == TensorProto.UINT8 else np.int32
    x = np.random.default_rng(0).integers(0, 200, (20, 4, 512)).astype(np_dtype)
    np.savez(tmp_path / "c.npz", x=x[:16])
    art = runtime.load(runtime.compile_model(tmp_path / "l2.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"]
    sess = ort.InferenceSession(str(tmp_path / "l2.onnx"), providers=["CPUExecutionProvider"])
    for sample in x[16:]:
        assert _cosine(art.run({"x": sample})["y"], sess.run(None, {"x": sample})[0]) > 0.999


def test_exact_inputs_run_from_the_kept_argument(tmp_path):
    """An exact integer input is copied into this thread's kept, aligned buffer that is already the VM's
    argument (no aligned copy and DLPack wrap per run); two outputs come back in order (read by index,
    the count known); integers equal to a run on fresh arrays and the cast ids equal onnxruntime's."""
    path = _model(tmp_path / "m.onnx", TensorProto.INT32)
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=_calib(tmp_path), progress=False))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for x in _ids(4, seed=7):
        q = model._quantized({"ids": x}, reuse=True)[0]
        assert q is model._local.buffers[0][0] and id(q) in model._local.buffer_args
        fresh = model.run_integer(model.quantize_inputs({"ids": x}))
        kept = model._integer_outputs([q], copy=True)
        assert len(kept) == 2 and all(np.array_equal(a, b) for a, b in zip(fresh, kept))
        ours, (y, idx) = model.run({"ids": x}), session.run(None, {"ids": x})
        np.testing.assert_array_equal(ours["idx"], idx.astype(np.float32))
        assert _cosine(ours["y"], y) > 0.999
