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


def _swallow_a_ctrl_c_in_calibration(monkeypatch):
    """Calibration sends itself SIGINT and swallows the KeyboardInterrupt, as a fallback's broad `except` did."""
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


def test_a_ctrl_c_that_a_fallback_swallows_still_stops_the_compile(tmp_path, small_cnn_path, small_calib,
                                                                   monkeypatch, capsys):
    """TVM hands the KeyboardInterrupt raised in Python code it called back as another error, and a
    fallback's broad `except` took it (the sensitivity measurement: 'failed (RuntimeError: SIGINT)'): the
    compile went on and wrote its artifact, exit 0, with those tensors left at 8 bits."""
    _swallow_a_ctrl_c_in_calibration(monkeypatch)
    out = tmp_path / "a.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(out), "-q"]) == 130
    assert capsys.readouterr().err.endswith("error: interrupted (SIGINT)\n")
    assert os.listdir(tmp_path) == []


def test_a_swallowed_ctrl_c_stops_a_compile_called_from_a_script(tmp_path, small_cnn_path, small_calib, monkeypatch):
    """The same from the Python API (`runtime.compile_model` in a script): only the CLI recorded the signal, so
    the compile went on and wrote its artifact; now it raises KeyboardInterrupt and writes nothing, and the
    script's own SIGINT handling is back afterwards."""
    import runtime.compiler

    _swallow_a_ctrl_c_in_calibration(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runtime.compiler.compile_model(small_cnn_path, output=tmp_path / "a.artifact", calib=small_calib,
                                       progress=False)
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_compile_check_runs_the_last_two_samples_of_a_file_without_a_batch_axis(tmp_path):
    """The README's check runs the last two calibration samples; a file of [N, 3, 224, 224] for a [1, 3, 224, 224]
    (or free-batch) input, which calibration reads as N samples, was taken for one batch and only its last
    sample checked ("on the last calibration sample", EfficientNet-Lite0 and MiniLM as the README builds them)."""
    from runtime.check import calibration_samples

    np.savez(tmp_path / "c.npz", x=np.arange(5 * 3, dtype=np.float32).reshape(5, 3), ids=np.arange(5 * 4).reshape(5, 4))
    for shape in ([1, 3], ["n", 3]):
        samples = calibration_samples(tmp_path / "c.npz", [{"name": "x", "shape": shape},
                                                           {"name": "ids", "shape": [shape[0], 4]}])
        assert [s["x"].tolist() for s in samples] == [[[9.0, 10.0, 11.0]], [[12.0, 13.0, 14.0]]]
        assert [s["ids"].shape for s in samples] == [(1, 4), (1, 4)]


def test_run_errors_are_value_errors_a_script_can_import_from_runtime(small_artifact):
    """A deployment script wraps `run` in `except ValueError` (what NumPy and onnxruntime raise for a bad
    argument) and imports what it catches from the package it uses: InputError was neither a ValueError nor
    in `runtime`. A wrong dict names what is missing and what is not an input (a tokenizer's token_type_ids)."""
    model = runtime.load(small_artifact)
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"shape \[1, 3, 8, 8\]"):
        model.run({"x": x[..., :8, :8]})
    with pytest.raises(runtime.InputError, match=r"not inputs of this model \['token_type_ids'\]"):
        model.run({"x": x, "token_type_ids": x})
    with pytest.raises(runtime.InputError, match=r"missing \['x'\]"):
        model.run({})
    with pytest.raises(runtime.ArtifactError, match="not an artifact"):
        runtime.load(os.path.dirname(small_artifact))
    assert issubclass(runtime.ArtifactError, runtime.CompileError)


def test_run_cli_summary_gives_a_batch_output_its_full_argmax_and_takes_an_empty_one():
    """`runtime.run`'s summary printed a [2, 1000] output's flat argmax (1282 for sample 1's class 282), and an
    empty output (a detector's NMS tail that found nothing) raised ValueError in its min: exit 1, a traceback."""
    from runtime.run import summary

    logits = np.zeros((2, 1000), np.float32)
    logits[1, 282] = 1
    assert summary("logits", logits) == "logits: shape [2, 1000] float32, argmax [1, 282], min 0, max 1"
    assert summary("boxes", np.zeros((0, 4), np.float32)) == "boxes: shape [0, 4] float32, empty"
    assert summary("score", np.float32([3.5])) == "score: shape [1] float32, argmax 0, min 3.5, max 3.5"


