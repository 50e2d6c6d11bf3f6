"""Hunt 35 (real models people bring: PP-OCRv5 for a Rust runtime, silero-stress's homograph BERT and its n-gram
accentor through torch's dynamo exporter, a memorability CNN; docs/hunts.md "A thirty-fifth hunt"): each fix for its
family, on small graphs built here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(35)


def _loop_with_if_inside(steps: int = 3, width: int = 8) -> onnx.ModelProto:
    """y = Loop(steps) over a carried v: h = v * 2 (a value of the body), then If(i == 1) {h + 1} else {h - 1},
    reading h from the body's scope (what torch's dynamo exporter writes for embedding_bag: a Loop over the bags
    whose body branches on an empty bag); the stacked If outputs are a scan output."""
    two, one = (numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((2.0, "two"), (1.0, "one")))
    then = helper.make_graph([helper.make_node("Add", ["h", "one"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, width])])
    other = helper.make_graph([helper.make_node("Sub", ["h", "one"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, width])])
    body = helper.make_graph(
        [helper.make_node("Mul", ["v", "two"], ["h"]),
         helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(1, np.int64))),
         helper.make_node("Equal", ["i", "k"], ["c"]),
         helper.make_node("If", ["c"], ["b"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["b"], ["v_out"]),
         helper.make_node("Identity", ["b"], ["y_t"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, width]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, width])])
    w = numpy_helper.from_array(rng.normal(0, 0.5, (width, width)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["v0"]),
         helper.make_node("Loop", ["steps", "", "v0"], ["v_final", "ys"], body=body),
         helper.make_node("Relu", ["ys"], ["y"])], "loop_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, width])],
        [w, two, one, numpy_helper.from_array(np.array(steps, np.int64), "steps")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_unrolled_loop_renames_what_a_nested_if_reads(tmp_path):
    """A Loop body holding an If that reads a value of the body (torch's dynamo exporter's embedding_bag:
    silero-stress's n-gram accentor) was unrolled with the If's branches still naming the body's values as they
    were, so the unrolled graph read values that no longer existed and the compile stopped with "onnxruntime
    cannot load the model: ... Nodes in a graph must be topologically sorted" about a file onnxruntime runs. The
    names a nested graph reads from the body are renamed with the body's: the loop unrolls, each If becomes a
    select, and the artifact is integer-only and agrees with onnxruntime."""
    import runtime
    from runtime.compiler import compile_model

    path = tmp_path / "loop_if.onnx"
    onnx.save(_loop_with_if_inside(), str(path))
    x = rng.normal(0, 1, (8, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sample in x[:3]:
        want = session.run(None, {"x": sample})[0]
        got = art.run({"x": sample})["y"]
        assert got.shape == want.shape
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_inline_graph_renames_outer_names_at_any_depth():
    """The renaming itself: a body value read two If levels down is renamed; a name the nested graph defines
    itself (shadowing the body's) and a model-level name are left as they are."""
    from frontends.onnx_if import inline_graph

    inner = helper.make_graph([helper.make_node("Add", ["h", "g"], ["z"]), helper.make_node("Neg", ["z"], ["z2"])],
                              "inner", [], [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1])])
    mid = helper.make_graph([helper.make_node("If", ["c"], ["m"], then_branch=inner, else_branch=inner)], "mid", [],
                            [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1])])
    body = helper.make_graph([helper.make_node("Relu", ["v"], ["h"]), helper.make_node("Neg", ["h"], ["z"]),
                              helper.make_node("If", ["c"], ["b"], then_branch=mid, else_branch=mid)], "body",
                             [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    nodes, outs = inline_graph(body, "L/0/", helper.make_graph([], "g", [], []), {"v": "x"})
    nested = next(a.g for a in nodes[2].attribute if a.name == "then_branch")
    deepest = next(a.g for a in nested.node[0].attribute if a.name == "then_branch")
    assert list(deepest.node[0].input) == ["L/0/h", "g"]  # the body's h renamed; g (the model's) kept
    assert list(deepest.node[1].input) == ["z"]  # the nested graph's own z shadows the body's
    assert deepest.output[0].name == "L/0/h"  # a graph output that is the body's value
    assert list(nodes[0].input) == ["x"] and outs == ["L/0/b"]


def _line_recognizer(path) -> None:
    """A text-line recognizer in miniature: x [1, 3, 8, W] -> Conv 3x3 -> Relu -> ReduceMean over the height ->
    Transpose to [1, W, 8] -> Softmax; W free in the file (PP-OCR's recognizers take any width)."""
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0),
                               helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
                               helper.make_node("Softmax", ["t"], ["y"], axis=-1)], "rec",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, "width"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "width", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_free_width_runs_the_calibration_width(tmp_path, capsys):
    """An OCR line recognizer compiled with a free width (`--input-shape x:1x3x48x64..640`, PP-OCRv5's recognizer)
    and calibrated on 320-wide lines got buckets 64, 128, 256, 512, 640 only; without an attention mask padding
    is not exact, so only those widths run, and the compile's own check on its 320-wide samples was skipped
    ("seq = 320: this artifact runs seq in [64, 128, 256, 512, 640] only"), as was every 320-wide line after.
    The calibration samples' width is a bucket now (it is the width the deployment has): it runs and is checked."""
    import runtime
    from runtime.compile import main as compile_main

    path = tmp_path / "rec.onnx"
    _line_recognizer(path)
    x = rng.normal(0, 1, (6, 1, 3, 8, 24)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    assert compile_main([str(path), "--calib", str(tmp_path / "calib.npz"), "--input-shape", "x:1x3x8x16..32",
                         "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "check skipped" not in err, err
    art = runtime.load(tmp_path / "a")
    assert art.manifest["buckets"]["sizes"] == [16, 24, 32]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for width in (24, 16):
        sample = x[0, ..., :width]
        want = session.run(None, {"x": sample})[0]
        got = art.run({"x": sample})["y"]
        assert got.shape == want.shape == (1, width, 8)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
