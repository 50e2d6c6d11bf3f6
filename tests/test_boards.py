"""Deploying on a board as the README's "Deploying on a board" says, with the boards emulated by
qemu-user: what a deployment script met there and broke (a board-side audit; tests/test_targets.py
covers the targets themselves). Each case: a clear refusal naming why, or the right integers, where
there was a SIGILL, a silently wrong result or a refusal of a working artifact."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import runtime
from frontends import ArtifactError, ToolchainError


@pytest.fixture(scope="module")
def board_artifacts(tmp_path_factory, small_cnn_path, small_calib):
    """The small CNN compiled once per board target."""
    out, cache = tmp_path_factory.mktemp("boards"), {}

    def get(target: str):
        if target not in cache:
            try:
                cache[target] = runtime.compile_model(small_cnn_path, target, out / f"{len(cache)}.artifact",
                                                      calib=small_calib, progress=False)
            except ToolchainError as err:
                pytest.skip(str(err))
        return cache[target]

    return get


def _x(seed=5):
    return np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)


def _needs(tool: str):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (targets/install_toolchains.sh)")


# --- an ARM board without the instructions the artifact needs: refused at load, naming them ---

def test_missing_hwcaps_reads_linux_capabilities():
    from frontends.host_cpu import AT_HWCAP, AT_HWCAP2, missing_hwcaps

    neon_only = {AT_HWCAP: 1 << 1, AT_HWCAP2: 0}
    assert missing_hwcaps(["+neon", "+dotprod"], "aarch64", neon_only) == ["+dotprod"]
    assert missing_hwcaps(["cortex-a72", "+neon"], "aarch64", neon_only) == []  # a CPU name is not judged
    assert missing_hwcaps(["+neon", "+vfp4"], "armv7l", {AT_HWCAP: 1 << 12, AT_HWCAP2: 0}) == ["+vfp4"]
    assert missing_hwcaps(["+neon", "+dotprod"], "aarch64", {}) == []  # not Linux: nothing known, nothing refused


def test_arm_artifact_on_a_cpu_without_dot_product_is_refused_at_load(board_artifacts, monkeypatch):
    """README: an `arm` build on a Raspberry Pi 4 (Cortex-A72, no dot product) "dies with SIGILL": the whole
    Python process, at the first run. x86 artifacts were refused at load naming the missing feature; ARM ones
    were not checked at all."""
    import platform

    import frontends.host_cpu
    from frontends.host_cpu import AT_HWCAP, AT_HWCAP2

    artifact = board_artifacts("arm")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # as on the board
    monkeypatch.setattr(frontends.host_cpu, "hwcaps", lambda: {AT_HWCAP: 1 << 1, AT_HWCAP2: 0})  # NEON, no sdot
    with pytest.raises(ArtifactError, match=r"this CPU lacks \+dotprod.*raspberry-pi/4b-aarch64"):
        runtime.load(artifact)


def test_arm32_plan_artifact_checks_the_board_too(board_artifacts, monkeypatch):
    """On an armv7 board (no launcher: the board runs the executor itself) the plan artifact's NEON / VFPv4 are
    checked the same way; under an emulator its CPU is the launcher's to choose, and nothing is checked here."""
    import platform

    import frontends.host_cpu
    from frontends.host_cpu import AT_HWCAP, AT_HWCAP2

    artifact = board_artifacts("arm32")
    monkeypatch.setattr(platform, "machine", lambda: "armv7l")
    monkeypatch.setattr(frontends.host_cpu, "hwcaps", lambda: {AT_HWCAP: 1 << 12, AT_HWCAP2: 0})  # NEON, VFPv3 only
    with pytest.raises(ArtifactError, match=r"this CPU lacks \+vfp4"):
        runtime.load(artifact)
    monkeypatch.setattr(frontends.host_cpu, "hwcaps", lambda: {AT_HWCAP: 1 << 12 | 1 << 16, AT_HWCAP2: 0})
    assert type(runtime.load(artifact)).__name__ == "PlanModel"


