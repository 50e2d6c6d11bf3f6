"""`--bits 4|mixed` end to end on the small CNN through the CLI: manifest bits, the
per-layer table and Pareto plot in the artifact, integer-only, outputs close to float;
limits that cannot be met exit 2 and write nothing; the per-layer latency table and its cache."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import runtime
from runtime.compile import main as compile_main


@pytest.fixture(autouse=True)
def _caches(tmp_path_factory, monkeypatch):
    """Sensitivity and latency caches in a temporary directory, shared by this module's tests."""
    from passes.mixed_precision import sensitivity
    from runtime import layer_latency

    root = tmp_path_factory.getbasetemp() / "mixed-caches"
    monkeypatch.setattr(sensitivity, "CACHE_DIR", root / "sensitivity")
    monkeypatch.setattr(layer_latency, "CACHE_DIR", root / "latency")


def _cosines(artifact, onnx_path, count=6):
    model, session = runtime.load(artifact), ort.InferenceSession(onnx_path)
    rng = np.random.default_rng(5)
    out = []
    for _ in range(count):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        y, r = model.run({"x": x})["y"].ravel(), session.run(None, {"x": x})[0].ravel()
        out.append(float(y @ r / np.linalg.norm(y) / np.linalg.norm(r)))
    return out


def test_bits4_end_to_end(tmp_path, small_cnn_path, small_calib):
    out = tmp_path / "w4.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "--bits", "4", "-o", str(out), "-q"]) == 0
    m = runtime.load(out).manifest
    q = m["quantization"]
    assert m["integer_only"] is True and q["bits"] == "4" and q["weight_bits"] == 4
    assert all(lay["weight_bits"] == 4 for lay in q["layers"])
    assert q["weight_mb"] == sum((lay["params"] + 1) // 2 for lay in q["layers"]) / 1e6
    assert "int4_conv2d" in (out / "model.relax.py").read_text()
    assert min(_cosines(out, small_cnn_path)) > 0.9  # random 4-bit weights on a tiny net


def test_bits_mixed_max_size_end_to_end(tmp_path, small_cnn_path, small_calib, capsys):
    out = tmp_path / "mixed.artifact"
    limit = 0.0006  # MB; all 8-bit: 0.00076, smallest with first and last at 8 bits: 0.000548
    assert compile_main([small_cnn_path, "--calib", small_calib, "--bits", "mixed", "--max-size", str(limit),
                         "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "per-layer weight bits" in err and "| bits |" in err
    assert {"layers.md", "pareto.png", "model.so", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = runtime.load(out).manifest
    q = m["quantization"]
    layers = q["layers"]
    assert m["integer_only"] is True and q["bits"] == "mixed" and q["weight_bits"] == "mixed"
    assert layers[0]["weight_bits"] == layers[-1]["weight_bits"] == 8  # pinned
    assert {lay["weight_bits"] for lay in layers} == {4, 8}
    assert q["weight_mb"] <= limit and q["mixed"]["limits"]["max_size_mb"] == limit
    assert q["mixed"]["allocation"]["size_mb"] == pytest.approx(q["weight_mb"])
    assert [lay["onnx_weight"] for lay in layers][1:] == ["wd", "w2", "w3", "wfc"]
    assert all(lay["sensitivity"] >= 0 for lay in layers)
    table = (out / "layers.md").read_text()
    assert all(lay["name"] in table for lay in layers) and "(pinned)" in table
    relax_text = (out / "model.relax.py").read_text()
    assert "int4_conv2d" in relax_text and "R.nn.conv2d" in relax_text
    assert min(_cosines(out, small_cnn_path)) > 0.95


def test_infeasible_limit_exits_2_and_writes_nothing(tmp_path, small_cnn_path, small_calib, capsys):
    out = tmp_path / "none.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "--bits", "mixed", "--max-size", "0.0004",
                         "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "model size limit 0.0004 MB cannot be met" in err and "0.000548 MB" in err
    assert "--no-pin-last" in err
    assert not out.exists() and not any(p.name.startswith(".none") for p in tmp_path.iterdir())
    # freeing the last layer makes 0.0005 MB feasible
    assert compile_main([small_cnn_path, "--calib", small_calib, "--bits", "mixed", "--max-size", "0.0005",
                         "--no-pin-last", "-o", str(out), "-q"]) == 0
    assert runtime.load(out).manifest["quantization"]["layers"][-1]["weight_bits"] == 4


@pytest.mark.parametrize("flags,needle", [
    (["--bits", "8", "--max-size", "1"], "--max-size: limits for --bits mixed"),
    (["--bits", "4", "--max-latency", "3"], "--max-latency: limits for --bits mixed"),
    (["--bits", "mixed"], "--bits mixed needs at least one limit"),
    (["--bits", "mixed", "--max-size", "-1"], "--max-size -1.0: must be a positive number"),
    (["--bits", "mixed", "--max-size", "1", "--latency-key", "k"], "--latency-key needs --latency-rpc"),
])
def test_bad_bit_flags(tmp_path, small_cnn_path, flags, needle, capsys):
    assert compile_main([small_cnn_path, "-o", str(tmp_path / "a"), "-q", *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_max_latency_uses_the_latency_table(tmp_path, small_cnn_path, small_calib):
    out = tmp_path / "lat.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "--bits", "mixed", "--max-latency", "1000",
                         "--max-bops", "1", "--latency-threads", "1", "-o", str(out), "-q"]) == 0
    q = runtime.load(out).manifest["quantization"]
    assert all(lay["latency_ms"] > 0 for lay in q["layers"])
    total = sum(lay["latency_ms"] for lay in q["layers"])
    assert q["mixed"]["allocation"]["latency_ms"] == pytest.approx(total, abs=1e-6)
    assert "latency ms" in (out / "layers.md").read_text()


def test_latency_table_is_cached(tmp_path, small_artifact, monkeypatch):
    from runtime import layer_latency
    from targets import get_target

    rows = runtime.load(small_artifact).manifest["quantization"]["layers"]
    table = layer_latency.latency_table(rows, get_target("x86"), threads=1, repeat=3, cache_dir=tmp_path,
                                        progress=False)
    assert set(table) == {r["name"] for r in rows}
    assert all(set(t) == {4, 8} and min(t.values()) > 0 for t in table.values())
    assert len(list(tmp_path.glob("*.json"))) == 2 * len(rows)
    entry = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert entry["target"] == "x86" and entry["where"] == "local" and entry["threads"] == 1

    def no_build(*args, **kwargs):
        raise AssertionError("cached entries must not be measured again")

    monkeypatch.setattr(layer_latency, "_measure", no_build)
    again = layer_latency.latency_table(rows, get_target("x86"), threads=1, repeat=3, cache_dir=tmp_path,
                                        progress=False)
    assert again == table


def test_latency_table_through_rpc(tmp_path, small_artifact):
    """The kernels are uploaded to an RPC server (here on 127.0.0.1) and timed there."""
    from test_remote import _free_port, _start, _stop

    from runtime import layer_latency
    from runtime.remote import connect
    from targets import get_target

    rows = runtime.load(small_artifact).manifest["quantization"]["layers"][:2]
    port = _free_port()
    server = _start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                     str(port + 1)], port)
    try:
        table = layer_latency.latency_table(rows, get_target("x86"), session=connect(f"127.0.0.1:{port}"),
                                            where=f"rpc:127.0.0.1:{port}", threads=1, repeat=3,
                                            cache_dir=tmp_path, progress=False)
    finally:
        _stop(server)
    assert all(min(t.values()) > 0 for t in table.values())
    assert {json.loads(p.read_text())["where"] for p in tmp_path.glob("*.json")} == {f"rpc:127.0.0.1:{port}"}
