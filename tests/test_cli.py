"""The CLIs and the artifact: end to end on a real ONNX graph, and every user mistake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import TensorProto, helper

import runtime
from frontends import ArtifactError, InputError
from runtime.compile import main as compile_main
from runtime.run import main as run_main


def _x(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)


def test_artifact_matches_float_model(small_artifact, small_cnn_path):
    model = runtime.load(small_artifact)
    session = ort.InferenceSession(small_cnn_path)
    cos = []
    for seed in range(8):
        y = model.run({"x": _x(seed)})["y"].ravel()
        r = session.run(None, {"x": _x(seed)})[0].ravel()
        cos.append(y @ r / np.linalg.norm(y) / np.linalg.norm(r))
    assert min(cos) > 0.99, cos


def test_activation_bits_16_carries_every_activation_at_16_bits(tmp_path, small_artifact, small_cnn_path, small_calib):
    """--activation-bits 16 (W8A16, for heatmap detectors: a CenterNet's detections above 0.3 went from 2 of
    float's 12 to 12 of 12): the input and every conv input are int16, and the outputs are closer to float."""
    out = tmp_path / "a16"
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(out), "--activation-bits", "16", "-q",
                         "--no-check"]) == 0
    wide, narrow = runtime.load(out), runtime.load(small_artifact)
    assert wide.manifest["integer_only"] and wide.manifest["inputs"][0]["quant"]["dtype"] == "int16"
    text = (out / "model.relax.py").read_text()
    convs = re.findall(r"R\.nn\.conv2d\((\w+),", text)
    dtypes = dict(re.findall(r"(\w+): R\.Tensor\(\([^)]*\), dtype=\"(\w+)\"\)", text))
    assert convs and all(dtypes.get(x, "int16") == "int16" for x in convs), [dtypes.get(x) for x in convs]
    session = ort.InferenceSession(small_cnn_path)
    errors = {name: [] for name in ("wide", "narrow")}
    for seed in range(4):
        want = session.run(None, {"x": _x(seed)})[0]
        for name, model in (("wide", wide), ("narrow", narrow)):
            errors[name].append(np.abs(model.run({"x": _x(seed)})["y"] - want).max())
    assert np.mean(errors["wide"]) < 0.8 * np.mean(errors["narrow"]), errors  # the 8-bit weights' error remains