@pytest.mark.parametrize("write, needle", [
    (lambda p: np.save(p / "c.npy", np.zeros((4, 3, 16, 16), np.float32)) or p / "c.npy",
     "one array (.npy), not an .npz file"),
    (lambda p: np.savez(p / "c.npz", x=np.zeros((4, 3, 8, 8), np.float32)) or p / "c.npz",
     "expected [N, 1, 3, 16, 16] or [N, 3, 16, 16]"),
])
def test_calibration_file_mistakes_are_named(tmp_path, small_cnn_path, capsys, write, needle):
    """A .npy calibration file failed with dict()'s 'dictionary update sequence element #0 has length 3'; an
    [N, 3, 8, 8] one was told only of the [N, 1, 3, 16, 16] layout, not of [N, 3, 16, 16], which it uses."""
    calib = write(tmp_path)
    assert compile_main([small_cnn_path, "--calib", str(calib), "-o", str(tmp_path / "a"), "-q"]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_a_directory_given_as_the_model_is_named_so(tmp_path, capsys):
    """`runtime.compile models/` said 'no such file' of a folder that exists."""
    assert compile_main([str(tmp_path), "-q"]) == 2
    assert f"{tmp_path}: a directory, not an ONNX file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def free_batch_artifact(tmp_path_factory, small_calib) -> str:
    """The small CNN with a free batch (1..8), compiled once for this file."""
    from conftest import small_cnn

    work = tmp_path_factory.mktemp("clients")
    out = work / "free.artifact"
    assert compile_main([small_cnn(work / "dyn.onnx", dynamic_batch=True), "--calib", small_calib, "--input-shape",
                         "x:1..8x3x16x16", "-o", str(out), "-q", "--no-check"]) == 0
    return str(out)


@pytest.mark.parametrize("args", [["--shape", "n=8"], ["--batch", "4"]])
def test_bench_refuses_sizes_that_contradict_its_input_file(tmp_path, free_batch_artifact, capsys, args):
    """`runtime.bench --input x2.npz --shape n=8` timed the file's 2 samples and reported the throughput of 8
    (4x too high); --shape seq=32 beside --input ran the file's length in silence."""
    from runtime.bench import main as bench_main

    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3, 16, 16), np.float32))
    assert bench_main([free_batch_artifact, "--input", str(tmp_path / "x.npz"), "--repeat", "1", *args]) == 2
    assert "the arrays of --input" in capsys.readouterr().err
    assert bench_main([free_batch_artifact, "--batch", "2", "--shape", "n=3", "--repeat", "1"]) == 2
    assert "--batch 2 and --shape n=3 disagree" in capsys.readouterr().err


def test_batch_workers_takes_a_count_of_threads_only(free_batch_artifact):
    """`model.batch_workers = 0` (meant as 'no extra threads') raised ZeroDivisionError from inside the next
    batch's run; a count is checked where it is set, and 1 runs the samples one after the other."""
    model = runtime.load(free_batch_artifact)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    expected = model.run({"x": x})["y"]
    for bad in (0, -1, 1.5, None, True):
        with pytest.raises(ValueError, match="batch_workers"):
            model.batch_workers = bad
    model.batch_workers = np.int64(1)
    assert model.batch_workers == 1 and np.array_equal(model.run({"x": x})["y"], expected)


def test_a_board_artifact_loaded_here_names_emulate(tmp_path, small_artifact):
    """A riscv64 / armv7 artifact loaded on the workstation said only to copy it to a board; the README's
    recipe runs it here first with --emulate, which the refusal now names."""
    import json
    import shutil

    art = tmp_path / "rv.artifact"
    shutil.copytree(small_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["target"] = {**manifest["target"], "arch": "riscv64", "name": "riscv"}
    manifest["executor"] = {"sha256": {}}
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match="--emulate"):
        runtime.load(art)


