"""benchmarks/speed.py's measurement harness (not its timings: those are never asserted)."""

from __future__ import annotations

import os

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
