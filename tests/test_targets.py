"""Cross targets: ARM, RISC-V, tags and JSON dicts compile to libraries for the right
machine with the right vector instructions; every one runs under qemu bit-exact against
x86 (aarch64: the Relax VM in an emulated Python; riscv64/armv7: the plan executor), and
dot-product / RVV builds die with SIGILL on CPUs without those units."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime
from frontends import ArtifactError, CompileError, InputError, ToolchainError

ELF_MACHINE = {"aarch64": 183, "armv7l": 40, "riscv64": 243, "x86_64": 62}


def _elf_machine(path) -> int:
    header = open(path, "rb").read(20)
    assert header[:4] == b"\x7fELF"
    return int.from_bytes(header[18:20], "little")


def _disassemble(tool: str, path) -> str:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (targets/install_toolchains.sh)")
    return subprocess.run([tool, "-d", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, small_cnn_path, small_calib):
    from runtime import compile_model

    out = tmp_path_factory.mktemp("targets")
    cache = {}

    def get(target: str):
        if target not in cache:
            try:
                cache[target] = compile_model(small_cnn_path, target, out / f"{len(cache)}.artifact",
                                              calib=small_calib, progress=False)
            except ToolchainError as err:  # a partial install skips, naming the package
                pytest.skip(str(err))
        return cache[target]

    return get


@pytest.mark.parametrize("target,machine", [
    ("arm", "aarch64"), ("arm32", "armv7l"), ("riscv", "riscv64"), ("riscv-novector", "riscv64"),
    ("raspberry-pi/4b-aarch64", "aarch64"), ("riscv/licheepi3a", "riscv64"),
    ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}', "aarch64"),
])
def test_cross_compiles_for_the_board(compiled, target, machine):
    artifact = compiled(target)
    manifest = runtime.artifact.read_manifest(artifact)
    assert manifest["target"]["arch"] == machine and manifest["integer_only"] is True
    assert _elf_machine(artifact / "model.so") == ELF_MACHINE[machine]


def test_aarch64_dotprod_emits_sdot(compiled):
    assert any(op in _disassemble("aarch64-linux-gnu-objdump", compiled("arm") / "model.so") for op in ("sdot", "udot"))
    assert "sdot" not in _disassemble("aarch64-linux-gnu-objdump", compiled("raspberry-pi/4b-aarch64") / "model.so")


def test_riscv_vector_emits_rvv(compiled):
    assert "vsetvli" in _disassemble("llvm-objdump-16", compiled("riscv") / "model.so")
    assert "vsetvli" not in _disassemble("llvm-objdump-16", compiled("riscv-novector") / "model.so")


def test_foreign_artifact_refuses_to_load(compiled):
    with pytest.raises(ArtifactError, match="built for aarch64 .* this machine is x86_64"):
        runtime.load(compiled("arm"))


def test_missing_cross_compiler_names_debian_package(monkeypatch, tmp_path, small_cnn_path, capsys):
    from runtime.compile import main as compile_main

    monkeypatch.setenv("PATH", str(tmp_path))  # no cross gcc on it
    assert compile_main([small_cnn_path, "--target", "riscv", "-o", str(tmp_path / "a")]) == 2
    assert "apt-get install gcc-riscv64-linux-gnu" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_missing_cross_c_library_is_a_one_line_error(monkeypatch, tmp_path, small_cnn_path, capsys):
    """A cross gcc without its C library (installed without recommends) fails like ld does."""
    from runtime.compile import main as compile_main

    fake = tmp_path / "aarch64-linux-gnu-gcc"
    fake.write_text("#!/bin/sh\necho '/usr/bin/aarch64-linux-gnu-ld: cannot find crti.o: No such file or directory' >&2\n"
                    "echo 'collect2: error: ld returned 1 exit status' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert compile_main([small_cnn_path, "--target", "arm", "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "cannot find crti.o" in err and "apt-get install libc6-dev-arm64-cross" in err
    assert "Traceback" not in err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("name,needle", [
    ("vax", "any TVM target tag (287 exist, e.g. raspberry-pi/4b-aarch64"),
    ('{"kind": "llvm"', "not valid JSON"),
    ('{"kind": "opencl"}', "supported kinds: llvm (CPUs), cuda"),
])
def test_bad_target_names(name, needle):
    from targets import get_target

    with pytest.raises(CompileError) as err:
        get_target(name)
    assert needle in str(err.value)


@pytest.mark.parametrize("target", ["riscv", "riscv-novector", "arm32"])
def test_plan_executor_runs_bit_exact_under_qemu(compiled, small_artifact, target):
    from benchmarks.emulation import plan_launcher
    from runtime.plan import run_plan

    artifact = compiled(target)
    manifest = runtime.artifact.read_manifest(artifact)
    launcher = plan_launcher(manifest["target"]["arch"])
    if shutil.which(launcher[0]) is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    assert manifest["executor"]["executor"] == "intq_exec"
    cpu = runtime.load(small_artifact)
    rng = np.random.default_rng(12)
    for _ in range(3):
        q = cpu.quantize_inputs({"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
        np.testing.assert_array_equal(run_plan(artifact, q, launcher)[0], cpu.run_integer(q)[0])


def test_rvv_artifact_dies_without_the_vector_unit(compiled, small_artifact):
    from benchmarks.emulation import plan_launcher
    from runtime.plan import run_plan

    if shutil.which("qemu-riscv64") is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    q = runtime.load(small_artifact).quantize_inputs({"x": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(ArtifactError, match=r"illegal instruction \(SIGILL\): this CPU lacks an instruction set"):
        run_plan(compiled("riscv"), q, plan_launcher("riscv64", vector=False))  # the RVV build really uses vectors
    run_plan(compiled("riscv-novector"), q, plan_launcher("riscv64", vector=False))


@pytest.mark.parametrize("target", ["riscv", "arm32"])
def test_plan_artifact_loads_and_runs_like_any_artifact(compiled, small_artifact, target, tmp_path):
    """`runtime.load` of an armv7 / riscv64 artifact (no TVM runtime on those boards) gives a PlanModel:
    `run` with float inputs, a batch, `time` by the executor's own clock and `runtime.bench`'s numbers,
    all without importing TVM; the outputs equal the x86 artifact's bit for bit."""
    from benchmarks.emulation import plan_launcher
    from runtime.bench import benchmark

    artifact = compiled(target)
    launcher = plan_launcher(runtime.artifact.read_manifest(artifact)["target"]["arch"])
    if shutil.which(launcher[0]) is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    with pytest.raises(ArtifactError, match=r"built for (riscv64|armv7l) .*Copy the artifact to a"):
        runtime.load(artifact)  # on this x86 machine, without an emulator
    board, cpu = runtime.load(artifact, launcher=launcher), runtime.load(small_artifact)
    assert type(board).__name__ == "PlanModel"
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(board.run({"x": x})["y"], cpu.run({"x": x})["y"])
    ms = board.time(board.quantize_inputs({"x": x}), repeat=4, warmup=1)
    assert ms.shape == (4,) and (ms > 0).all()
    assert benchmark(board, repeat=3)["threads"] == 1
    with pytest.raises(CompileError, match="plan executor runs on one thread"):
        benchmark(board, threads=2, repeat=3)
    with pytest.raises(InputError, match="virtual machine"):
        board.kernel_times(board.quantize_inputs({"x": x}))
    script = ("import sys; sys.modules['tvm'] = sys.modules['tvm_ffi'] = None  # as on the board\n"
              "import numpy as np, runtime\n"
              f"m = runtime.load({str(artifact)!r}, launcher={launcher!r})\n"
              "y = m.run({'x': np.load(sys.argv[1])})['y']; np.save(sys.argv[2], y)\n")
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cpu.run({"x": x})["y"])