def test_bench_threads_bound_a_batch_too(free_batch_artifact):
    """`runtime.bench --threads 1 --batch 4` (the README's throughput recipe) ran the batch's samples on one
    worker thread per CPU, each with a TVM thread: 2 threads busy on the 2-core Xeon, for '--threads 1'."""
    from runtime.bench import benchmark

    model = runtime.load(free_batch_artifact)
    result = benchmark(model, threads=1, repeat=2, batch=4)
    assert result["threads"] == 1 and result["shapes"] == {"x": [4, 3, 16, 16]}
    assert model.batch_workers == 1 and (model._pool is None or model._pool[0] == 1)  # one thread in all


def test_a_json_target_for_the_native_cpu_is_refused_naming_the_way(capsys, small_cnn_path, tmp_path):
    """`--target '{"kind": "llvm", "mcpu": "native"}'` (TVM's usual way to say this CPU) logged LLVM's 'Error:
    ... using default -mcpu=generic' and built a generic x86-64 artifact (no AVX2) with exit 0."""
    target = '{"kind": "llvm", "mcpu": "native"}'
    assert compile_main([small_cnn_path, "--target", target, "-o", str(tmp_path / "a"), "-q"]) == 2
    assert "--target x86 builds for this CPU's features" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_load_removes_what_a_process_killed_while_loading_left(tmp_path, small_artifact, monkeypatch):
    """A process pool terminated while its workers loaded a model (SIGTERM runs no `finally`) left each
    worker's `intq-lib-*` folder in /tmp, holding the library's hard link (a copy on a tmpfs: 38 MB for MiniLM)."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f"intq-lib-{dead}-x1").mkdir()
    (tmp_path / f"intq-lib-{dead}-x1" / "lib.so").write_bytes(b"\0" * 1000)
    (tmp_path / f"intq-lib-{os.getpid()}-x2").mkdir()  # a load of this process, under way in another thread
    runtime.load(small_artifact)
    assert sorted(os.listdir(tmp_path)) == [f"intq-lib-{os.getpid()}-x2"]


def test_an_empty_batch_is_named_so(free_batch_artifact):
    """A serving loop's empty batch was told to recompile with a wider range, which no range can be."""
    model = runtime.load(free_batch_artifact)
    with pytest.raises(runtime.InputError, match=r"n = 0, an empty batch: nothing to run; the artifact takes n in \[1, 8\]"):
        model.run({"x": np.zeros((0, 3, 16, 16), np.float32)})


