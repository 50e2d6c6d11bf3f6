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
    """v <- v * 0.9 + i * 0.1 (i the iteration number), scan output v per iteration; `cond_out` "less":
    the body stops the loop once max(v) reaches 0.8 (known only from the data)."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["fi", "tenth"], ["di"]),
         helper.make_node("Mul", ["v", "decay"], ["vd"]), helper.make_node("Add", ["vd", "di"], ["v2"]),
         helper.make_node("Identity", ["v2"], ["y"]),
         *([helper.make_node("Identity", ["cond"], ["cond2"])] if cond_out == "cond" else
           [helper.make_node("ReduceMax", ["v2"], ["vmax"], keepdims=0),  # a data-dependent stop
            helper.make_node("Less", ["vmax", "limit"], ["cond2"])])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("v", F, [3])],
        [helper.make_tensor_value_info("cond2", TensorProto.BOOL, []), helper.make_tensor_value_info("v2", F, [3]),
         helper.make_tensor_value_info("y", F, [3])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "tenth"), numpy_helper.from_array(np.array(0.9, np.float32), "decay"),
         numpy_helper.from_array(np.array(0.8, np.float32), "limit")])  # "less": stops when max(v) reaches 0.8
    node = helper.make_node("Loop", ["M", "", "v0"], ["vn", "ys"], body=body)
    model = _model([node], [helper.make_tensor_value_info("v0", F, [3])],
                   [helper.make_tensor_value_info("vn", F, [3]), helper.make_tensor_value_info("ys", F, [trip, 3])],
                   [numpy_helper.from_array(np.array(trip, np.int64), "M")])
    return model, {"v0": np.array([0.5, -0.2, 1.0], np.float32)}


def counting_loop_model(trip=5, stop=None, counted=True):
    """tf2onnx's Keras RNN `while` loop: carried counter k and time t, x[t] read from the outer scope,
    h <- tanh(h * 0.5 + x[t]), and the cond recomputed as (k + 1 < n) and (t + 1 < n), n = `stop`
    (default the trip count: true until the last step). `counted=False`: no trip count, the first
    cond computed as k0 < n (tf2onnx from Keras 2.15)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["k", "one"], ["k2"]), helper.make_node("Add", ["t", "one"], ["t2"]),
         helper.make_node("Gather", ["x", "t"], ["xt"]), helper.make_node("Mul", ["h", "half"], ["hh"]),
         helper.make_node("Add", ["hh", "xt"], ["pre"]), helper.make_node("Tanh", ["pre"], ["h2"]),
         helper.make_node("Identity", ["h2"], ["y"]),
         helper.make_node("Less", ["k2", "n"], ["c1"]), helper.make_node("Less", ["t2", "n"], ["c2"]),
         helper.make_node("And", ["c1", "c2"], ["cond2"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("k", TensorProto.INT64, []),
                 helper.make_tensor_value_info("t", TensorProto.INT64, []), helper.make_tensor_value_info("h", F, [3])],
        [helper.make_tensor_value_info("cond2", TensorProto.BOOL, []),
         helper.make_tensor_value_info("k2", TensorProto.INT64, []),
         helper.make_tensor_value_info("t2", TensorProto.INT64, []), helper.make_tensor_value_info("h2", F, [3]),
         helper.make_tensor_value_info("y", F, [3])],
        [numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    node = helper.make_node("Loop", ["M" if counted else "", "" if counted else "c0", "k0", "k0", "h0"],
                            ["kn", "tn", "hn", "ys"], body=body)
    first = [] if counted else [helper.make_node("Less", ["k0", "n"], ["c0"])]
    model = _model([*first, node], [helper.make_tensor_value_info("x", F, [trip, 3]),
                                    helper.make_tensor_value_info("h0", F, [3])],
                   [helper.make_tensor_value_info("hn", F, [3]), helper.make_tensor_value_info("ys", F, [trip, 3])],
                   [numpy_helper.from_array(np.array(trip, np.int64), "M"),
                    numpy_helper.from_array(np.array(stop or trip, np.int64), "n"),
                    numpy_helper.from_array(np.array(0, np.int64), "k0")])
    rng = np.random.default_rng(1)
    return model, {"x": rng.standard_normal((trip, 3)).astype(np.float32), "h0": np.zeros(3, np.float32)}


@pytest.mark.parametrize("counted", [True, False])
def test_counting_loop_unrolled_equals_onnxruntime(counted):
    model, feeds = counting_loop_model(counted=counted)
    want = _run(model, feeds)
    assert unroll_loops(model) == 1 and "Loop" not in {n.op_type for n in model.graph.node}
    for got, ref in zip(_run(model, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    early, _ = counting_loop_model(stop=4, counted=counted)  # the cond turns false a step before: 4 steps
    early.graph.output[1].type.tensor_type.shape.dim[0].dim_param = "steps"
    want = _run(early, feeds)
    assert unroll_loops(early) == 1 and want[1].shape == (4, 3)
    for got, ref in zip(_run(early, feeds), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


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
    """Refused integer-only, named with why; with --allow-float, the loop reading the inputs itself, the
    whole model runs in onnxruntime (refused in both modes before)."""
    from frontends import UnsupportedModelError, load_onnx

    model, _ = loop_model(cond_out="less")
    model.graph.node[0].name = "my_loop"
    onnx.save(model, tmp_path / "loop.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(tmp_path / "loop.onnx")
    assert "Loop (node my_loop)" in str(err.value) and "computes its own condition" in str(err.value)
    imported = load_onnx(tmp_path / "loop.onnx", allow_unsupported=True)
    assert imported.mod is None and [n["op"] for n in imported.tail.nodes] == ["Loop"]
    assert imported.tail.nodes[0]["reason"] == "control flow that cannot be unrolled"


def test_stacked_loops_counted_by_the_bound_shape_unroll(tmp_path):
    """Two Keras-style loops, each counting the length of its input (Shape -> Gather), the second
    over the first's stacked output: both unroll once --input-shape binds the length (the second's
    count is constant only after the first is unrolled and folded)."""
    from frontends import load_onnx

    one, _ = counting_loop_model()
    body = one.graph.node[0].attribute[0].g
    nodes, inits = [], [numpy_helper.from_array(np.array(0, np.int64), "k0"),
                        numpy_helper.from_array(np.array(0, np.int64), "zero")]
    x = "x"
    for j in range(2):
        b = onnx.GraphProto()
        b.CopyFrom(body)
        for node in b.node:  # this loop's input and length instead of the outer "x" and constant n
            node.input[:] = [f"x{j}" if i == "x" else f"n{j}" if i == "n" else i for i in node.input]
        nodes += [helper.make_node("Identity", [x], [f"x{j}"]), helper.make_node("Shape", [x], [f"s{j}"]),
                  helper.make_node("Gather", [f"s{j}", "zero"], [f"n{j}"]),
                  helper.make_node("Loop", [f"n{j}", "", "k0", "k0", "h0"], [f"kn{j}", f"tn{j}", f"hn{j}", f"ys{j}"],
                                   body=b, name=f"while_loop_{j}")]
        x = f"ys{j}"
    model = _model(nodes, [helper.make_tensor_value_info("x", F, ["T", 3]), helper.make_tensor_value_info("h0", F, [3])],
                   [helper.make_tensor_value_info("ys1", F, ["T", 3])], inits)
    onnx.save(model, tmp_path / "stacked.onnx")
    imported = load_onnx(tmp_path / "stacked.onnx", {"x": (5, 3), "h0": (3,)})
    assert "Loop" not in imported.mod.script(show_meta=False)


def paddle_counting_loop(steps=5):
    """paddle2onnx's decoder loop (SLANet's table structure): trip count 1024, the cond recomputed as
    float(i) + 1 < float(n) + 1 from carried counters, n a constant: it runs exactly n + 1 steps."""
    const = lambda name, v, dtype=np.float32: helper.make_node("Constant", [], [name],
                                                               value=numpy_helper.from_array(np.array(v, dtype)))
    body = helper.make_graph(
        [const("one", 1.0), const("half", 0.5),
         helper.make_node("Cast", ["i_in"], ["i_f"], to=F), helper.make_node("Add", ["i_f", "one"], ["i1f"]),
         helper.make_node("Cast", ["i1f"], ["i_out"], to=TensorProto.INT64),
         helper.make_node("Cast", ["n_in"], ["n_f"], to=F), helper.make_node("Add", ["n_f", "one"], ["n1f"]),
         helper.make_node("Less", ["i1f", "n1f"], ["cond_out"]), helper.make_node("Identity", ["n_in"], ["n_out"]),
         helper.make_node("Mul", ["acc_in", "half"], ["h"]), helper.make_node("Add", ["h", "x"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("i_in", TensorProto.INT64, []), helper.make_tensor_value_info("n_in", TensorProto.INT64, []),
         helper.make_tensor_value_info("acc_in", F, [1, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("i_out", TensorProto.INT64, []),
         helper.make_tensor_value_info("n_out", TensorProto.INT64, []), helper.make_tensor_value_info("acc_out", F, [1, 8])])
    nodes = [const("M", 1024, np.int64), const("i0", 0, np.int64), const("n0", steps - 1, np.int64),
             const("acc0", np.zeros((1, 8)), np.float32), const("true", True, np.bool_),
             helper.make_node("Loop", ["M", "true", "i0", "n0", "acc0"], ["i_n", "n_n", "acc"], body=body),
             helper.make_node("Relu", ["acc"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", F, [1, 8])], [helper.make_tensor_value_info("y", F, [1, 8])],
                  opset=13)


def test_loop_counting_to_a_constant_compiles_integer_only(tmp_path):
    """A Loop whose cond turns false at a step known at compile time (501 of at most 1024 in SLANet)
    runs exactly that many steps, unrolled; it was refused in both modes. Its five 16-bit
    requantizations in one elementwise kernel also took TVM's simplifier over 5 minutes, now
    under a second (cpu_schedules.MAX_CLAMPS)."""
    import runtime
    from runtime.compiler import compile_model

    model = paddle_counting_loop()
    onnx.save(model, tmp_path / "loop.onnx")
    x = np.random.default_rng(0).normal(0, 1, (8, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    art = runtime.load(compile_model(tmp_path / "loop.onnx", output=tmp_path / "loop.artifact",
                                     calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    want = _run(model, {"x": x[0]})[0]
    np.testing.assert_allclose(want, np.maximum(x[0], 0) * 1.9375, rtol=1e-5)  # 5 steps: 1 + 1/2 + ... + 1/16
    got = art.run({"x": x[0]})["y"]
    assert float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))) >= 0.999
