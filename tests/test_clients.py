"""What new users' scripts did with the README and `--help` in hand (a deployment script, a benchmark, a
server, a CLI user making mistakes, a board), and broke: each case a clear error or the documented behaviour
where there was a swallowed Ctrl-C, a misleading message or an exception no `except ValueError` caught."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import runtime
from runtime.compile import main as compile_main


def test_a_ctrl_c_that_a_fallback_swallows_still_stops_the_compile(tmp_path, small_cnn_path, small_calib,
                                                                   monkeypatch, capsys):
    """TVM hands the KeyboardInterrupt raised in Python code it called back as another error, and a
    fallback's broad `except` took it (the sensitivity measurement: 'failed (RuntimeError: SIGINT)'): the
    compile went on and wrote its artifact, exit 0, with those tensors left at 8 bits."""
    import runtime.compiler

    calibrate = runtime.compiler.calibrate

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises at the next bytecode
        except KeyboardInterrupt:
            pass  # as a fallback's `except Exception` did with TVM's error
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(runtime.compiler, "calibrate", swallowing)
    out = tmp_path / "a.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(out), "-q"]) == 130
    assert capsys.readouterr().err.endswith("error: interrupted (SIGINT)\n")
    assert os.listdir(tmp_path) == []
