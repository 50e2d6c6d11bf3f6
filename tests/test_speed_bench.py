"""benchmarks/speed.py's measurement harness (not its timings: those are never asserted)."""

from __future__ import annotations

import os

import pytest

from benchmarks.speed import in_child


def test_each_runtime_is_timed_in_a_process_of_its_own():
    """onnxruntime's thread pools outlive their sessions in a process and spin: the integer artifact timed
    after them at 2 threads took 4.3-5.1 ms instead of 2.6 (EfficientNet-Lite0). Each timer runs in a fresh
    (spawned) process and its result comes back."""
    assert in_child(os.getpid) != os.getpid()
    assert in_child(divmod, 7, 2) == (3, 1)


def test_the_artifact_is_timed_float_in_float_out(small_artifact, monkeypatch):
    """The integer artifact's time is that of whole `Model.run` calls (its input quantization included),
    as onnxruntime's `session.run` is timed, not the compiled model's alone."""
    import numpy as np

    import runtime
    from benchmarks.speed import time_artifact

    calls = []
    monkeypatch.setattr(runtime.model.Model, "run", lambda self, feed: calls.append(feed) or {})
    x = np.zeros((1, 3, 16, 16), np.float32)
    assert time_artifact(small_artifact, {"x": x}, 1, 5) >= 0
    assert len(calls) == 5 + 3 and calls[0]["x"] is x  # timed runs and warm-ups, each a float-in run


def test_corpus_speed_takes_each_calls_fastest_interleaved_run():
    """benchmarks/corpus_speed.py: every call timed in each round (one untimed call first), the minimum kept,
    and a table row per model with the ratios; unknown model names are refused."""
    from benchmarks.corpus_speed import fastest, main

    order = []
    best = fastest({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2, per_round=3)
    assert order == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4
    assert set(best) == {"a", "b"} and all(0 <= ms < 1 for ms in best.values())
    with pytest.raises(SystemExit):
        main(["--models", "no-such-model"])


def test_corpus_speed_keeps_going_past_a_model_that_fails(tmp_path, monkeypatch):
    """A model that fails (its download, compile or run) is a row saying why; the models after it are measured."""
    from benchmarks import corpus_speed

    def measure(model, workdir, rounds):
        if model.name == "mtcnn-pnet":
            raise RuntimeError("first line\nno such file")
        return f"| {model.name} | measured |"

    monkeypatch.setattr(corpus_speed, "measure", measure)
    out = tmp_path / "speed.md"
    assert corpus_speed.main(["--models", "mtcnn-pnet", "mtcnn-rnet", "--results", str(out)]) == 0
    rows = out.read_text().splitlines()[2:]
    assert rows[0].startswith("| mtcnn-pnet | fails: RuntimeError: no such file |") and rows[0].count("|") == 9
    assert rows[1] == "| mtcnn-rnet | measured |"


@pytest.mark.slow
def test_corpus_speed_row_of_a_small_model(tmp_path):
    """One real corpus model through the whole benchmark: compiled, onnxruntime int8 made, a row written."""
    from benchmarks.corpus_speed import HEADER, main

    out = tmp_path / "speed.md"
    assert main(["--models", "mtcnn-rnet", "--rounds", "1", "--results", str(out)]) == 0
    header, rule, row = out.read_text().splitlines()
    assert HEADER == f"{header}\n{rule}"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "mtcnn-rnet" and float(cells[2]) > 0 and float(cells[4]) > 0