def test_a_json_target_naming_an_avx512_cpu_is_refused_on_an_avx2_one():
    """`--target '{"kind": "llvm", "mcpu": "skylake-avx512"}'` recorded the CPU's name (not judged) and no
    level: its artifact loaded on an AVX2 machine and died there with SIGILL. LLVM's features of the CPU now
    give the level the runtime judges."""
    from frontends.host_cpu import missing_features
    from targets import get_target

    avx2 = {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c", "sse4_2", "popcnt", "ssse3"}
    features = get_target('{"kind": "llvm", "mcpu": "skylake-avx512"}').features
    assert missing_features(features, flags=avx2) == ["x86-64-v4"]
    assert missing_features(get_target('{"kind": "llvm", "mcpu": "haswell"}').features, flags=avx2) == []


# the second client hunt: a notebook's compile_model, two compiles into one folder, a README literalist


def test_the_manifest_counts_the_calibration_samples(small_artifact, small_calib):
    """The manifest's `calibration_samples` said 0 (1 with a free batch): a local of the library writer
    shadowed the samples and counted the batch-1 libraries instead."""
    with np.load(small_calib) as data:
        count = len(data["x"])
    assert runtime.load(small_artifact).manifest["quantization"]["calibration_samples"] == count


def test_compile_model_takes_calibration_as_a_dict_and_names_a_wrong_argument(tmp_path, small_cnn_path,
                                                                              small_calib, small_artifact):
    """A notebook's `calib=dict(...)` raised pathlib's 'expected str, bytes or os.PathLike object, not dict',
    and with allow_float the fallback wrote the whole model as onnxruntime's ('integer_only': false); a
    ModelProto or a shape string got pathlib's error or 'rank 4, --input-shape gives 9 dims'."""
    import onnx

    with np.load(small_calib) as data:
        calib = dict(data)
    path = runtime.compile_model(small_cnn_path, output=tmp_path / "d.artifact", calib=calib, progress=False)
    model, reference = runtime.load(path), runtime.load(small_artifact)
    assert model.manifest["integer_only"] and model.manifest["inputs"] == reference.manifest["inputs"]
    for wrong, match in [({"calib": [calib]}, "calib must be the path of an .npz file or a dict"),
                         ({"calib": calib["x"]}, "calib must be .* not numpy.ndarray"),
                         ({"model_path": onnx.load(small_cnn_path)}, "save a ModelProto with onnx.save"),
                         ({"input_shapes": {"x": "1x3x16x16"}}, r"input_shapes\['x'\] must be a tuple of dims")]:
        arguments = {"model_path": small_cnn_path, "output": tmp_path / "e.artifact", "allow_float": True,
                     "progress": False, **wrong}
        with pytest.raises(TypeError, match=match):
            runtime.compile_model(**arguments)
    with pytest.raises(runtime.InputError, match=r"calib \(the dict given\): keys \['y'\]"):
        runtime.compile_model(small_cnn_path, output=tmp_path / "e.artifact", calib={"y": calib["x"]}, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["d.artifact"]


def test_an_artifact_another_process_writes_at_the_same_time_is_replaced_whole(tmp_path, monkeypatch):
    """Two compiles into one folder: where the other process's artifact arrived between the check and the
    rename, the rename failed ('Directory not empty', exit 1) and left a moved-aside copy beside it."""
    import runtime.artifact

    dest, rename, others = tmp_path / "a.artifact", os.rename, [1]

    def the_other_finishes_first(src, dst):
        if dst == dest and not dest.exists() and others:
            others.pop()
            dest.mkdir()
            (dest / "manifest.json").write_text("{}")  # the other process's artifact
        rename(src, dst)

    def fill(tmp):
        (tmp / "model.so").write_bytes(b"ours")
        return {}

    monkeypatch.setattr(runtime.artifact.os, "rename", the_other_finishes_first)
    runtime.artifact.write_artifact(dest, fill)
    assert (dest / "model.so").read_bytes() == b"ours" and os.listdir(tmp_path) == ["a.artifact"]


def test_an_x86_artifact_asking_for_a_vector_extension_this_cpu_lacks_is_refused():
    """A JSON target's `+avx512fp16` (or a manifest's `+amx-fp16`) was no feature known to the load check and
    was not judged: the artifact loaded on a CPU without it, to die with SIGILL. cpuinfo's flag of that name
    now judges it."""
    from frontends.host_cpu import missing_features

    avx2 = {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c", "sse4_2", "popcnt", "ssse3"}
    assert missing_features(["x86-64-v3", "+avx512fp16", "+amx-fp16", "+avx10.2"], flags=avx2) == \
        ["+avx512fp16", "+amx-fp16", "+avx10.2"]
    spr = avx2 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_fp16", "amx_fp16", "avx_vnni_int8"}
    assert missing_features(["x86-64-v4", "+avx512fp16", "+amx-fp16", "+avxvnniint8", "+sse4.2", "sm_80"],
                            flags=spr) == []


def _edited_copy(small_artifact, tmp_path, **target) -> str:
    """A copy of the small artifact whose manifest's target says otherwise (a packaging script's mistake)."""
    import json
    import shutil

    copy = tmp_path / "copy.artifact"
    shutil.copytree(small_artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"].update(target)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return str(copy)


def test_an_artifact_for_another_machine_names_what_to_do(small_artifact, tmp_path):
    """`runtime.run` on an aarch64 artifact advised '--rpc', a flag it does not have; a CUDA artifact without
    a driver was refused without its path or what to do."""
    import ctypes

    with pytest.raises(runtime.ArtifactError, match=r"built for aarch64 .* Copy it to the aarch64 board .*"
                                                    r"runtime.bench ARTIFACT --rpc HOST:PORT.*"
                                                    r"here under qemu-user: python -m benchmarks.emulation"):
        runtime.load(_edited_copy(small_artifact, tmp_path, arch="aarch64"))
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        with pytest.raises(runtime.ArtifactError, match=r"copy.artifact: built for CUDA, which needs an NVIDIA GPU .* "
                                                        r"recompile it for this CPU \(--target x86\)"):
            (tmp_path / "cuda").mkdir()
            runtime.load(_edited_copy(small_artifact, tmp_path / "cuda", device="cuda"))


def test_the_cli_prints_an_input_beyond_its_calibrated_range_as_a_warning_line(small_artifact, tmp_path, capsys):
    """`runtime.run` on inputs 10x the calibration's printed Python's 'runtime/run.py:39: RuntimeWarning: ...'
    and the CLI's own source line under it."""
    from runtime.run import main as run_main

    np.savez(tmp_path / "loud.npz", x=np.full((1, 3, 16, 16), 100.0, np.float32))
    assert run_main([small_artifact, "--input", str(tmp_path / "loud.npz")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: input 'x': |values| up to 100, beyond its calibrated range") and \
        "RuntimeWarning" not in err and "model.run" not in err


def test_the_checks_warning_names_4_bit_weights_first():
    """`--bits 4` on EfficientNet-Lite0 (the README's mixed-precision command): cosine 0.51, and the warning
    sent the user to more calibration data, 16-bit activations and --no-bias-correction only."""
    from runtime.check import Agreement, report

    low = [Agreement("logits", 0.512, 5.5, relative=1.05)]
    assert "try --bits 8 or --bits mixed" in report(low, bits="4")
    assert "looser limit for --bits mixed" in report(low, bits="mixed")
    assert "try more or more representative --calib data" in report(low)


def test_a_loaded_model_runs_its_own_tail_after_the_folder_is_gone(tmp_path, monkeypatch):
    """The tail's onnxruntime session was built at the first run from tail.onnx by its path: a script that
    loaded the artifact from a temporary folder it then removed got onnxruntime's NoSuchFile, and one whose
    artifact was compiled again in place would have run the new tail on the old library."""
    import shutil

    import frontends.onnx_import as onnx_import
    from tests.test_float_fallback import _gemm_relu

    def failing(model):  # TVM's importer fails: the whole model is the tail, onnxruntime's
        raise ValueError("Dynamic pads are not supported yet.")

    _gemm_relu(tmp_path / "m.onnx")
    monkeypatch.setattr(onnx_import, "import_onnx", failing)
    path = runtime.compile_model(tmp_path / "m.onnx", output=tmp_path / "a", allow_float=True, progress=False)
    x = {"x": np.ones((1, 16), np.float32)}
    want = runtime.load(path).run(x)["z"]
    model = runtime.load(path)
    shutil.rmtree(path)
    assert np.array_equal(model.run(x)["z"], want)


def test_compile_model_reads_input_shape_words_in_a_dims_tuple(small_cnn_path, monkeypatch):
    """`input_shapes={"x": ("N", 3, 16, 16)}` (the CLI's word for a free batch) raised the importer's "'str'
    object cannot be interpreted as an integer"; ('1..8', ...) and -1 likewise or 'dynamic dimensions'."""
    import runtime.compiler
    from frontends import parse_input_shape

    given = []

    def compile_(path, target, output, calib, shapes, *rest):
        given.append(shapes)

    monkeypatch.setattr(runtime.compiler, "_compile", compile_)
    for dims, text in [(("N", 3, 16, 16), "Nx3x16x16"), (("1..8", 3, 16, 16), "1..8x3x16x16"),
                       ((-1, 3, 16, 16), "-1x3x16x16"), ((1, 3, 16, 16), "1x3x16x16")]:
        runtime.compile_model(small_cnn_path, input_shapes={"x": dims}, progress=False)
        assert given.pop() == {"x": parse_input_shape(f"x:{text}")[1]}
    with pytest.raises(runtime.CompileError, match="'x:0x3x16x16': dim 0: every dim is at least 1; expected NAME:D0xD1"):
        runtime.compile_model(small_cnn_path, input_shapes={"x": (0, 3, 16, 16)}, progress=False)
    with pytest.raises(TypeError, match=r"input_shapes\['x'\] \(None, 3, 16, 16\): each dim must be a number"):
        runtime.compile_model(small_cnn_path, input_shapes={"x": (None, 3, 16, 16)}, progress=False)