def test_cpu_names_imply_features_the_board_must_have(board_artifacts):
    """A target tag or JSON dict names a CPU; the features LLVM builds for with it are recorded, so the
    runtime can check them (a cortex-a76 JSON target emits sdot without `+dotprod` in its mattr)."""
    from targets import get_target

    spec = get_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}')
    assert "+dotprod" in spec.features
    assert "+dotprod" not in get_target("raspberry-pi/4b-aarch64").features
    assert {"+v", "+zvl256b"} <= set(get_target("riscv/licheepi3a").features)


@pytest.mark.slow
def test_arm_artifact_under_a_cortex_a72_is_refused_not_killed(board_artifacts, small_artifact):
    """The same under qemu-aarch64 -cpu cortex-a72 (the emulated board's own capabilities): a one-line
    ArtifactError from runtime.load, where the process died with SIGILL; the Pi 4 build still runs there."""
    _needs("qemu-aarch64")
    from benchmarks.emulation import Aarch64Emulator

    q = runtime.load(small_artifact).quantize_inputs({"x": _x()})
    with pytest.raises(subprocess.CalledProcessError) as err:
        Aarch64Emulator("cortex-a72").run_integer(board_artifacts("arm"), q)
    assert err.value.returncode == 1 and "ArtifactError" in err.value.stderr and "lacks +dotprod" in err.value.stderr
    got = Aarch64Emulator("cortex-a72").run_integer(board_artifacts("raspberry-pi/4b-aarch64"), q)
    np.testing.assert_array_equal(got[0], runtime.load(small_artifact).run_integer(q)[0])


# --- RISC-V boards: the vector length a tag's CPU implies ---

# a JSON target as riscv/licheepi3a builds (SpacemiT X60: RVV 1.0 on 256-bit vectors) without the X60's Zicond,
# which Debian 12's qemu 7.2 lacks (the tag's own builds of the small CNN use czero.eqz: SIGILL there)
RVV256 = ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mcpu": "generic-rv64", "mabi": "lp64d", '
          '"mattr": ["+m", "+a", "+f", "+d", "+c", "+v", "+zvl256b"]}')


def test_rvv256_artifact_runs_emulated_with_its_vector_length(board_artifacts, small_artifact):
    """`riscv/licheepi3a` recorded only its CPU name (`spacemit-x60`), so `--emulate` ran it on a CPU without
    a vector unit (SIGILL); on 128-bit vectors its kernels, built for 256, gave other integers than x86 without
    any error (khmer-seg: all 64 values of both outputs; MTCNN's R-Net: all 6). The emulator now takes the
    artifact's vector length, and the executor refuses a CPU with shorter vectors, naming both lengths."""
    _needs("qemu-riscv64")
    from runtime.plan import qemu_prefix

    artifact = board_artifacts(RVV256)
    manifest = runtime.artifact.read_manifest(artifact)
    assert "vlen=256" in " ".join(runtime.plan.emulator(manifest))
    board = runtime.load(artifact, launcher=runtime.plan.emulator(manifest))
    cpu = runtime.load(small_artifact)
    np.testing.assert_array_equal(board.run({"x": _x()})["y"], cpu.run({"x": _x()})["y"])
    short = runtime.load(artifact, launcher=qemu_prefix("riscv64", 128))
    with pytest.raises(ArtifactError, match=r"vector registers are 128 bits.*at least 256.*--target riscv"):
        short.run({"x": _x()})


# --- CUDA artifacts: the x86 CPU-feature check took the GPU arch for a CPU feature ---

