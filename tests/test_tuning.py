"""`--tune-trials`: MetaSchedule tunes the kernels without a default schedule, keeps the
records on disk, a second compile reuses them, and the result stays bit-exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

import runtime
from runtime.compile import main as compile_main


@pytest.fixture
def conv_model(tmp_path):
    """A 3x3 conv and a running sum: the cumsum is a kernel no default schedule covers (the conv
    has one on x86; on ARM the default loops keep sdot)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["r"]),
         helper.make_node("CumSum", ["r", "axis"], ["z"])],
        "spatial_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 12, 12])],
        [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array(3, np.int64), "axis")])
    path = tmp_path / "conv.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((4, 1, 8, 12, 12)).astype(np.float32))
    return path, calib


@pytest.mark.slow
def test_tuned_artifact_is_exact_and_records_are_reused(conv_model, tmp_path, monkeypatch, capsys):
    import targets.tuning

    monkeypatch.setattr(targets.tuning, "CACHE", tmp_path / "tuning")
    model, calib = conv_model
    base = ["--calib", str(calib), str(model)]
    assert compile_main([*base, "-o", str(tmp_path / "plain")]) == 0
    assert compile_main([*base, "--tune-trials", "4", "-o", str(tmp_path / "tuned")]) == 0
    first = capsys.readouterr().err
    tuned = re.search(r"tuning (\d+) kernel", first)
    assert tuned and f"applied to {tuned.group(1)} kernel(s)" in first
    assert list((tmp_path / "tuning").glob("*/database_tuning_record.json"))

    assert compile_main([*base, "--tune-trials", "4", "-o", str(tmp_path / "again")]) == 0
    again = capsys.readouterr().err
    assert not re.search(r"tuning \d+ kernel", again) and f"applied to {tuned.group(1)} kernel(s)" in again

    x = {"x": np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32)}
    plain, tuned = runtime.load(tmp_path / "plain"), runtime.load(tmp_path / "tuned")
    q = plain.quantize_inputs(x)
    np.testing.assert_array_equal(plain.run_integer(q)[0], tuned.run_integer(q)[0])
    assert tuned.manifest["tuning"] == {"trials": 4}


def test_tuning_refuses_cross_targets(conv_model, tmp_path, capsys):
    model, calib = conv_model
    assert compile_main([str(model), "--calib", str(calib), "--target", "arm", "--tune-trials", "8",
                         "-o", str(tmp_path / "a")]) == 2
    assert "--tune-trials measures kernels on this machine" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