def test_no_bias_correction_keeps_the_models_bias(tmp_path):
    """--no-bias-correction: a conv whose one large-weight channel rounds with a large mean error,
    over inputs with a zero-padded tail (phylodeep's first layer, hunt 14 F3). Corrected by default,
    the bias moves by that mean error, so the zero tail comes out off by it; without, the tail is
    the model's bias (its integer sum is exactly 0)."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (4, 2, 1, 3)).astype(np.float32)
    w[2] = [[[237.8, -120.0, 5.0]], [[-90.0, 60.0, -0.3]]]
    b = np.array([0.1, -0.2, 2.36, 0.3], np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 62])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    x = np.clip(rng.exponential(3, (9, 1, 2, 1, 64)), 0, 28).astype(np.float32)
    x[..., 32:] = 0
    np.savez(tmp_path / "c.npz", x=x[:8])
    tail = {}
    for name, flags in (("corrected", []), ("kept", ["--no-bias-correction"])):
        assert compile_main([str(path), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / name), "-q",
                             "--no-check", *flags]) == 0
        tail[name] = runtime.load(tmp_path / name).run({"x": x[8]})["y"][0, 2, 0, 40:]
    # measured: kept within the output grid's step of 2.36, corrected 0.64
    assert np.abs(tail["kept"] - 2.36).max() < 0.1 < 1.0 < np.abs(tail["corrected"] - 2.36).min(), tail


def test_manifest(small_artifact):
    m = runtime.load(small_artifact).manifest
    assert m["format_version"] == 1 and m["integer_only"] is True and m["allow_float"] is False
    assert m["target"]["name"] == "x86" and m["target"]["tvm_target"]["kind"] == "llvm"
    assert m["tools"]["apache-tvm"] == "0.27.0.post1" and m["tools"]["apache-tvm-ffi"] == "0.1.14.post1"
    assert m["inputs"][0] == {"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32",
                              "quant": {"name": "x", "dtype": "int8", "scale": m["inputs"][0]["quant"]["scale"]}}
    assert m["outputs"][0]["quant"]["dtype"] == "int32" and len(m["outputs"][0]["quant"]["scale"]) == 10
    assert {layer["op"] for layer in m["quantization"]["layers"]} == {"conv2d", "matmul"}
    assert all(layer["weight_bits"] == 8 for layer in m["quantization"]["layers"])
    assert len(m["library"]["sha256"]) == 64
    assert "R.nn.conv2d" in open(os.path.join(small_artifact, m["relax"])).read()


def test_compile_and_run_cli(tmp_path, small_cnn_path, small_calib, capsys):
    out = tmp_path / "cli.artifact"
    assert compile_main([small_cnn_path, "--target", "x86", "--calib", small_calib, "-o", str(out),
                         "--observer", "percentile"]) == 0  # not -q: its check's lines are asked for below
    np.savez(tmp_path / "in.npz", x=_x())
    assert run_main([str(out), "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    got = np.load(tmp_path / "out.npz")["y"]
    np.testing.assert_array_equal(got, runtime.load(out).run({"x": _x()})["y"])
    captured = capsys.readouterr()
    assert "y: shape [1, 10]" in captured.out
    cosine = re.search(r"check against float onnxruntime on the last \d+ calibration samples \(worst\): y: cosine ([0-9.]+)",
                       captured.err)
    assert cosine and float(cosine.group(1)) > 0.99 and "WARNING" not in captured.err


def test_artifact_that_cannot_run_is_not_left_behind(tmp_path, small_cnn_path, small_calib, monkeypatch, capsys):
    """The compile-time check runs the artifact: one that fails there (a YOLO26 artifact once hit
    an unsupported sort dtype in TVM) is removed, and the compile fails saying so."""
    from runtime.model import Model

    def broken(self, inputs):
        raise RuntimeError("InternalError: Unsupported input dtype: int16")

    monkeypatch.setattr(Model, "run", broken)
    out = tmp_path / "broken.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(out), "-q"]) == 1
    assert "failed on a calibration sample" in capsys.readouterr().err and not out.exists()


def test_check_reports_the_worst_of_its_samples(tmp_path):
    """The check runs the last two calibration samples (PP-OCRv6 rec: 0.995 on the last, 0.963 on
    another) and reports each output's lowest cosine and largest error; a NaN mismatch wins."""
    from runtime.check import Agreement, calibration_samples, worst

    np.savez(tmp_path / "c.npz", x=np.arange(5 * 3, dtype=np.float32).reshape(5, 1, 3))
    samples = calibration_samples(tmp_path / "c.npz", [{"name": "x", "shape": [1, 3]}])
    assert [s["x"][0, 0] for s in samples] == [9.0, 12.0] and samples[0]["x"].shape == (1, 3)
    # a 0-d input's samples are 0-d arrays, not NumPy scalars, which onnxruntime refuses (the check was skipped)
    np.savez(tmp_path / "r.npz", r=np.full(4, 0.5, np.float32))
    assert all(type(s["r"]) is np.ndarray for s in calibration_samples(tmp_path / "r.npz", [{"name": "r", "shape": []}]))
    rows = worst([[Agreement("a", 0.999, 0.1, 0.95), Agreement("b", 0.98, 2.0)],
                  [Agreement("a", 0.97, 0.05, 0.9), Agreement("b", float("nan"), 1.0)]])
    assert rows[0] == Agreement("a", 0.97, 0.1, 0.9) and rows[1][0] == "b" and np.isnan(rows[1][1]) and rows[1][2] == 2.0


