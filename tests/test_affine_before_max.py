"""AffineBeforeMax (passes/affine_before_max.py): a BatchNorm after a max over positions (PointNet's) folds
into the conv before the max where its scale is positive; the float model is unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import compiled_against_onnxruntime, cosine


def _pointnet_head(path, gamma_sign: float = 1.0, pool: bool = False):
    """x [1, 8, 64] -> Conv1d 8 -> 32 (no bias) -> max over points (or a 2-D MaxPool) -> BatchNorm of a small
    variance -> Relu."""
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.5, 32) * gamma_sign
    inits = {"w": rng.standard_normal((32, 8, 1, 1) if pool else (32, 8, 1)) * 0.3, "gamma": gamma,
             "beta": rng.standard_normal(32) * 0.1, "mean": rng.standard_normal(32) + 2, "var": rng.uniform(0.02, 0.1, 32)}
    peak = (helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2, 2], strides=[2, 2]) if pool else
            helper.make_node("ReduceMax", ["c"], ["m"], axes=[2], keepdims=0))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), peak,
             helper.make_node("BatchNormalization", ["m", "gamma", "beta", "mean", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["y"])]
    x_shape, y_shape = ([1, 8, 8, 8], [1, 32, 4, 4]) if pool else ([1, 8, 64], [1, 32])
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return x_shape


def _float_ops(path) -> list[str]:
    from frontends import load_onnx
    from passes import bind_weights

    imported = load_onnx(path)
    mod = bind_weights(imported.mod, imported.params)
    return [b.value.op.name for block in mod["main"].body.blocks for b in block.bindings
            if hasattr(b.value, "op") and hasattr(b.value.op, "name")]


@pytest.mark.parametrize("pool", [False, True], ids=["reduce-max", "max-pool"])
def test_positive_affine_after_a_max_folds_into_the_conv(tmp_path, pool):
    x_shape = _pointnet_head(tmp_path / "m.onnx", pool=pool)
    ops = _float_ops(tmp_path / "m.onnx")
    peak = ops.index("relax.nn.max_pool2d" if pool else "relax.max")
    assert "relax.multiply" not in ops[peak:]  # the BatchNorm's scale went into the conv's weights
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal(x_shape).astype(np.float32)} for _ in range(36)]
    for ours, want in compiled_against_onnxruntime(tmp_path / "m.onnx", feeds, tmp_path, calibrate=32):
        assert cosine(ours["y"], want["y"]) > 0.995


def test_negative_scale_is_left_after_the_max(tmp_path):
    """max(-x) is -min(x): a BatchNorm with a negative gamma stays where it is."""
    _pointnet_head(tmp_path / "m.onnx", gamma_sign=-1.0)
    ops = _float_ops(tmp_path / "m.onnx")
    assert "relax.multiply" in ops[ops.index("relax.max"):]


def test_fold_keeps_the_float_model(tmp_path):
    """The rewritten float module computes what onnxruntime computes from the file."""
    import tvm

    from frontends import load_onnx
    from passes import bind_weights

    _pointnet_head(tmp_path / "m.onnx")
    imported = load_onnx(tmp_path / "m.onnx")
    mod = bind_weights(imported.mod, imported.params)
    exe = tvm.compile(mod, target="llvm")
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    x = np.random.default_rng(2).standard_normal((1, 8, 64)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)
