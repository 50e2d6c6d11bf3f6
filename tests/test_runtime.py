"""Runtime: one Model shared by many threads, refused inputs, CPU features checked at load,
fleet builds (--cpu) bit-exact with the host's kernel family."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import runtime
from frontends import ArtifactError, InputError
from runtime.model import _aligned

AVX2_ONLY = {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c", "sse4_2", "popcnt", "ssse3"}


def _inputs(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def test_threads_share_one_model(small_artifact):
    """8 threads x 200 calls on one Model: no crash, every output equal to the sequential one."""
    model = runtime.load(small_artifact)
    inputs = _inputs(8)
    expected = [model.run(x)["y"] for x in inputs]

    def worker(t: int) -> int:
        wrong = 0
        for i in range(200):
            k = (t + i) % len(inputs)
            wrong += not np.array_equal(model.run(inputs[k])["y"], expected[k])
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(worker, range(8))) == 0


def test_inputs_and_outputs_are_the_callers_own(small_artifact):
    """Inputs and outputs pass to and from the kernels without copies where they can (DLPack), yet
    an input at any address or stride gives the same integers, and writing into an output changes
    nothing the model returns later."""
    model = runtime.load(small_artifact)
    x = _inputs(1)[0]["x"]
    q = model.quantize_inputs({"x": x})[0]
    (want,) = model.run_integer([q])
    odd = np.empty(q.nbytes + 1, np.uint8)[1:].view(q.dtype).reshape(q.shape)  # not 64-byte aligned
    odd[...] = q
    strided = np.repeat(q, 2, axis=-1)[..., ::2]
    readonly = _aligned(q.copy())  # 64-byte aligned, as DLPack would share it
    readonly.flags.writeable = False  # NumPy exports no read-only array (an input straight from a .pb / .npz)
    for given in (odd, strided, readonly):
        (got,) = model.run_integer([given])
        assert np.array_equal(got, want)
        got[...] = 0
    assert np.array_equal(model.run_integer([q])[0], want)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_refused(small_artifact, value):
    x = _inputs(1)[0]
    x["x"][0, 1, 2, 3] = value
    with pytest.raises(InputError, match=r"input 'x': 1 of 768 values are NaN or infinite"):
        runtime.load(small_artifact).run(x)


def test_missing_cpu_features_refused_at_load(small_cnn_path, small_calib, monkeypatch, capsys, tmp_path):
    """An AVX-512 VNNI artifact on an AVX2-only CPU (whatever this machine is): refused at load
    with the missing features named, exit code 2 from the CLI."""
    from runtime import compile_model
    from runtime.run import main as run_main
    from frontends import host_cpu as cpu  # where the runtime reads this CPU's features (targets.x86 re-exports them)

    artifact = compile_model(small_cnn_path, "x86", tmp_path / "v4.artifact", calib=small_calib,
                             cpu="x86-64-v4+avx512vnni", progress=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: set(AVX2_ONLY))
    missing = cpu.missing_features(runtime.artifact.read_manifest(artifact)["target"]["features"])
    assert missing == ["x86-64-v4", "+avx512vnni"]
    with pytest.raises(ArtifactError, match=re.escape("this CPU lacks " + " ".join(missing))):
        runtime.load(artifact)
    np.savez(tmp_path / "x.npz", **_inputs(1)[0])
    assert run_main([str(artifact), "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 2
    assert "this CPU lacks" in capsys.readouterr().err


def test_feature_levels():
    from targets.x86 import missing_features

    assert missing_features(["x86-64-v3"], AVX2_ONLY) == []
    assert missing_features(["x86-64-v2"], AVX2_ONLY) == []
    assert missing_features(["x86-64-v4", "+avx512vnni"], AVX2_ONLY) == ["x86-64-v4", "+avx512vnni"]
    assert missing_features(["x86-64-v3", "+avxvnni"], AVX2_ONLY | {"avx_vnni"}) == []


def test_host_taken_for_a_lesser_cpu(monkeypatch):
    """INTQ_HOST_CPU=LEVEL[+feature...] takes an AVX-512 / AMX machine's flags for those of the CPU named
    (how the suite runs on the AVX2 kernels there); a name that is no level is refused."""
    from frontends import host_cpu as cpu

    sapphire = AVX2_ONLY | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni",
                            "amx_tile", "amx_int8", "avx512vbmi"}
    monkeypatch.setattr(cpu.Path, "read_text", lambda self: "flags\t: " + " ".join(sorted(sapphire)))
    monkeypatch.setattr(cpu.Path, "exists", lambda self: True)
    monkeypatch.delenv(cpu.HOST_CPU, raising=False)  # the suite itself may run so
    assert cpu.host_features()[0] == "x86-64-v4" and "+amx-int8" in cpu.host_features()
    monkeypatch.setenv(cpu.HOST_CPU, "x86-64-v3")
    assert cpu.host_features() == ("x86-64-v3",)
    monkeypatch.setenv(cpu.HOST_CPU, "x86-64-v3+avxvnni")
    assert cpu.host_features() == ("x86-64-v3", "+avxvnni")
    monkeypatch.setenv(cpu.HOST_CPU, "haswell")
    with pytest.raises(ValueError, match="INTQ_HOST_CPU='haswell'"):
        cpu.cpu_flags()


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64"])
def test_fleet_build_is_bit_exact_with_host_build(tmp_path, small_cnn_path, small_calib, small_artifact, cpu):
    """An AVX2 (or baseline x86-64) build runs other kernels than the host's (VNNI where it has
    it), and gives the same integers."""
    from runtime import compile_model
    from targets.x86 import missing_features

    if missing_features([cpu]):
        pytest.skip(f"this CPU lacks {cpu}: built and refused at load (test_missing_cpu_features_refused_at_load)")
    fleet = compile_model(small_cnn_path, "x86", tmp_path / "fleet.artifact", calib=small_calib, cpu=cpu,
                          progress=False)
    manifest = json.loads((fleet / "manifest.json").read_text())
    assert manifest["target"]["features"] == [cpu]
    host, other = runtime.load(small_artifact), runtime.load(fleet)
    for x in _inputs(4, seed=3):
        q = host.quantize_inputs(x)
        np.testing.assert_array_equal(other.run_integer(q)[0], host.run_integer(q)[0])


def test_fleet_build_is_checked_where_it_runs(tmp_path, small_cnn_path, small_calib, capsys):
    """`--cpu x86-64-v3` on a machine with AVX2 (any x86 CI here): the artifact runs on this CPU, so
    the compile's check against float onnxruntime runs too (it was skipped for every --cpu build)."""
    from runtime.compile import main as compile_main
    from targets.x86 import missing_features

    if missing_features(["x86-64-v3"]):
        pytest.skip("this CPU lacks AVX2")
    assert compile_main([small_cnn_path, "--cpu", "x86-64-v3", "--calib", small_calib,
                         "-o", str(tmp_path / "a")]) == 0
    assert "check against float onnxruntime" in capsys.readouterr().err