def test_check_runs_every_sample_a_fast_model_allows(tmp_path, capsys):
    """x * b / sum(x * b), b spanning 1e-7..0.5 (an HMM's forward step): a sample whose mass sits on the
    tiny entries comes out all zeros (they round to 0 on b's grid). It is the first of six calibration
    samples: the check, which took the last two, said cosine 1.0000; it now runs all six of a fast model."""
    from onnx import TensorProto, numpy_helper

    b = np.array([2e-7, 1e-7, 0.5, 0.3], np.float32)
    graph = helper.make_graph([helper.make_node("Mul", ["x", "b"], ["r"]),
                               helper.make_node("ReduceSum", ["r"], ["s"], keepdims=1),
                               helper.make_node("Div", ["r", "s"], ["y"])], "norm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [numpy_helper.from_array(b, "b")])
    model = str(tmp_path / "norm.onnx")
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = np.array([[0.6, 0.4, 0, 0], [0.1, 0.1, 0.5, 0.3], [0, 0, 1, 0], [0, 0, 0.2, 0.8], [0.3, 0, 0.7, 0],
                  [0, 0, 0.9, 0.1]], np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    assert compile_main([model, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "on the last 6 calibration samples (worst): y: cosine 0.0000" in err and "WARNING: y" in err


def test_check_warns_when_the_artifact_disagrees_with_float():
    """The compile-time check's report names an output below cosine 0.99 in a warning."""
    from runtime.check import Agreement, report

    text = report([Agreement("logits", 0.9995, 0.01), Agreement("boxes", 0.62, 3.5)])
    assert "boxes: cosine 0.6200" in text and "WARNING: boxes agree(s)" in text and "logits agree" not in text
    # rounded down: 0.98996 printed as 0.9900 beside a warning for below 0.99 read as a contradiction (hunt 14 F6)
    assert "cosine 0.9899" in report([Agreement("p", 0.98996, 0.07)])


def test_one_value_output_is_judged_against_its_spread_over_the_samples(tmp_path):
    """A regression output crossing zero (deeplc's retention times, -28..81): 0.3 off on the sample
    whose float value is -1.5 is no warning, though 20% of that sample's own value; 30 off is."""
    from runtime.check import float_agreement, report

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reg.onnx"
    onnx.save(model, path)
    samples = [{"x": np.array([[v]], np.float32)} for v in (-1.5, 36.0, 81.0, -28.0)]

    def rows(off):
        return float_agreement(path, None, samples, [{"y": s["x"] + (off if s["x"][0, 0] == -1.5 else 0.01)}
                                                     for s in samples])

    assert "WARNING" not in report(rows(0.3)) and "WARNING: y agree(s)" in report(rows(30.0))


def test_mask_iou_needs_a_mask_and_clear_values():
    """SpliceAI's donor class: one position of 5000 above 0.5 (0.519 in float, 0.483 ours) made the
    class IoU 0 and the check warn at cosine 0.9999. Values within 0.02 of 0.5 are not counted, and a
    mask of fewer than 8 elements is not judged by IoU; a real miss is still seen."""
    from runtime.check import _agreement

    ref = np.full((1, 5000, 3), [0.9, 0.08, 0.02])
    ref[0, 100] = [0.3, 0.181, 0.519]
    got = ref.copy()
    got[0, 100] = [0.3, 0.217, 0.483]
    assert _agreement("p", got, ref).iou is None
    ref[0, 200:240] = [0.05, 0.05, 0.9]  # a real mask of 40 positions, half of it missed
    got[0, 200:240] = [0.05, 0.05, 0.9]
    got[0, 200:220] = [0.3, 0.3, 0.4]
    assert abs(_agreement("p", got, ref).iou - 0.5) < 0.01


def test_check_warns_on_errors_cosine_cannot_see():
    """Cosine says 1 for a one-element output of the right sign (a turn detector's probability, 0.95
    where float says 0.26) and for an output off by a factor: the relative error warns for both; a
    probability near 0 is not judged relative to itself (0.003 for 0.001 is no error)."""
    from runtime.check import _agreement, report

    row = _agreement("p", np.array([0.95]), np.array([0.26]))
    assert row.cosine == 1.0 and row.relative > 1 and "WARNING: p agree(s)" in report([row])
    assert "relative error 2.65" in report([row])
    assert "p: one value, |error| 0.69" in report([row]) and "cosine" not in report([row]).split("WARNING")[0]
    assert "WARNING" not in report([_agreement("p", np.array([-0.001]), np.array([0.002]))])  # cosine -1, no error
    logits = np.linspace(-3, 5, 100)
    assert "WARNING" in report([_agreement("logits", 1.5 * logits, logits)])
    assert "WARNING" not in report([_agreement("logits", logits + 0.01, logits)])
    assert "WARNING" not in report([_agreement("p", np.array([0.003]), np.array([0.001]))])


def test_check_judges_a_probability_map_by_its_mask():
    """A probability map whose mask at 0.5 changed warns even at a high cosine (a segmenter's took 18
    values: IoU 0.53 at cosine 0.998); the mask is that of the smaller side; other outputs have none."""
    from runtime.check import Agreement, _agreement, report

    rng = np.random.default_rng(0)
    ref = np.clip(rng.normal(0.1, 0.1, 4096), 0, 1)
    ref[:200] = rng.uniform(0.55, 1.0, 200)  # the foreground, clear of 0.5 (`IOU_BAND`)
    got = ref.copy()
    got[:100] = 0.45  # half the foreground lost, just below the threshold
    row = _agreement("mask", got, ref)
    assert row.cosine > 0.95 and abs(row.iou - 0.5) < 0.01
    assert _agreement("mask", 1 - got, 1 - ref).iou == row.iou  # mostly foreground: judged by the background
    assert _agreement("logits", got * 10 - 5, ref * 10 - 5).iou is None
    assert "mask (> 0.5) IoU 0.500" in report([row]) and "WARNING: mask agree(s)" in report([row])
    assert "WARNING" not in report([Agreement("mask", 0.999, 0.01, 0.97)])
    fg = np.zeros((1, 64, 64), bool)
    fg[0, 10:20, 10:20] = True  # a rare foreground class of a 2-class softmax (channels last)
    ref = np.stack([np.where(fg, 0.1, 0.9), np.where(fg, 0.9, 0.1)], axis=-1)
    got = ref.copy()
    got[0, 10:15, 10:20] = [0.55, 0.45]  # half the foreground lost: the flattened map would still look fine
    assert abs(_agreement("probs", got, ref).iou - 0.5) < 0.01
    attention = np.full((1, 8, 64, 64), 0.45 / 63)  # rows over keys sum to 1: not classes
    np.put_along_axis(attention, rng.integers(0, 64, (1, 8, 64, 1)), 0.55, axis=-1)  # each row's peak key
    assert _agreement("attention", attention * 0.9, attention).iou is None  # was 0.0: every "class" lost


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, "-m", "runtime.compile", "--help"], capture_output=True, text=True,
                          check=True).stdout
    for flag in ("--target", "--output", "--calib", "--input-shape", "--observer", "--allow-float", "examples:"):
        assert flag in text


def _compile_fails(args, capsys, *needles):
    assert compile_main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_unknown_target(tmp_path, small_cnn_path, capsys):
    _compile_fails([small_cnn_path, "--target", "vax", "-o", str(tmp_path / "a")], capsys,
                   "unknown target 'vax'", "valid targets: x86, arm, arm32, riscv, riscv-novector, cuda")
    assert not (tmp_path / "a").exists()


def test_missing_and_garbage_files(tmp_path, capsys):
    _compile_fails([str(tmp_path / "missing.onnx")], capsys, "no such file")
    (tmp_path / "junk.onnx").write_text("hello")
    _compile_fails([str(tmp_path / "junk.onnx")], capsys, "junk.onnx")
    assert sorted(os.listdir(tmp_path)) == ["junk.onnx"]  # nothing half-written


@pytest.mark.parametrize("arrays,needle", [
    ({"image": np.zeros((2, 1, 3, 16, 16), np.float32)}, "do not match the model's inputs ['x']"),
    ({"x": np.zeros((2, 3, 15, 16), np.float32)}, "expected [N, 1, 3, 16, 16]"),
    ({"x": np.zeros((2, 3, 16, 16), np.int32)}, "expected a float array"),
])
def test_bad_calibration_file(tmp_path, small_cnn_path, capsys, arrays, needle):
    np.savez(tmp_path / "c.npz", **arrays)
    _compile_fails([small_cnn_path, "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "a")], capsys, needle)
    assert not (tmp_path / "a").exists()


def test_no_calibration_warns(tmp_path, small_cnn_path, capsys):
    assert compile_main([small_cnn_path, "-o", str(tmp_path / "a")]) == 0
    assert "accuracy will suffer" in capsys.readouterr().err
    assert runtime.load(tmp_path / "a").manifest["quantization"]["synthetic_calibration"] is True


def _with_unsupported(path):
    """small_cnn plus a float Mod of its logits by an activation (no integer lowering; by a constant it is a
    Div, two roundings and a Sub: onnx_decompose.py), as a second output."""
    import onnx
    from conftest import small_cnn
    from onnx import numpy_helper

    model = onnx.load(small_cnn(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array(50.0, np.float32), "period"))
    model.graph.node.extend([helper.make_node("Abs", ["y"], ["size"]),
                             helper.make_node("Add", ["size", "period"], ["periods"]),
                             helper.make_node("Mod", ["y", "periods"], ["cs"], name="running_sum", fmod=1)])
    model.graph.output.append(helper.make_tensor_value_info("cs", onnx.TensorProto.FLOAT, [1, 10]))
    onnx.save(model, path)
    return str(path)


def test_lowering_refusal_names_the_onnx_node(tmp_path, small_cnn_path, capsys, monkeypatch):
    """A refusal at lowering time names the ONNX node and op the binding came from (it named only
    the Relax binding, `lv36`, which the user cannot find in their model)."""
    from passes.lowering import LOWERINGS

    monkeypatch.setitem(LOWERINGS, "relax.nn.max_pool2d", lambda ctx, call, args: ctx.fail("refused for the test"))
    _compile_fails([small_cnn_path, "-o", str(tmp_path / "a")], capsys,
                   "ONNX node 'maxpool' (MaxPool), binding", "refused for the test", "--allow-float")
    assert not (tmp_path / "a").exists()


def test_unsupported_op_refused_unless_allow_float(tmp_path, capsys):
    model = _with_unsupported(tmp_path / "mod.onnx")
    _compile_fails([model, "-o", str(tmp_path / "a")], capsys, "Mod (node running_sum)", "--allow-float")
    assert not (tmp_path / "a").exists()
    assert compile_main([model, "-o", str(tmp_path / "a"), "--allow-float"]) == 0
    err = capsys.readouterr().err
    assert "1 node(s) run in float (--allow-float)" in err and "(relax.mod): no integer lowering" in err
    assert "ONNX node 'running_sum' (Mod), binding" in err  # the node the user knows, not only the binding
    m = runtime.load(tmp_path / "a")
    assert m.manifest["integer_only"] is False and "relax.mod" in m.manifest["verifier"]
    assert [(n["op"], n["reason"]) for n in m.manifest["float_nodes"]] == [("relax.mod", "no integer lowering")]
    assert m.manifest["float_nodes"][0]["onnx"] == "ONNX node 'running_sum' (Mod)"
    y, cs = m.manifest["outputs"]
    assert y["quant"]["dtype"] == "int32" and cs["quant"] == {"dtype": "float32", "scale": [1.0], "axis": None}
    out = m.run({"x": _x()})
    ref = ort.InferenceSession(model).run(None, {"x": _x()})
    for got, want in zip((out["y"], out["cs"]), ref):  # each output with its own scale
        assert got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want) > 0.99


def test_failed_compile_keeps_existing_artifact(tmp_path, small_artifact, capsys):
    import shutil

    dest = tmp_path / "keep.artifact"
    shutil.copytree(small_artifact, dest)
    before = sorted(os.listdir(dest))
    _compile_fails([str(tmp_path / "missing.onnx"), "-o", str(dest)], capsys, "no such file")
    assert sorted(os.listdir(dest)) == before and runtime.load(dest)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_refuses_to_overwrite_non_artifact(tmp_path, small_cnn_path, capsys):
    (tmp_path / "mydir").mkdir()
    err = _compile_fails([small_cnn_path, "-o", str(tmp_path / "mydir")], capsys, "is not an artifact")
    assert "importing" not in err  # before anything runs: no calibration spent on a destination that cannot be


def test_missing_output_folder_refused_before_the_compile(tmp_path, small_cnn_path, capsys):
    err = _compile_fails([small_cnn_path, "-o", str(tmp_path / "no" / "such" / "a")], capsys,
                         f"the output directory {tmp_path / 'no' / 'such'} does not exist")
    assert "importing" not in err and "calibrat" not in err


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_library(tmp_path, small_artifact):
    art = _copy(small_artifact, tmp_path / "t")
    with open(art / "model.so", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        runtime.load(art)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m["target"].update(arch="riscv64"), "built for riscv64"),
])
def test_manifest_checks(tmp_path, small_artifact, edit, needle):
    art = _copy(small_artifact, tmp_path / "t")
    manifest = json.loads((art / "manifest.json").read_text())
    edit(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=needle):
        runtime.load(art)


def test_corrupted_manifest(tmp_path, small_artifact, capsys):
    art = _copy(small_artifact, tmp_path / "t")
    (art / "manifest.json").write_text("{not json")
    np.savez(tmp_path / "in.npz", x=_x())
    assert run_main([str(art), "--input", str(tmp_path / "in.npz")]) == 2
    assert "corrupted manifest" in capsys.readouterr().err


@pytest.mark.parametrize("inputs,needle", [
    ({"image": _x()}, "do not match the model's inputs ['x']"),
    ({"x": _x()[:, :, :8]}, "shape [1, 3, 8, 16], expected [1, 3, 16, 16]"),
    ({"x": _x().astype(np.int32)}, "dtype int32, expected float32"),
    ({"x": _x(), "y": _x()}, "do not match"),
])
def test_bad_runtime_inputs(small_artifact, inputs, needle):
    with pytest.raises(InputError) as err:
        runtime.load(small_artifact).run(inputs)
    assert needle in str(err.value)


def test_inputs_cast_where_nothing_but_float_rounding_changes(small_artifact):
    """NumPy's default float64, a list or any array type become the float32 input (ONNX Runtime
    refuses them; deployment scripts hand them over all the time); the outputs are those of the
    float32 array."""
    model = runtime.load(small_artifact)
    want = model.run({"x": _x()})["y"]
    for given in (_x().astype(np.float64), _x().tolist()):
        assert np.array_equal(model.run({"x": given})["y"], want)


def test_integer_inputs_cast_only_where_every_value_fits():
    """int32 or uint8 token ids for an int64 input are cast (exact); ids that do not fit are not."""
    from runtime.model import _coerced_input

    specs = [{"name": "ids", "shape": [1, 4], "dtype": "int8"}]
    assert _coerced_input(np.array([[1, 2, 3, 4]], np.int64), specs, "ids").dtype == np.int8
    assert _coerced_input(np.array([[1, 2, 3, 400]], np.int64), specs, "ids").dtype == np.int64  # refused later
    assert _coerced_input(np.array([[1.0, 2, 3, 4]]), specs, "ids").dtype == np.float64  # no float -> int
    specs = [{"name": "ids", "shape": [1, 4], "dtype": "int64"}]
    assert _coerced_input(np.array([[1, 2, 3, 4]], np.uint8), specs, "ids").dtype == np.int64


def test_run_cli_bad_input(tmp_path, small_artifact, capsys):
    np.savez(tmp_path / "in.npz", image=_x())
    assert run_main([small_artifact, "--input", str(tmp_path / "in.npz")]) == 2
    assert "do not match the model's inputs" in capsys.readouterr().err


def test_check_compares_integer_outputs():
    """An integer output (an argmax, a top-k's indices) is checked too: the share of equal elements,
    with the warning below 0.99 (a decoder's in-graph ArgMax disagreed on 36 of 2000 inputs unseen)."""
    from runtime.check import _agreement, report, worst

    same = _agreement("token", np.array([[3, 1, 4, 1, 5]]), np.array([[3, 1, 4, 1, 5]], np.int64))
    off = _agreement("token", np.array([[3, 1, 4, 1, 6]]), np.array([[3, 1, 4, 1, 5]], np.int64))
    assert same.integers and same.cosine == 1.0 and off.cosine == 0.8 and off.error == 1.0
    text = report(worst([[same], [off]]))
    assert "token: 80.00% of the integers equal" in text and "WARNING: token agree(s)" in text
    assert "WARNING" not in report([same])


def test_check_says_which_side_has_nan():
    """'cosine nan, max |error| inf' alone left a user guessing which side was not finite."""
    from runtime.check import _agreement, report, worst

    ours = _agreement("y", np.array([1.0, np.nan, 3.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32))
    theirs = _agreement("y", np.array([1.0, 2.0, 3.0], np.float32), np.array([1.0, np.inf, 3.0], np.float32))
    assert "1 NaN/inf value(s) where float has finite ones" in report([ours])
    assert "1 finite value(s) where float has NaN/inf" in report(worst([[_agreement("y", np.ones(3), np.ones(3))], [theirs]]))
