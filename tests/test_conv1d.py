"""1-D convs and pools (audio front ends) compile integer-only as conv2d / pool2d of height one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _model(path) -> str:
    rng = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [init("w1", rng.standard_normal((8, 2, 5)) * 0.3), init("b1", rng.standard_normal(8) * 0.1),
             init("w2", rng.standard_normal((8, 2, 3)) * 0.3), init("w3", rng.standard_normal((4, 8, 1)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 1], strides=[2]),
             helper.make_node("Relu", ["c1"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["r1"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[2, 2], dilations=[2], group=4),
             helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[2], strides=[2]),
             helper.make_node("Conv", ["p2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def test_conv1d_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _model(tmp_path / "conv1d.onnx")
    x = np.random.default_rng(1).standard_normal((16, 1, 2, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    model = load(compile_model(path, "x86", tmp_path / "c.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    text = (tmp_path / "c.artifact" / "model.relax.py").read_text()
    assert "conv1d" not in text and "pool1d" not in text
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in x[:4]:
        ref, out = session.run(None, {"x": sample})[0].ravel(), model.run({"x": sample})["y"].ravel()
        assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def test_conv1d_transpose_compiles_integer_only(tmp_path):
    """A 1-D transposed conv (vocoders, audio decoders) lowers as a 2-D one of height one."""
    from runtime import compile_model, load

    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((8, 4, 4)) * 0.3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2], pads=[1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ct.onnx")
    xs = np.random.default_rng(1).standard_normal((8, 1, 8, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "ct.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(tmp_path / "ct.onnx")).run(None, {"x": xs[2]})[0].ravel()
    out = art.run({"x": xs[2]})["y"].ravel()
    assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def test_conv_transpose_output_shape_is_honoured(tmp_path):
    """ConvTranspose with output_shape (TVM's converter ignores it: the output came out 9x7) gets the pads and
    output padding onnxruntime derives: 10x8, equal to onnxruntime."""
    from runtime import compile_model, load

    w = numpy_helper.from_array((np.random.default_rng(2).standard_normal((1, 2, 3, 3)) * 0.3).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2],
                                                output_shape=[10, 8])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cts.onnx")
    xs = np.random.default_rng(3).standard_normal((8, 1, 1, 3, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "cts.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    ref = ort.InferenceSession(str(tmp_path / "cts.onnx")).run(None, {"x": xs[2]})[0]
    out = art.run({"x": xs[2]})["y"]
    assert out.shape == ref.shape == (1, 2, 10, 8)
    assert ref.ravel() @ out.ravel() / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def _tall_or_wide(path, tall: bool) -> str:
    """The model of `_model` in 2-D form: along the height of a width-one image (CREPE's (k, 1)
    kernels) or along the width of a height-one one; the same weights either way."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 2, 5)) * 0.3, rng.standard_normal(8) * 0.1
    w2, w3 = rng.standard_normal((8, 2, 3)) * 0.3, rng.standard_normal((4, 8, 1)) * 0.3

    def init(name, a):
        a = np.asarray(a, np.float32)
        return numpy_helper.from_array(a[..., None] if tall else a[..., None, :], name)

    def hw(k, other=1):  # a 1-D attribute in 2-D: (k, 1) tall, (1, k) wide
        return [k, other] if tall else [other, k]

    def pads(a, b):  # ONNX 2-D pads: h_begin, w_begin, h_end, w_end
        return [a, 0, b, 0] if tall else [0, a, 0, b]

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=pads(2, 1), strides=hw(2)),
             helper.make_node("Relu", ["c1"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["r1"], kernel_shape=hw(3), pads=pads(1, 1)),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=pads(2, 2), dilations=hw(2), group=4),
             helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=hw(2), strides=hw(2)),
             helper.make_node("Conv", ["p2", "w3"], ["y"])]
    inits = [init("w1", w1), numpy_helper.from_array(b1.astype(np.float32), "b1"), init("w2", w2), init("w3", w3)]
    graph = helper.make_graph(nodes, "tall" if tall else "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, *hw(64)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, *hw(16)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def test_tall_conv_runs_as_wide_and_equals_it(tmp_path):
    """Convs and pools along the height of a width-one image become their height-one form
    (passes/tall_conv_as_wide.py): no (k, 1) kernel is left, and the integers equal those of the
    same model written along the width."""
    import tvm

    from frontends import load_onnx
    from passes import bind_weights
    from runtime import compile_model, load

    path = _tall_or_wide(tmp_path / "tall.onnx", True)
    imported = load_onnx(path)
    calls = [b.value for block in bind_weights(imported.mod, imported.params)["main"].body.blocks
             for b in block.bindings if isinstance(b.value, tvm.relax.Call) and "pool2d" in str(b.value.op)
             or isinstance(b.value, tvm.relax.Call) and str(getattr(b.value.op, "name", "")) == "relax.nn.conv2d"]
    assert len(calls) == 5
    windows = [c for c in calls if "pool" in str(c.op) or int(c.args[1].ty.shape[2]) * int(c.args[1].ty.shape[3]) > 1]  # the 1x1 conv aside
    assert len(windows) == 4 and all(int(c.args[0].ty.shape[2]) == 1 for c in windows)  # along height-one rows

    x = np.random.default_rng(1).standard_normal((8, 1, 2, 64)).astype(np.float32)
    np.savez(tmp_path / "tall.npz", x=x[..., None])
    np.savez(tmp_path / "wide.npz", x=x[:, :, :, None, :])
    tall = load(compile_model(path, "x86", tmp_path / "t.artifact", calib=tmp_path / "tall.npz", progress=False))
    wide = load(compile_model(_tall_or_wide(tmp_path / "wide.onnx", False), "x86", tmp_path / "w.artifact",
                              calib=tmp_path / "wide.npz", progress=False))
    assert tall.manifest["integer_only"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in x[:3]:
        q_tall = tall.run_integer(tall.quantize_inputs({"x": sample[..., None]}))[0]
        q_wide = wide.run_integer(wide.quantize_inputs({"x": sample[:, :, None, :]}))[0]
        np.testing.assert_array_equal(q_tall.reshape(-1), q_wide.reshape(-1))
        got, want = tall.run({"x": sample[..., None]})["y"], session.run(None, {"x": sample[..., None]})[0]
        assert got.shape == want.shape == (1, 4, 16, 1)
        assert float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999


def test_full_width_conv_runs_as_a_conv_over_channels(tmp_path):
    """A conv whose kernel spans its input's whole width (TF's conv1d over features: musicnn's 7 x 561
    kernel over one channel) becomes a conv over C*W channels along a height-one row
    (passes/full_width_conv_as_channels.py): it ran a row of 561 positions per output, 700x onnxruntime.
    A kernel one column short of the width keeps its form (2 output columns) but takes no flat-row kernel."""
    import tvm

    from frontends import load_onnx
    from passes import bind_weights
    from runtime import compile_model, load

    rng = np.random.default_rng(3)
    for kw, columns in ((40, 1), (39, 2)):
        w = numpy_helper.from_array((rng.standard_normal((16, 2, 5, kw)) * 0.1).astype(np.float32), "w")
        b = numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[2, 0, 2, 0]),
                                   helper.make_node("Relu", ["c"], ["y"])], "fw",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 30, 40])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 30, columns])], [w, b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = str(tmp_path / f"fw{kw}.onnx")
        onnx.save(model, path)
        imported = load_onnx(path)
        convs = [b.value for block in bind_weights(imported.mod, imported.params)["main"].body.blocks
                 for b in block.bindings if isinstance(b.value, tvm.relax.Call)
                 and str(getattr(b.value.op, "name", "")) == "relax.nn.conv2d"]
        assert [list(map(int, c.args[1].ty.shape)) for c in convs] == ([[16, 80, 1, 5]] if columns == 1 else [[16, 2, 5, 39]])
        x = rng.random((6, 1, 2, 30, 40)).astype(np.float32)
        np.savez(tmp_path / "c.npz", x=x)
        art = load(compile_model(path, "x86", tmp_path / f"a{kw}", calib=tmp_path / "c.npz", progress=False))
        assert art.manifest["integer_only"]
        assert not any("dwflat" in k for k in art.kernel_times(art.quantize_inputs({"x": x[0]}), repeat=1))
        got, want = art.run({"x": x[5]})["y"], ort.InferenceSession(path).run(None, {"x": x[5]})[0]
        assert float(got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999