def test_bad_cpu_flag(tmp_path, small_cnn_path, capsys):
    from runtime.compile import main as compile_main

    assert compile_main([small_cnn_path, "--cpu", "pentium", "-o", str(tmp_path / "a")]) == 2
    assert "x86-64-v3" in capsys.readouterr().err
    assert compile_main([small_cnn_path, "--target", "arm", "--cpu", "x86-64-v3", "-o", str(tmp_path / "a")]) == 2


def test_thread_count_leaves_the_caller_unpinned():
    """TVM pins a thread that sets its pool size to the first core; batch workers (and onnxruntime
    threads created later) then shared one core. config_threads keeps the caller's CPU set."""
    import os
    import threading

    from runtime.model import config_threads

    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a CPU set of 2 or more")
    seen = []

    def worker():
        before = os.sched_getaffinity(0)
        config_threads(1)
        seen.append((before, os.sched_getaffinity(0)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(before == after for before, after in seen) and len(seen) == 2


def test_tvm_pool_may_use_every_cpu(tmp_path):
    """TVM's default pool is half the hardware threads on x86 (2 CPUs: 1 thread, whatever
    config_threadpool asks); importing the runtime lets every thread's pool use all the CPUs."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a CPU set of 2 or more")
    # the main thread's pool spans every CPU; a worker thread asking for 1 gets a pool of 1 (a wider
    # pool told to use one ran the work on a pinned worker while the caller spun), env left as it was
    code = ("import os, threading, runtime, tvm; from runtime.model import config_threads; config_threads(2); "
            "n = tvm.get_global_func('runtime.NumThreads'); tasks = lambda: len(os.listdir('/proc/self/task')); "
            "seen = []; t = threading.Thread(target=lambda: (seen.append(tasks()), config_threads(1), "
            "seen.append(tasks()))); t.start(); t.join(); "
            "print(n(), seen[1] - seen[0], os.environ['TVM_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    # main pool 2; the worker's pool of 1 starts no thread of its own; the variable restored
    assert out.stdout.split()[-3:] == ["2", "0", str(len(os.sched_getaffinity(0)))]


def test_scalar_inputs_and_saturation_warning(tmp_path):
    """A 0-d input (a frequency bound, a sample rate) takes a Python or NumPy scalar (the compile's
    own check passed one and was refused); an input far past its calibrated range runs, saturated,
    with one warning naming it (a pitch tracker's fmin of 300 Hz calibrated at 46.9 Hz ran as 46.9)."""
    import warnings

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "scale.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.uniform(-1, 1, (8, 1, 8)).astype(np.float32),
             s=rng.uniform(1, 2, 8).astype(np.float32))
    art = runtime.load(runtime.compile_model(tmp_path / "scale.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    x = rng.uniform(-1, 1, (1, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the range: no warning
        outs = [art.run({"x": x, "s": s})["y"] for s in (1.5, np.float32(1.5), np.array(1.5, np.float32))]
    assert all(np.array_equal(o, outs[0]) for o in outs) and np.abs(outs[0] - 1.5 * x).max() < 0.05
    with pytest.warns(RuntimeWarning, match="input 's'.*beyond its calibrated range"):
        art.run({"x": x, "s": 10.0})
    from runtime.bench import main as bench_main

    assert bench_main([str(tmp_path / "a"), "--repeat", "2", "--kernels", "2"]) == 0  # it indexed the 0-d shape


def test_a_feature_past_the_calibration_data_is_warned_of(tmp_path):
    """im2deep's long peptides: atom counts 1.3-1.4x the calibration's largest, inside the input's grid
    (set by other features), and the CCS came out 123 A^2 off without a word. A feature 2x past its
    calibrated largest value gets one warning naming it; within 1.25x, none."""
    import warnings

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "f.onnx")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 5, (8, 1, 10, 6)).astype(np.float32)
    x[..., 2] = rng.uniform(0, 1, (8, 1, 10))
    np.savez(tmp_path / "c.npz", x=x)
    art = runtime.load(runtime.compile_model(tmp_path / "f.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    sample = x[0].copy()
    sample[..., 2] *= 1.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        art.run({"x": sample})
    sample[0, 3, 2] = 2.0
    with pytest.warns(RuntimeWarning, match="input 'x' \\(feature 2\\): \\|values\\| up to 2, beyond the calibration"):
        art.run({"x": sample})


def test_artifact_rebuilt_in_place_loads_its_new_library(tmp_path, small_cnn_path, small_calib):
    """Compile, load, compile again to the same path with other data, load again: the second
    model runs its own kernels. The dynamic loader hands back a library it already holds under
    the same path name, so this ran the first build's kernels with the second's scales."""
    from passes import QuantConfig
    from runtime import compile_model

    wide = QuantConfig(wide_outputs=False, bias_correction=False)  # another library for the same model
    here, elsewhere = tmp_path / "m.artifact", tmp_path / "other.artifact"
    x = {"x": np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    before = runtime.load(compile_model(small_cnn_path, "x86", here, calib=small_calib, progress=False))
    first = before.run(x)
    compile_model(small_cnn_path, "x86", elsewhere, calib=small_calib, config=wide, progress=False)
    compile_model(small_cnn_path, "x86", here, calib=small_calib, config=wide, progress=False)
    again, other = runtime.load(here), runtime.load(elsewhere)
    assert again.manifest["library"]["sha256"] == other.manifest["library"]["sha256"]
    assert again.manifest["library"]["sha256"] != before.manifest["library"]["sha256"]
    for name, y in again.run(x).items():
        np.testing.assert_array_equal(y, other.run(x)[name])
    assert any(not np.array_equal(first[k], other.run(x)[k]) for k in first)


def test_loaded_library_leaves_no_file_behind(tmp_path, small_cnn_path, small_calib, monkeypatch):
    """The library's copy under its content name is removed once loaded, so a deployment script
    killed later (no exit handlers) leaves nothing in the temporary folder; the model still runs."""
    import tempfile

    from runtime import compile_model

    art = compile_model(small_cnn_path, "x86", tmp_path / "m.artifact", calib=small_calib, progress=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = runtime.load(art)
    y = model.run({"x": np.ones((1, 3, 16, 16), np.float32)})
    assert list(scratch.iterdir()) == [] and all(np.isfinite(v).all() for v in y.values())


def test_bench_times_inputs_inside_the_calibrated_range(tmp_path):
    """runtime.bench's random inputs lie in each input's calibrated range: N(0, 1) past a +-0.05 range
    drew the warning that asks the user to recalibrate, about the bench's own inputs (hunt 14 F6)."""
    import warnings

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtime.bench import main as bench_main

    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "k")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).uniform(-0.05, 0.05, (8, 1, 64)).astype(np.float32))
    runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bench_main([str(tmp_path / "a"), "--repeat", "2", "--kernels", "2"]) == 0
