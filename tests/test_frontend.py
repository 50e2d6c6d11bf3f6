"""ONNX import: real graphs in, clear errors for bad files."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

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

    extra = [helper.make_node("Sigmoid", ["y"], ["s"], name="my_sigmoid"),
             helper.make_node("Softplus", ["y"], ["sp"], name="my_softplus")]
    p = small_cnn(tmp_path / "unsupported.onnx", extra_nodes=extra)
    with pytest.raises(UnsupportedModelError) as err:
        load_onnx(p)
    assert "Sigmoid (node my_sigmoid)" in str(err.value) and "Softplus (node my_softplus)" in str(err.value)


def test_unsupported_input_dtype_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["i"], ["o"])], "g",
                              [helper.make_tensor_value_info("i", TensorProto.FLOAT16, [1, 4])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT16, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "ints.onnx")
    with pytest.raises(UnsupportedModelError, match="input 'i' has dtype float16; supported: float32"):
        load_onnx(tmp_path / "ints.onnx")


@pytest.mark.parametrize("text", ["x", "x:", ":1x2", "x:1xA", "x:0x3"])
def test_bad_input_shape_flag(text):
    with pytest.raises(CompileError, match="--input-shape"):
        parse_input_shape(text)


def test_input_shape_flag():
    assert parse_input_shape("input_ids:1x128") == ("input_ids", (1, 128))
    assert parse_input_shape("a:b:1x3") == ("a:b", (1, 3))
