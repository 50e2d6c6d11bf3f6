"""Bias correction: the bias after a conv/matmul absorbs the mean error of its rounded weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.observers import ChannelMeanObserver


def test_channel_mean_observer_averages_per_channel():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(2, 5, 3, 4)).astype(np.float32) for _ in range(3)]
    for axis in (1, -1):
        obs = ChannelMeanObserver(axis)
        for x in batches:
            obs.update(x)
        stacked = np.concatenate(batches)
        want = stacked.mean(axis=tuple(a for a in range(4) if a != axis % 4))
        np.testing.assert_allclose(obs.mean(), want, rtol=1e-6)
    obs = ChannelMeanObserver(1)
    obs.update(np.array([[np.inf, 1.0], [1.0, 3.0]], np.float32))  # infinities count as 0
    np.testing.assert_allclose(obs.mean(), [0.5, 2.0])


def _biased_weights(rng, shape, step=2.0**-7):
    """Weights that all round the same way on their per-output-channel 8-bit grid (k + 0.45 steps,
    one weight per channel at 127 steps sets the grid): their error adds up instead of cancelling."""
    k = rng.integers(-100, 100, size=shape).astype(np.float64) + 0.45
    k.reshape(shape[0], -1)[:, 0] = 127
    return (k * step).astype(np.float32)


def _model(path, first: str):
    """A conv (dense, depthwise or transposed 2x2/2) with a bias, ReLU, then a MatMul with a bias."""
    rng = np.random.default_rng(1)
    c = 8
    if first == "transposed":
        w1 = _biased_weights(rng, (c, c, 2, 2)).transpose(1, 0, 2, 3).copy()  # IOHW, biased per output
        conv = helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["h"], strides=[2, 2])
    else:
        groups = c if first == "depthwise" else 1
        w1 = _biased_weights(rng, (c, c // groups, 3, 3))
        conv = helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], group=groups)
    side = 16 if first == "transposed" else 8
    w2 = _biased_weights(rng, (6, c)).T.copy()  # MatMul weight [K, N], biased along K per output N
    b1, b2 = rng.normal(size=c).astype(np.float32), rng.normal(size=6).astype(np.float32)
    nodes = [conv, helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "w2"], ["m"]), helper.make_node("Add", ["m", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side, side, 6])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                          (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("first", ["dense", "depthwise", "transposed"])
def test_bias_correction_removes_the_weights_mean_error(tmp_path, first):
    """Inputs with a large mean (4) times weights that all round down by 0.45 steps: each output
    channel's mean is off by many output steps without the correction, and by about none with it
    (a dense, depthwise or transposed conv, then a matmul)."""
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from runtime import compile_model

    path = str(tmp_path / "m.onnx")
    _model(path, first)
    rng = np.random.default_rng(2)
    x = (4.0 + rng.normal(size=(16, 1, 8, 8, 8))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    errors = {}
    for on in (False, True):
        out = tmp_path / f"m{on}.artifact"
        compile_model(path, "x86", out, calib=tmp_path / "calib.npz", progress=False,
                      config=QuantConfig(bias_correction=on, sensitivity_tol=None))
        model = runtime.load(out)
        diff = np.concatenate([model.run({"x": s})["y"] - session.run(None, {"x": s})[0] for s in x])
        errors[on] = (np.abs(diff.mean(axis=(0, 1, 2))).max(), np.sqrt(np.mean(diff**2)))
    (bias_off, rms_off), (bias_on, rms_on) = errors[False], errors[True]
    assert bias_on < 0.1 * bias_off, errors
    assert rms_on < 0.5 * rms_off, errors


def test_bias_after_a_scaled_8bit_tensor_is_not_rounded_to_its_step(tmp_path, monkeypatch):
    """Keras's Conv-ReLU-MaxPool-BatchNorm: the BatchNorm multiplies the pooled 8-bit integers by a
    per-channel constant (same integers, scale S * c) and adds its shift. Added at that scale, the
    shift was rounded to the 8-bit step: one error per channel at every position, which the next
    conv sums over its taps (a captcha CNN's heads: 0.967). The integers are refined first."""
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from passes.lowering import elementwise
    from runtime import compile_model

    rng = np.random.default_rng(4)
    c = 16
    inits = {"w1": (rng.normal(0, 0.3, (c, 3, 3, 3))).astype(np.float32),
             "gain": rng.uniform(0.5, 8.0, (1, c, 1, 1)).astype(np.float32),
             "shift": rng.normal(0, 2.0, (1, c, 1, 1)).astype(np.float32),
             "w2": rng.normal(0, 0.2, (8, c, 3, 3)).astype(np.float32), "b2": np.zeros(8, np.float32)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), n("Relu", ["a"], ["r"]),
             n("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Mul", ["p", "gain"], ["g"]), n("Add", ["g", "shift"], ["bn"]),
             n("Conv", ["bn", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "bn.onnx")
    onnx.save(model, path)
    x = rng.normal(0, 1, (8, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    config = QuantConfig(sensitivity_tol=None)  # the rule alone (the weights' mean error corrected)

    def error(tag: str) -> float:
        art = runtime.load(compile_model(path, "x86", tmp_path / tag, calib=tmp_path / "calib.npz", config=config,
                                         progress=False))
        diff = np.concatenate([art.run({"x": s})["y"] - session.run(None, {"x": s})[0] for s in x])
        return float(np.abs(diff.mean(axis=(0, 2, 3))).max())  # the worst channel's mean error

    refined = error("refined")
    monkeypatch.setattr(elementwise, "FINE_BITS", 8)  # never refine: the bias at the 8-bit step
    coarse = error("coarse")
    assert refined < 0.5 * coarse, (refined, coarse)


def _tail_model(path):
    """phylodeep's first layer: inputs >= 0 with a zero-padded tail, a conv whose one large channel
    (weights all rounding the same way) lands deep in the Elu's flat part wherever the input is
    nonzero and gives exactly its bias on the tail; then the mean over positions and a dense layer."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.5, (4, 2, 1, 3))
    w[2] = -(np.array([[[120, 60, 100]], [[90, 127, 70]]]) + 0.45) * (237.0 / 127)  # k + 0.45 steps
    w[2, 0, 0, 0] = -237.0  # sets the channel's grid
    b = rng.normal(0, 0.5, 4)
    b[2] = 2.36
    inits = {"w": w.astype(np.float32), "b": b.astype(np.float32),
             "d": rng.normal(0, 1, (4, 3)).astype(np.float32)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"]), n("Elu", ["c"], ["e"]),
             n("ReduceMean", ["e"], ["m"], axes=[2, 3], keepdims=0), n("MatMul", ["m", "d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_bias_correction_is_left_off_where_it_moves_the_outputs_away_from_float(tmp_path):
    """The probe (passes/bias_choice.py) sees that the tail model's corrected bias is wrong exactly
    where the Elu passes it on, and leaves that conv uncorrected: the outputs stay near float. With
    the correction forced everywhere (no probe) they do not; the log names the layer."""
    import onnxruntime as ort

    import runtime
    from passes import QuantConfig
    from runtime import compile_model

    path = str(tmp_path / "tail.onnx")
    _tail_model(path)
    rng = np.random.default_rng(6)
    x = np.clip(rng.exponential(3, (8, 1, 2, 1, 64)), 0, 28).astype(np.float32)
    for i, s in enumerate(x):
        s[..., 20 + 4 * i:] = 0  # trees of different sizes: the tails differ
    np.savez(tmp_path / "calib.npz", x=x)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def error(tag: str, config) -> float:
        art = runtime.load(compile_model(path, "x86", tmp_path / tag, calib=tmp_path / "calib.npz", config=config,
                                         progress=False))
        return max(float(np.abs(art.run({"x": s})["y"] - session.run(None, {"x": s})[0]).max()) for s in x)

    chosen = error("chosen", None)
    forced = error("forced", QuantConfig(sensitivity_tol=None))
    uncorrected = error("uncorrected", QuantConfig(bias_correction=False, sensitivity_tol=None))
    assert chosen <= 1.5 * uncorrected and chosen < 0.25 * forced, (chosen, forced, uncorrected)