def test_cuda_artifact_is_not_refused_as_lacking_its_gpu_arch(small_artifact, tmp_path):
    """Every CUDA artifact records `sm_80` (its GPU arch) as its feature, and the x86 load check refused it as
    a CPU feature this CPU lacks: "this CPU lacks sm_80", on a machine with the GPU too."""
    from frontends.host_cpu import missing_features

    assert missing_features(["sm_80"]) == [] and missing_features(["sm_87", "x86-64"]) == []
    art = tmp_path / "cuda.artifact"
    shutil.copytree(small_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"].update(name="cuda", device="cuda", features=["sm_80"])
    (art / "manifest.json").write_text(json.dumps(manifest))
    try:
        model = runtime.load(art)
    except ArtifactError as err:  # no GPU here: refused for that, not for sm_80
        assert "lacks" not in str(err) and ("NVIDIA" in str(err) or "cuda" in str(err)), err
    else:
        assert model.manifest["target"]["device"] == "cuda"


# --- runtime.bench on a plan artifact with a free batch ---

def test_plan_bench_times_the_whole_batch(small_calib, tmp_path):
    """PlanModel.time ran the batch's first sample alone, so `runtime.bench --batch 8 --emulate` (and on the
    board) reported 8x the throughput the executor has: it runs a batch sample by sample, one thread."""
    _needs("qemu-riscv64")
    from conftest import small_cnn
    from frontends.onnx_import import FreeDim
    from runtime.bench import benchmark

    path = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    artifact = runtime.compile_model(path, "riscv", tmp_path / "b.artifact", calib=small_calib, progress=False,
                                     input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)})
    board = runtime.load(artifact, launcher=runtime.plan.emulator(runtime.artifact.read_manifest(artifact)))
    one, eight = (benchmark(board, repeat=15, batch=b)["p50_ms"] for b in (1, 8))
    assert eight > 4 * one, (one, eight)  # 8 samples one after the other: about 8x


