"""Einsum with a constant operand, or of two activations, becomes a MatMul chain (frontends/onnx_einsum.py): equal to
onnxruntime's Einsum for grouped-linear, plain-matmul and transposed-output equations, also written with an ellipsis
over static shapes; others stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from frontends.onnx_einsum import einsum_to_matmul


def _model(equation, x_shape, w_shape, out_shape, w_first=False):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")
    inputs = ["w", "x"] if w_first else ["x", "w"]
    graph = helper.make_graph([helper.make_node("Einsum", inputs, ["y"], equation=equation, name="e")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


CASES = [
    ("btgi,gih->btgh", (1, 5, 4, 3), (4, 3, 6), (1, 5, 4, 6), False),  # DeepFilterNet's grouped linear
    ("bti,ih->bth", (2, 5, 8), (8, 3), (2, 5, 3), False),  # a plain matmul
    ("hi,bti->bht", (2, 5, 8), (3, 8), (2, 3, 5), True),  # constant first, output transposed
    ("bgi,gih->bhg", (2, 4, 3), (4, 3, 5), (2, 5, 4), False),  # groups, output letters reordered
    ("bi,hk->bh", (2, 3), (4, 5), (2, 4), False),  # a letter summed away on each side alone, first
    ("...i,ih->...h", (2, 3), (3, 4), (2, 4), False),  # ellipsis, written out as letters first
]


@pytest.mark.parametrize("equation,x_shape,w_shape,out_shape,w_first", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(tmp_path, equation, x_shape, w_shape, out_shape, w_first):
    model = _model(equation, x_shape, w_shape, out_shape, w_first)
    onnx.save(model, tmp_path / "a.onnx")
    assert einsum_to_matmul(model) == 1 and "Einsum" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "b.onnx")
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    a, b = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for f in ("a.onnx", "b.onnx"))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation,x_shape,w_shape,out_shape", [
    ("ii,ij->j", (3, 3), (3, 4), (4,)),  # a diagonal
])
def test_other_equations_stay(equation, x_shape, w_shape, out_shape):
    model = _model(equation, x_shape, w_shape, out_shape)
    assert einsum_to_matmul(model) == 0 and [n.op_type for n in model.graph.node] == ["Einsum"]


def test_grouped_linear_compiles_integer_only(tmp_path):
    import runtime
    from runtime.compiler import compile_model

    onnx.save(_model(*CASES[0][:4]), tmp_path / "g.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 1, 5, 4, 3)).astype(np.float32))
    art = runtime.load(compile_model(tmp_path / "g.onnx", output=tmp_path / "a", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.standard_normal((1, 5, 4, 3)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = art.run({"x": x})["y"]
    assert float(np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.99


def _pair_model(equation, a_shape, b_shape, out_shape):
    graph = helper.make_graph([helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation, name="e")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape)),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


PAIRS = [
    ("bcd,bnd->bcn", (2, 5, 8), (2, 7, 8), (2, 5, 7)),  # TesseraNet's attention-like product
    ("bcd,bdhw->bchw", (1, 4, 6), (1, 6, 3, 5), (1, 4, 3, 5)),  # its mask head
    ("bhqd,bhkd->bhqk", (1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 4, 6)),  # Q.K^T
    ("ij,jk->ki", (3, 4), (4, 5), (5, 3)),  # no batch letter, output transposed
    ("bhqxc,bhlkc->bhqxk", (1, 2, 3, 4, 5), (1, 2, 6, 3, 5), (1, 2, 3, 4, 3)),  # l summed on b alone (D-RCNet)
    ("...pd,...qd->...pq", (1, 5, 8), (1, 7, 8), (1, 5, 7)),  # OWL-ViT's class head (hunt 19: refused before)
    ("...qd,...kd->...qk", (2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 4, 6)),  # two ellipsis letters
]


@pytest.mark.parametrize("equation,a_shape,b_shape,out_shape", PAIRS, ids=[c[0] for c in PAIRS])
def test_two_activations_match_onnxruntime(tmp_path, equation, a_shape, b_shape, out_shape):
    """Einsum of two activations: a batched MatMul between Transposes and Reshapes, exact as onnxruntime's."""
    model = _pair_model(equation, a_shape, b_shape, out_shape)
    onnx.save(model, tmp_path / "a.onnx")
    assert einsum_to_matmul(model) == 1 and "Einsum" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "b.onnx")
    rng = np.random.default_rng(1)
    feed = {"a": rng.standard_normal(a_shape).astype(np.float32), "b": rng.standard_normal(b_shape).astype(np.float32)}
    a, b = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for f in ("a.onnx", "b.onnx"))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_two_activations_compile_integer_only(tmp_path):
    import runtime
    from runtime.compiler import compile_model

    onnx.save(_pair_model(*PAIRS[1]), tmp_path / "p.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", a=rng.standard_normal((6, 1, 4, 6)).astype(np.float32),
             b=rng.standard_normal((6, 1, 6, 3, 5)).astype(np.float32))
    art = runtime.load(compile_model(tmp_path / "p.onnx", output=tmp_path / "o", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"] is True
    feed = {"a": rng.standard_normal((1, 4, 6)).astype(np.float32),
            "b": rng.standard_normal((1, 6, 3, 5)).astype(np.float32)}
    ref = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = art.run(feed)["y"]
    assert float(np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.99


@pytest.mark.parametrize("c_shape", [(4, 8), (2, 4, 8)], ids=["2d", "batched"])
def test_constant_first_matmul_compiles_integer_only(tmp_path, c_shape):
    """MatMul(C, x) with C constant (learned queries, as SVTRv2's decoder and TesseraNet's class queries write
    them, often through an Einsum): C per row at 8 bits, the row scales along the output's rows."""
    rng = np.random.default_rng(5)
    c = (rng.standard_normal(c_shape) * np.linspace(0.1, 3, c_shape[-2])[:, None]).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["c", "x"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    got, ref = _compiled_against_onnxruntime(tmp_path, nodes, {"c": c}, [2, 8, 6], [2, 4, 6], rng)
    for g, r in zip(got.reshape(-1, 6), ref.reshape(-1, 6)):  # each row right at its own scale
        assert np.abs(g - r).max() <= 0.03 * np.abs(ref).max() + 0.03 * np.abs(r).max()


def test_constant_weight_with_leading_ones_compiles_integer_only(tmp_path):
    """x @ W with W a constant of shape (1, K, N) (a torch parameter so shaped; kokoro): the same
    product as with W (K, N); it was refused ("matmul weight of rank 3")."""
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((1, 16, 4)) * 0.3).astype(np.float32)
    got, ref = _compiled_against_onnxruntime(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": w},
                                             [1, 8, 16], [1, 8, 4], rng)
    assert got.shape == ref.shape and float(got.ravel() @ ref.ravel() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.999


def _compiled_against_onnxruntime(tmp_path, nodes, constants, x_shape, y_shape, rng):
    """(intq's y, onnxruntime's y) on a random x for a graph of `nodes` from x to y, compiled integer-only
    on 6 random samples."""
    import runtime
    from runtime.compiler import compile_model

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, *x_shape)).astype(np.float32))
    art = runtime.load(compile_model(tmp_path / "m.onnx", output=tmp_path / "o", calib=tmp_path / "calib.npz",
                                     progress=False))
    assert art.manifest["integer_only"] is True
    x = rng.standard_normal(x_shape).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return art.run({"x": x})["y"], ref
