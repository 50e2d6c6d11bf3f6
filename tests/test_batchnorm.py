"""BatchNorms that do not follow a conv (after ReLU, after a ConvTranspose) become a
per-channel multiply + add and compile integer-only; conv-fed ones still fold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _model(path) -> str:
    rng = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    def bn_stats(prefix, c, signed_gamma):
        lo = -1.5 if signed_gamma else 0.5
        return [init(f"{prefix}g", rng.uniform(lo, 1.5, c)), init(f"{prefix}b", rng.standard_normal(c) * 0.1),
                init(f"{prefix}m", rng.standard_normal(c) * 0.1), init(f"{prefix}v", rng.uniform(0.5, 1.5, c))]

    inits = [init("w", rng.standard_normal((4, 3, 3, 3)) * 0.3), init("wt", rng.standard_normal((4, 2, 2, 2)) * 0.3),
             *bn_stats("a", 4, False), *bn_stats("c", 2, True)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "ag", "ab", "am", "av"], ["bn0"]),
             helper.make_node("ConvTranspose", ["bn0", "wt"], ["t"], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["t", "cg", "cb", "cm", "cv"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_unfolded_batchnorm_compiles_integer_only(tmp_path):
    from runtime import compile_model, load

    path = _model(tmp_path / "bn.onnx")
    x = np.random.default_rng(1).standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    model = load(compile_model(path, "x86", tmp_path / "bn.artifact", calib=tmp_path / "calib.npz", progress=False))
    assert model.manifest["integer_only"] is True
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in x[:4]:
        ref, out = session.run(None, {"x": sample})[0].ravel(), model.run({"x": sample})["y"].ravel()
        assert ref @ out / np.linalg.norm(ref) / np.linalg.norm(out) > 0.999


def test_rewrites_keep_binding_names_unique(tmp_path):
    from frontends import load_onnx
    from passes import bind_weights

    imported = load_onnx(_model(tmp_path / "bn.onnx"))
    func = bind_weights(imported.mod, imported.params)["main"]
    names = [b.var.name for block in func.body.blocks for b in block.bindings]
    assert "R.nn.batch_norm" not in func.script(show_meta=False) and len(names) == len(set(names))