def test_bench_of_a_free_batch_runs(small_calib, tmp_path, capsys):
    """`runtime.bench --batch 2` of an artifact with a free batch (x86, and the aarch64 board under qemu) died
    with a TypeError traceback (exit 1): `Model.time` called `_run_integer` without its new `copy` argument."""
    from conftest import small_cnn
    from frontends.onnx_import import FreeDim
    from runtime.bench import main as bench_main

    path = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    artifact = runtime.compile_model(path, "x86", tmp_path / "b.artifact", calib=small_calib, progress=False,
                                     input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)})
    assert bench_main([str(artifact), "--batch", "2", "--repeat", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["batch"] == 2


# --- TVM RPC (README step 4) ---

def _two_output_model(path) -> str:
    """x [1, 8] -> (x @ W1, relu(x @ W2)): a model with two outputs (a detector's scores and boxes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, k)).astype(np.float32), f"w{k}") for k in (4, 6)]
    nodes = [helper.make_node("MatMul", ["x", "w4"], ["scores"], name="head1"),
             helper.make_node("MatMul", ["x", "w6"], ["m"], name="head2"),
             helper.make_node("Relu", ["m"], ["boxes"], name="relu")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.fixture
def rpc_server():
    import os
    import signal
    import socket
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_model_with_several_outputs_runs_over_rpc(tmp_path, rpc_server):
    """Over RPC the VM's tuple of outputs stays on the board as an RPCObjectRef, and `run` failed on every
    multi-output model (MTCNN's nets, BlazeFace, any detector) with `TypeError: 'RPCObjectRef' object is not
    iterable`, under qemu's aarch64 board as on a local server."""
    from runtime.remote import connect

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 1, 8)).astype(np.float32) * 3)
    artifact = runtime.compile_model(_two_output_model(tmp_path / "two.onnx"), "x86", tmp_path / "two.artifact",
                                     calib=tmp_path / "calib.npz", progress=False)
    x = {"x": rng.standard_normal((1, 8)).astype(np.float32)}
    local, board = runtime.load(artifact), runtime.load(artifact, remote=connect(rpc_server))
    got, want = board.run(x), local.run(x)
    assert list(got) == ["scores", "boxes"] and all(np.array_equal(got[k], want[k]) for k in want)
    assert board.time(board.quantize_inputs(x), repeat=2, warmup=0).shape == (2,)


@pytest.mark.slow
def test_board_rpc_server_dying_in_a_run_is_named(board_artifacts):
    """`--rpc` to a Raspberry Pi 4 with an `arm` artifact: the board's server dies (SIGILL on sdot), and the
    workstation got `InternalError: Check failed: (code == RPCCode::kReturn) is false: code=kShutdown` (a
    traceback and exit 1 from runtime.bench); now an ArtifactError that says what it likely means."""
    _needs("qemu-aarch64")
    import socket

    from benchmarks.emulation import Aarch64Emulator
    from runtime.remote import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Aarch64Emulator("cortex-a72").rpc_server(port) as address:
        board = runtime.load(board_artifacts("arm"), remote=connect(address))
        with pytest.raises(ArtifactError, match=r"RPC server died during the run.*\+dotprod.*raspberry-pi/4b-aarch64"):
            board.run({"x": _x()})


def test_licheepi3a_artifact_under_qemu_runs_or_blames_the_emulator(board_artifacts, small_artifact):
    """The tag's own build (SpacemiT X60) uses Zicond's czero.eqz, which Debian 12's qemu 7.2 does not
    implement: `--emulate` died with "this CPU lacks an instruction set the artifact was built for", as if the
    artifact were wrong for the board. Under a qemu that has Zicond it must equal x86; under one without, the
    error says that the emulator is the CPU lacking it."""
    _needs("qemu-riscv64")
    artifact = board_artifacts("riscv/licheepi3a")
    board = runtime.load(artifact, launcher=runtime.plan.emulator(runtime.artifact.read_manifest(artifact)))
    try:
        y = board.run({"x": _x()})["y"]
    except ArtifactError as err:
        assert "SIGILL" in str(err) and "Under qemu-riscv64 -cpu rv64,v=true,vlen=256" in str(err), err
    else:
        np.testing.assert_array_equal(y, runtime.load(small_artifact).run({"x": _x()})["y"])


# --- artifacts copied to the board ---

def test_plan_files_are_hash_checked_and_the_executor_mode_named(board_artifacts, small_artifact, tmp_path):
    """An armv7 / riscv64 artifact's plan (weights.bin, kernels.so, plan.txt, intq_exec) had no hash in the
    manifest: a copy that changed a weight ran with it, silently (the Relax VM library is checked); and a copy
    that dropped the executor's mode bits failed as "its executor failed with exit code 1:" under qemu."""
    _needs("qemu-riscv64")
    copy = tmp_path / "copied as another name"
    shutil.copytree(board_artifacts("riscv"), copy)
    launcher = runtime.plan.emulator(runtime.artifact.read_manifest(copy))
    want = runtime.load(small_artifact).run({"x": _x()})["y"]
    np.testing.assert_array_equal(runtime.load(copy, launcher=launcher).run({"x": _x()})["y"], want)
    (copy / "intq_exec").chmod(0o644)
    with pytest.raises(ArtifactError, match=r"intq_exec: not executable.*chmod \+x"):
        runtime.load(copy, launcher=launcher).run({"x": _x()})
    (copy / "intq_exec").chmod(0o755)
    weights = bytearray((copy / "weights.bin").read_bytes())
    weights[70] ^= 0x10
    (copy / "weights.bin").write_bytes(bytes(weights))
    with pytest.raises(ArtifactError, match=r"weights.bin: sha256 does not match the manifest"):
        runtime.load(copy, launcher=launcher)


def test_x86_json_target_naming_its_cpu_loads(small_cnn_path, small_calib, tmp_path):
    """An x86 JSON target that names a CPU (`"mcpu": "skylake-avx512"`, a fleet's oldest machine) recorded the
    name as its feature, and the load check refused it on every machine: "this CPU lacks skylake-avx512". The
    name is not judged now, and the extensions it implies that the check knows (AMX, VNNI) are recorded."""
    from frontends.host_cpu import missing_features
    from targets import get_target

    assert "+amx-tile" in get_target('{"kind": "llvm", "mcpu": "sapphirerapids"}').features
    artifact = runtime.compile_model(small_cnn_path, '{"kind": "llvm", "mcpu": "skylake-avx512"}',
                                     tmp_path / "skx.artifact", calib=small_calib, progress=False)
    features = runtime.artifact.read_manifest(artifact)["target"]["features"]
    if missing_features(["x86-64-v4"]):
        pytest.skip("this CPU has no AVX-512")
    assert runtime.load(artifact).run({"x": _x()})["y"].shape == (1, 10), features
