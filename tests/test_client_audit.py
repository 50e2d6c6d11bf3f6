"""What deployment and benchmark scripts did to the public API and the CLIs, and broke: each case a
clear one-line error (exit 2) or a working call where there was a traceback, a hang or a wrong number."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import runtime
from frontends import InputError
from runtime.bench import main as bench_main
from runtime.compile import main as compile_main
from runtime.run import main as run_main

ROOT = Path(__file__).resolve().parents[1]


def _x(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)


_FORKED = {}  # the model a forked child inherits (a fork Pool's task runs a module-level function)


def _run_inherited(seed):
    return _FORKED["model"].run({"x": _x(seed)})["y"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_runs_a_model_its_parent_ran(small_artifact):
    """multiprocessing's default start on Linux is fork: the child's TVM pool had lost its worker threads,
    and its first run waited for them forever (the parent had run the model, so the pool existed)."""
    model = runtime.load(small_artifact)
    want = [model.run({"x": _x(seed)})["y"] for seed in (1, 2)]
    _FORKED["model"] = model
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.map_async(_run_inherited, (1, 2)).get(timeout=60)
    finally:
        _FORKED.clear()
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert np.array_equal(model.run({"x": _x(1)})["y"], want[0])  # the parent's own pool is untouched


def test_model_pickles_as_its_artifact(small_artifact):
    """`spawn_pool.map(model.run, ...)` pickles the model: TVM printed a warning per function and raised."""
    model = runtime.load(small_artifact)
    again = pickle.loads(pickle.dumps(model))
    assert again is not model and again.path == Path(os.path.abspath(small_artifact))
    assert np.array_equal(again.run({"x": _x()})["y"], model.run({"x": _x()})["y"])


@pytest.mark.parametrize("inputs", [_x(), [_x()], None])
def test_run_takes_a_dict_and_says_so(small_artifact, inputs):
    with pytest.raises(InputError, match=r"expected a dict of input name -> array, e\.g\. \{'x': x\}"):
        runtime.load(small_artifact).run(inputs)


def test_values_that_are_no_array_or_overflow_float32_are_named(small_artifact):
    model = runtime.load(small_artifact)
    with pytest.raises(InputError, match="input 'x': a list that is not an array of numbers"):
        model.run({"x": [[1.0, 2.0], [3.0]]})  # ragged: NumPy's ValueError before
    with pytest.raises(InputError, match="input 'x': float64 values up to 1e\\+300 are beyond float32's range"):
        model.run({"x": np.full((1, 3, 16, 16), 1e300)})  # was called "NaN or infinite", after NumPy's warning


def test_run_cli_checks_its_output_file_before_the_run(tmp_path, small_artifact, capsys):
    np.savez(tmp_path / "in.npz", x=_x())
    assert run_main([small_artifact, "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "no" / "y.npz")]) == 2
    assert f"the output directory {tmp_path / 'no'} does not exist" in capsys.readouterr().err  # a traceback, exit 1
    (tmp_path / "dir.npz").mkdir()
    assert run_main([small_artifact, "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "dir.npz")]) == 2
    assert "is a directory" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", _x())
    assert run_main([small_artifact, "--input", str(tmp_path / "x.npy")]) == 2
    assert "one array (.npy), not an .npz file" in capsys.readouterr().err


def test_bench_cli_refuses_what_it_would_misreport(tmp_path, small_artifact, capsys):
    """--input went through np.load unguarded (missing file: traceback, exit 1); --batch 4 on a fixed-shape
    artifact ran batch 1 and reported 4x the throughput; --batch 0 reported 0; --kernels -1 all kernels but one."""
    for args, needle in [(["--input", str(tmp_path / "missing.npz")], "missing.npz: not a readable .npz file"),
                         (["--batch", "4"], "--batch 4: " + small_artifact + " was compiled for fixed shapes"),
                         (["--batch", "0"], "--batch must be >= 1"), (["--kernels", "-1"], "--kernels >= 0")]:
        assert bench_main([small_artifact, "--repeat", "2", *args]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where nobody (root included) can write")
def test_compile_refuses_an_output_folder_it_cannot_write(small_cnn_path, capsys):
    assert compile_main([small_cnn_path, "-o", "/proc/intq-test.artifact"]) == 2  # a traceback, exit 1
    err = capsys.readouterr().err
    assert "/proc/intq-test.artifact: cannot write in the output directory /proc" in err and "importing" not in err


def test_calibration_with_nan_is_refused(tmp_path, small_cnn_path, capsys):
    """NaN calibration samples compiled an artifact of made-up scales (1.0), exit 0: only the check was skipped."""
    x = np.random.default_rng(0).standard_normal((4, 1, 3, 16, 16)).astype(np.float32)
    x[2, 0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "c.npz", x=x)
    assert compile_main([small_cnn_path, "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "a")]) == 2
    assert "c.npz: 'x' holds NaN or infinite values (sample(s) 2)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_interruptions_are_one_line(capsys):
    """Ctrl-C printed a traceback; one that TVM's FFI turned into another error (an IndexError) printed
    that error's traceback and exited 1."""
    from runtime.cli import _interrupt, guarded

    def interrupted():
        raise KeyboardInterrupt

    def interrupted_inside_tvm():
        try:
            _interrupt(signal.SIGINT, None)
        except KeyboardInterrupt:
            raise IndexError("list index out of range") from None

    for action in (interrupted, interrupted_inside_tvm):
        assert guarded(action) == 130
        assert capsys.readouterr().err == "error: interrupted (SIGINT)\n"


