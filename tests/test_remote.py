"""Running and timing artifacts through TVM RPC, against servers on 127.0.0.1 (directly and
through a tracker by device key), and the local bench CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import runtime
from frontends import CompileError
from runtime.bench import main as bench_main
from runtime.remote import connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and the workers it spawned
    proc.wait()


def _start(args: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    _stop(proc)
    raise RuntimeError(f"{args} did not start listening on {port}")


@pytest.fixture(scope="module")
def rpc_server():
    port = _free_port()
    proc = _start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                   str(port + 1)], port)
    yield f"127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="module")
def tracker_with_board():
    port = _free_port()
    tracker = _start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end",
                      str(port + 1)], port)
    board_port = _free_port()
    board = _start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(board_port), "--port-end",
                    str(board_port + 1), "--tracker", f"127.0.0.1:{port}", "--key", "testboard"], board_port)
    time.sleep(1.0)  # registration with the tracker
    yield f"127.0.0.1:{port}"
    _stop(board)
    _stop(tracker)


def _x():
    return np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)


def test_run_over_rpc_equals_local(small_artifact, rpc_server):
    remote = runtime.load(small_artifact, remote=connect(rpc_server))
    np.testing.assert_array_equal(remote.run({"x": _x()})["y"], runtime.load(small_artifact).run({"x": _x()})["y"])


def test_bench_over_rpc(small_artifact, rpc_server, capsys):
    assert bench_main([str(small_artifact), "--rpc", rpc_server, "--repeat", "5", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["where"] == "rpc" and result["repeat"] == 5
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]


def test_tracker_by_device_key(small_artifact, tracker_with_board):
    remote = runtime.load(small_artifact, remote=connect(tracker_with_board, key="testboard"))
    assert remote.run({"x": _x()})["y"].shape == (1, 10)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(CompileError, match="cannot reach the RPC server 127.0.0.1:1"):
        connect("127.0.0.1:1")


def test_bench_local_table(small_artifact, capsys):
    assert bench_main([str(small_artifact), "--repeat", "5"]) == 0
    out = capsys.readouterr().out
    for field in ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s"):
        assert field in out


def test_bench_lists_the_slowest_kernels(small_artifact, rpc_server, capsys):
    """`--kernels N`: each kernel timed by the virtual machine's instrument, the N slowest listed;
    over RPC it is refused (the instrument runs here)."""
    assert bench_main([str(small_artifact), "--repeat", "5", "--threads", "1", "--kernels", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["kernels"]
    assert len(rows) == 3 and all(r["ms"] > 0 and r["calls"] >= 1 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True) and sum(r["share"] for r in rows) <= 1
    assert all(isinstance(r["kernel"], str) and r["kernel"] for r in rows)
    assert bench_main([str(small_artifact), "--repeat", "5", "--kernels", "3"]) == 0
    assert "| kernel | ms per run | calls per run | share |" in capsys.readouterr().out
    assert bench_main([str(small_artifact), "--rpc", rpc_server, "--repeat", "2", "--kernels", "3"]) == 2
    assert "measured on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("args,needle", [(["--repeat", "0"], "--repeat must be"), (["--key", "k"], "--key needs")])
def test_bench_bad_flags(small_artifact, capsys, args, needle):
    assert bench_main([str(small_artifact), *args]) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_aarch64_board_over_rpc_under_qemu(tmp_path, small_cnn_path, small_calib, small_artifact):
    import shutil

    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu (targets/install_toolchains.sh)")
    from benchmarks.emulation import Aarch64Emulator
    from runtime import compile_model

    arm = compile_model(small_cnn_path, "arm", tmp_path / "arm.artifact", calib=small_calib, progress=False)
    with Aarch64Emulator().rpc_server(_free_port()) as address:
        board = runtime.load(arm, remote=connect(address))
        np.testing.assert_array_equal(board.run({"x": _x()})["y"], runtime.load(small_artifact).run({"x": _x()})["y"])
        from runtime.bench import benchmark

        assert benchmark(board, repeat=3)["where"] == "rpc"
