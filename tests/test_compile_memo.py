"""Work done once per weight, not once per read: an unrolled recurrence reads the same constants at every
step (`passes/constant_arrays.py`, `passes/lowering/rounded_weights.py`, `passes/smooth_choice.py`)."""

from __future__ import annotations

import numpy as np
from tvm import relax

from conftest import onnx_lstm

rng = np.random.default_rng(46)


def test_constant_arrays_convert_once_per_constant():
    from passes import constant_arrays

    big, small = rng.normal(size=(128, 256)).astype(np.float32), rng.normal(size=(4, 4)).astype(np.float32)
    c, s = relax.const(big), relax.const(small)
    a = constant_arrays.array(c)
    assert a is constant_arrays.array(c) and not a.flags.writeable
    np.testing.assert_array_equal(a, big)
    a64 = constant_arrays.array(c, "float64")
    assert a64.dtype == np.float64 and a64 is constant_arrays.array(c, "float64") and not a64.flags.writeable
    np.testing.assert_array_equal(a64, big.astype(np.float64))
    assert constant_arrays.array(relax.const(big)) is not a  # another constant of equal content: its own
    t = constant_arrays.array(s)
    np.testing.assert_array_equal(t, small)
    assert not t.flags.writeable


def test_smoothed_weights_are_scaled_and_hashed_once(monkeypatch):
    from passes.lowering import rounded_weights as rw

    w = rng.normal(size=(256, 384))
    w.flags.writeable = False
    c = rng.uniform(0.5, 2, 256)
    a = rw.scaled(w, c)
    assert a is rw.scaled(w, c) and not a.flags.writeable
    np.testing.assert_array_equal(a, w * c[:, None])
    assert rw.scaled(w, c * 2) is not a
    writable = w.copy()
    assert rw.scaled(writable, c) is not rw.scaled(writable, c)  # its content could change between calls

    digests = []
    sha1 = rw.hashlib.sha1
    monkeypatch.setattr(rw.hashlib, "sha1", lambda *a, **k: digests.append(1) or sha1(*a, **k))
    rw._REMEMBERED.clear()
    rw._DIGESTS.clear()
    first = rw.rounded(a, 8, axis=1)
    assert rw.rounded(a, 8, axis=1) is first and rw.rounded(a, 4, axis=1) is not first
    assert len(digests) == 1
    assert rw.rounded(a.copy(), 8, axis=1) is first and len(digests) == 2  # equal content, hashed anew


def test_unrolled_steps_choose_one_smoothing_exponent(tmp_path, monkeypatch):
    """The steps of an unrolled LSTM are tied (one range per group of corresponding tensors): smoothing's
    exponent is chosen once per group, on rows of several steps, not searched again at every step (VoiceFilter-
    Lite's speaker encoder: 240 searches over a 768 x 3072 matrix, ~90 s of its compile). The artifact stays
    close to float."""
    import runtime
    from passes import smooth_choice
    from runtime.compiler import compile_model

    path = tmp_path / "lstm.onnx"
    onnx_lstm(path, steps=40, hidden=128, inputs=32, rng=rng)  # a state of 64 or fewer would stay 16-bit, unsmoothed
    x = rng.normal(0, 1, (10, 40, 1, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:8])  # 8 x 39 tied rows: past smoothing's SMOOTH_MIN_ROWS
    searched = []
    error = smooth_choice.smoothing_error
    monkeypatch.setattr(smooth_choice, "smoothing_error", lambda *a, **k: searched.append(a[0].shape) or error(*a, **k))
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False))
    assert art.manifest["integer_only"] is True
    assert 0 < len(searched) <= 2 * len(smooth_choice.ALPHAS), len(searched)  # one group, perhaps an untied step
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for sample in x[8:]:
        want, got = session.run(None, {"x": sample})[0], art.run({"x": sample})["y"]
        assert np.dot(want.ravel(), got.ravel()) / np.linalg.norm(want) / np.linalg.norm(got) > 0.995