def test_sigterm_cleans_up_and_exits_143(tmp_path):
    """SIGTERM's default action killed the process where it stood (its temporary folders left behind);
    now it unwinds as Ctrl-C does."""
    script = ("import os, signal, time\nfrom runtime.cli import guarded\n"
              "def action():\n    try:\n        os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
              f"    finally:\n        open({str(tmp_path / 'cleaned')!r}, 'w').close()\n"
              "raise SystemExit(guarded(action))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (143, "error: interrupted (SIGTERM)\n")
    assert (tmp_path / "cleaned").exists()


def test_sigterm_during_the_build_leaves_nothing(tmp_path, small_cnn_path, small_calib):
    """A deployment's timeout (SIGTERM) in the middle of the compile: exit 143 with one line and no artifact
    (the default action killed it where it stood, the build's temporary folders left behind; they are
    removed now, except where the signal lands inside a folder's own removal: not asserted)."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.compile", small_cnn_path, "--calib", small_calib, "-o",
                             str(tmp_path / "a")], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "compiling for" in line:
            proc.send_signal(signal.SIGTERM)
            break
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    assert err.rstrip().endswith("error: interrupted (SIGTERM)") and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["tmp"]


def test_ids_outside_the_embedding_are_refused(tmp_path):
    """Token ids past the vocabulary (another model's tokenizer) ran, clamped to the table's last row, where
    onnxruntime refuses them; negative ids within [-rows, -1] count from the end, as ONNX Gather has it."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import saved_model

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    path = saved_model([helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
                        helper.make_node("Gather", ["table", "ids32"], ["emb"], name="embed")],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                       [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 3, 4])], [table], tmp_path / "e.onnx")
    model = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", progress=False))
    assert model.inputs[0]["index_rows"] == {"rows": 10, "node": "embed"}
    ok = model.run({"ids": np.array([[0, 9, -10]])})["emb"]
    assert np.abs(ok - numpy_helper.to_array(table)[[0, 9, 0]]).max() < 0.05
    for ids, bad in (([[1, 10, 2]], "id 10"), ([[1, -11, 2]], "id -11")):
        with pytest.raises(InputError, match=f"input 'ids': {bad} is outside the 10 rows of the table it indexes "
                                             r"\(ONNX node 'embed': ids in \[-10, 9\]\)"):
            model.run({"ids": np.array(ids)})


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.pop("library"), "lacks 'library'"),
    (lambda m: m.pop("inputs"), "lacks 'inputs'"),
    (lambda m: m["target"].pop("arch"), "lacks target: 'arch'"),
    (lambda m: m["inputs"][0].pop("quant"), "lacks inputs: 'quant'"),
    (lambda m: m.update(library="model.so"), "lacks 'library'"),
])
def test_manifest_without_a_field_is_refused_by_name(tmp_path, small_artifact, capsys, edit, needle):
    """A manifest missing a field (hand-edited, another tool's) raised KeyError from the runtime: exit 1."""
    import json
    import shutil

    art = Path(shutil.copytree(small_artifact, tmp_path / "t"))
    manifest = json.loads((art / "manifest.json").read_text())
    edit(manifest)
    (art / "manifest.json").write_text(json.dumps(manifest))
    np.savez(tmp_path / "in.npz", x=_x())
    assert run_main([str(art), "--input", str(tmp_path / "in.npz")]) == 2
    assert needle in capsys.readouterr().err


def test_x86_artifact_runs_with_the_tvm_runtime_alone(tmp_path, small_artifact):
    """README's deployment setup (TVM_USE_RUNTIME_LIB=1) on an x86 box: the CPU-feature check imported the
    compiler's `targets` package, whose `from tvm import relax` fails there (AttributeError, exit 1)."""
    np.savez(tmp_path / "in.npz", x=_x())
    done = subprocess.run([sys.executable, "-m", "runtime.run", small_artifact, "--input", str(tmp_path / "in.npz")],
                          cwd=ROOT, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("y: shape [1, 10] float32"), done.stderr[-2000:]


def test_output_piped_into_head_is_no_error(small_artifact):
    """`python -m runtime.bench A | head -2`: the closed pipe gave a BrokenPipeError traceback and exit 1."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime.bench", small_artifact, "--repeat", "2"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