def test_emulate_flag_runs_a_board_artifact_here(compiled, small_artifact, tmp_path, capsys):
    """`runtime.run --emulate` / `runtime.bench --emulate`: a riscv64 artifact checked on the workstation
    under qemu-user before it goes to the board; an x86 artifact is refused naming why (exit 2)."""
    from runtime.bench import main as bench_main
    from runtime.run import main as run_main

    if shutil.which("qemu-riscv64") is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x[:1])
    artifact = str(compiled("riscv"))
    assert run_main([artifact, "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 2
    assert "Copy the artifact to a riscv64 board" in capsys.readouterr().err
    assert run_main([artifact, "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"), "--emulate"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], runtime.load(small_artifact).run({"x": x[:1]})["y"])
    assert bench_main([artifact, "--emulate", "--repeat", "3", "--json"]) == 0
    assert '"threads": 1' in capsys.readouterr().out
    assert bench_main([str(small_artifact), "--emulate", "--repeat", "3"]) == 2
    assert "--emulate runs armv7l and riscv64 artifacts" in capsys.readouterr().err


@pytest.mark.slow
def test_aarch64_artifact_runs_bit_exact_under_qemu(compiled, small_artifact):
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    from benchmarks.emulation import Aarch64Emulator

    cpu = runtime.load(small_artifact)
    rng = np.random.default_rng(11)
    q = cpu.quantize_inputs({"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
    for target in ("arm", "raspberry-pi/4b-aarch64"):
        np.testing.assert_array_equal(Aarch64Emulator().run_integer(compiled(target), q)[0], cpu.run_integer(q)[0])
    # Negative control: a Cortex-A72 has no dot product (which the build uses: test_aarch64_dotprod_emits_sdot).
    # runtime.load refuses it there, naming the feature, where it died with SIGILL (tests/test_boards.py).
    with pytest.raises(subprocess.CalledProcessError) as err:
        Aarch64Emulator("cortex-a72").run_integer(compiled("arm"), q)
    assert "this CPU lacks +dotprod" in err.value.stderr
    Aarch64Emulator("cortex-a72").run_integer(compiled("raspberry-pi/4b-aarch64"), q)  # no dotprod: runs


@pytest.mark.slow
def test_emulation_cli_prints_float_outputs_as_runtime_run_does(compiled, small_artifact, tmp_path, capsys):
    """`python -m benchmarks.emulation model.arm.artifact --input x.npz` (the README's way to run a board's artifact
    here) printed the raw integers' summary, `y: int32[1, 10] argmax 6`; it now runs `Model.run` on the emulated
    board, prints runtime.run's lines and writes -o: the floats the x86 artifact gives, bit for bit."""
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    from benchmarks.emulation import main as emulation_main

    x = np.random.default_rng(12).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    arm = str(compiled("arm"))
    assert emulation_main([arm, "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    want = runtime.load(small_artifact).run({"x": x})["y"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["y"], want)
    assert capsys.readouterr().out.startswith("y: shape [1, 10] float32, argmax [0, ")
    np.savez(tmp_path / "bad.npz", input=x)
    assert emulation_main([arm, "--input", str(tmp_path / "bad.npz")]) == 2
    assert "missing ['x']" in capsys.readouterr().err


def test_emulation_cli_names_the_way_to_run_an_artifact_of_another_arch(small_artifact, tmp_path, capsys):
    """An x86 artifact given to the aarch64 emulation died in the emulated Python with a CalledProcessError."""
    from benchmarks.emulation import main as emulation_main

    np.savez(tmp_path / "x.npz", x=np.zeros((1, 3, 16, 16), np.float32))
    assert emulation_main([small_artifact, "--input", str(tmp_path / "x.npz")]) == 2
    assert "built for x86_64, not aarch64; run it with python -m runtime.run" in capsys.readouterr().err


def test_rvv_builds_a_wide_per_channel_requantization():
    """A requantization of a [128, 1536] accumulator with per-channel int64 multipliers, reshaped
    (all-MiniLM-L6-v2's fc1 output): TVM's StorageRewrite dropped its chunk buffers for RVV and
    MakePackedAPI failed; the riscv target builds without that pass (targets/riscv.py)."""
    import tvm
    from tvm import relax

    from targets import get_target

    R = relax.op
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType((128, 1536), "int32"))
    rng = np.random.default_rng(0)
    m, r, s = (relax.const(rng.integers(1, 2**20, (1, 1, 1536)), "int64") for _ in range(3))
    with bb.function("main", [acc]):
        with bb.dataflow():
            x = R.astype(R.reshape(acc, (1, 128, 1536)), "int64")
            y = R.right_shift(R.add(R.multiply(x, m), r), R.bitwise_and(s, relax.const(15, "int64")))
            y = R.astype(R.astype(R.clip(y, -32768, 32767), "int16"), "int32")
            out = bb.emit_output(R.subtract(y, relax.const(3, "int32")))
        bb.emit_func_output(out)
    spec = get_target("riscv")
    target = spec.target()
    with spec.build_context(), target:
        tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target, 0))
