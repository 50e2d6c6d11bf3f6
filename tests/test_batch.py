"""One artifact for every batch size (passes/generalize_batch.py): `--input-shape x:1..8x...`
compiles a symbolic leading dim; each sample's integers equal, bit for bit, what it gets
alone and what the batch-1 artifact gives it; the range is recorded and enforced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tvm import relax

import runtime
import runtime.artifact
from conftest import small_cnn, without_sample_library
from frontends import CompileError, InputError, parse_input_shape
from frontends.onnx_import import FreeDim
from runtime.compile import main as compile_main
from runtime.run import main as run_main

R = relax.op


@pytest.fixture(scope="module")
def batch_artifact(tmp_path_factory, small_calib):
    work = tmp_path_factory.mktemp("batch")
    path = small_cnn(work / "dyn.onnx", dynamic_batch=True)
    out = work / "dyn.artifact"
    assert compile_main([path, "--calib", small_calib, "--input-shape", "x:1..8x3x16x16", "-o", str(out), "-q"]) == 0
    return out


def _batch(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32) * 1.5


def test_input_shape_flag_leaves_the_batch_free():
    assert parse_input_shape("x:Nx3x224x224") == ("x", (FreeDim("n"), 3, 224, 224))
    assert parse_input_shape("x:1..32x3x224x224") == ("x", (FreeDim("n", 1, 32), 3, 224, 224))
    assert parse_input_shape("ids:batch=2..8x128") == ("ids", (FreeDim("batch", 2, 8), 128))
    assert parse_input_shape("x:-1x4")[1][0] == FreeDim("n")
    for bad in ("x:3xN", "x:8..2x3"):
        with pytest.raises(CompileError, match="--input-shape"):
            parse_input_shape(bad)


def test_manifest_records_the_range(batch_artifact):
    m = runtime.load(batch_artifact).manifest
    assert m["inputs"][0]["shape"] == ["n", 3, 16, 16] and m["inputs"][0]["range"] == {"n": [1, 8]}
    assert m["outputs"][0]["shape"] == ["n", 10] and m["integer_only"] is True
    assert "R.Tensor((n, 3, 16, 16)" in (batch_artifact / "model.relax.py").read_text()


@pytest.mark.parametrize("count, workers, sample_library, one_call", [
    (1, 1, True, False), (1, 1, False, False), (3, 1, True, True), (8, 1, True, True), (8, 1, True, False),
    (8, 1, False, False), (3, 2, True, False), (8, 3, True, False), (8, 3, False, False)])
def test_each_sample_bit_exact_with_batch1_artifact(batch_artifact, small_artifact, count, workers, sample_library,
                                                    one_call):
    """The same calibration gives the same scales: the batch artifact's integers for a batch
    equal the static batch-1 artifact's, sample by sample, and so do the float outputs, whether
    the batch runs as one call (`batch_in_one_call`: the symbolic-batch library) or one sample a
    call, one after the other or side by side (x86's batch-1 library, or the symbolic one where it
    is set aside)."""
    batched, single = runtime.load(batch_artifact), runtime.load(small_artifact)
    if not sample_library:
        without_sample_library(batched)
    batched.batch_workers, batched.batch_in_one_call = workers, one_call
    x = _batch(count, seed=count)
    q = batched.quantize_inputs({"x": x})
    assert q[0].shape == (count, 3, 16, 16)
    (y,) = batched.run_integer(q)
    assert y.shape == (count, 10) and y.dtype == np.int32
    alone = np.concatenate([single.run_integer(single.quantize_inputs({"x": x[i:i + 1]}))[0] for i in range(count)])
    assert np.array_equal(y, alone)
    assert np.array_equal(batched.run({"x": x})["y"], np.concatenate([single.run({"x": x[i:i + 1]})["y"]
                                                                      for i in range(count)]))


def test_x86_artifact_ships_the_batch1_library(batch_artifact):
    """x86's free-batch artifact also holds the batch-1 library (static rows: AMX tiles, tile convs and
    attention's VNNI matmuls take only those), hash-checked like the other, and one-sample calls run it."""
    model = runtime.load(batch_artifact)
    sample = model.manifest["library"]["sample"]
    assert (batch_artifact / sample["file"]).is_file() and sample["sha256"] == runtime.artifact.sha256(
        batch_artifact / sample["file"])
    assert "R.Tensor((1, 3, 16, 16)" not in (batch_artifact / "model.relax.py").read_text()
    q = model.quantize_inputs({"x": _batch(1)})
    assert model._library(None, q) == (None, True)
    assert model._library(None, model.quantize_inputs({"x": _batch(2)})) == (None, False)


def test_one_worker_runs_a_batch_sample_by_sample(batch_artifact):
    """With one worker (a 1-CPU machine, TVM_NUM_THREADS=1) a batch still runs a sample a call,
    through the batch-1 library: the symbolic library's batch in one call ran MiniLM 1.3x slower
    a sample (benchmarks/results/shapes.md); `batch_in_one_call` asks for that call."""
    model = runtime.load(batch_artifact)
    model.batch_workers = 1
    q = model.quantize_inputs({"x": _batch(5)})
    assert model._slices(q) == [slice(i, i + 1) for i in range(5)]
    called = []
    library = model._library
    model._library = lambda size, qs: called.append(library(size, qs)) or called[-1]
    (y,) = model.run_integer(q)
    assert called == [(None, True)] * 5 and y.shape == (5, 10)
    model.batch_in_one_call, called[:] = True, []
    assert np.array_equal(model.run_integer(q)[0], y) and called == [(None, False)]


def test_batch_outside_range_refused(batch_artifact, tmp_path, capsys):
    model = runtime.load(batch_artifact)
    with pytest.raises(InputError, match=r"input 'x': shape \[9, 3, 16, 16\]: n = 9 is outside .* n in \[1, 8\]"):
        model.run({"x": _batch(9)})
    with pytest.raises(InputError, match=r"input 'x': shape \[2, 3, 16, 17\], expected \['n', 3, 16, 16\] with n"):
        model.run({"x": np.zeros((2, 3, 16, 17), np.float32)})
    np.savez(tmp_path / "x.npz", x=_batch(9))
    assert run_main([str(batch_artifact), "--input", str(tmp_path / "x.npz")]) == 2
    assert "n = 9 is outside the range" in capsys.readouterr().err
    np.savez(tmp_path / "x4.npz", x=_batch(4))
    assert run_main([str(batch_artifact), "--input", str(tmp_path / "x4.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    assert np.load(tmp_path / "y.npz")["y"].shape == (4, 10)


def test_batch_mixing_model_refused(tmp_path):
    """A reduction over axis 0 mixes the samples: refused, naming the binding, the op and the ONNX node."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("ReduceMax", ["r"], ["y"], name="over_batch", axes=[0], keepdims=1)],
        "mix", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mix.onnx")
    with pytest.raises(CompileError, match=r"symbolic batch: binding '\w+' \(relax.max, ONNX node 'over_batch' "
                                           r"\(ReduceMax\)\): it works along axis 0"):
        runtime.compile_model(tmp_path / "mix.onnx", "x86", tmp_path / "a", input_shapes={"x": (FreeDim(), 8)},
                              progress=False)
    assert not (tmp_path / "a").exists()


def test_transformer_block_batch(tmp_path):
    """MatMul + Softmax + LayerNorm + GELU with 16-bit residuals: reshapes that fold the batch into
    the rows ([n, 16, 64] -> [n*16, 64]) and batched attention; alone == in a batch, bit for bit."""
    from test_transformer import _block_model

    onnx_path = _block_model(tmp_path / "block.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 1, 16, 64)).astype(np.float32))
    art = runtime.compile_model(onnx_path, "x86", tmp_path / "block.artifact", calib=tmp_path / "calib.npz",
                                input_shapes={"x": (FreeDim(), 16, 64)}, progress=False)
    model = runtime.load(art)
    assert model.manifest["inputs"][0]["range"] == {"n": [1, None]}
    x = np.random.default_rng(2).standard_normal((5, 16, 64)).astype(np.float32)
    model.batch_in_one_call = True  # the batch in one call: the symbolic library, each sample alone: the batch-1 one
    (y,) = model.run_integer(model.quantize_inputs({"x": x}))
    alone = [model.run_integer(model.quantize_inputs({"x": x[i:i + 1]}))[0] for i in range(5)]
    assert y.shape == (5, 16, 64) and np.array_equal(y, np.concatenate(alone))


def _generalized(build, shape=(1, 16, 64), dtype="int8"):
    from conftest import relax_main
    from passes.generalize_batch import generalize_batch

    mod = relax_main(build, [np.zeros(shape, dtype)])
    return generalize_batch(mod, {"x0": ("n", 16)})["main"]


def test_reshape_folds_the_batch_into_rows():
    """[1, 16, 64] -> [16, 64] @ W -> [1, 16, 32] becomes [n, 16, 64] -> [n*16, 64] -> [n, 16, 32]; a split
    along a non-batch axis and its tuple items follow; the upper bound reaches the memory planner."""
    from passes.generalize_batch import dim_names

    w = relax.const(np.ones((64, 32), np.int8))

    def build(x):
        rows = R.matmul(R.reshape(x, [16, 64]), w, out_dtype="int32")
        halves = R.split(R.reshape(rows, [1, 16, 32]), 2, axis=2)
        return R.add(relax.TupleGetItem(halves, 0), relax.TupleGetItem(halves, 1))

    func = _generalized(build)
    text = func.script(show_meta=False)
    assert "R.Tensor((n * 16, 32)" in text and "R.shape([n * 16, 64])" in text
    assert dim_names(func.ret_ty) == ["n", 16, 16]
    assert int(func.attrs["tir_var_upper_bound"]["n"]) == 16


@pytest.mark.parametrize("build, needle", [
    (lambda x: R.sum(x, axis=[0]), r"relax.sum\): it works along axis 0"),
    (lambda x: R.permute_dims(x, [1, 0, 2]), r"relax.permute_dims\): it moves the batch"),
    (lambda x: R.tile(x, [2, 1, 1]), r"relax.tile\): it repeats along the batch"),
    (lambda x: R.concat([x, x], axis=0), r"relax.concat\): it works along axis 0"),
    # a sample's rows against a constant's leading axis (a constant of the same rank is repeated per sample:
    # test_hunt30.test_constant_per_window_repeats_per_sample)
    (lambda x: R.add(R.reshape(x, [16, 64]), relax.const(np.ones((2, 16, 64), np.int8))),
     r"relax.add\): (at batch n its shape would be|its result shape)"),
])
def test_sample_mixing_refused(build, needle):
    with pytest.raises(CompileError, match=r"symbolic batch: binding '\w+' \(" + needle):
        _generalized(build)


def test_gather_within_each_sample():
    """take(reshape(x, [16, 1]), idx[1, 16], axis=0) picks among a sample's own rows (as the
    Shiftmax mask does): at batch n the indices are offset per sample; compiled, equal per sample."""
    import tvm

    from targets import get_target

    idx = relax.const(np.arange(16)[::-1].reshape(1, 16).astype(np.int64))
    func = _generalized(lambda x: R.reshape(R.take(R.reshape(x, [16, 1]), idx, axis=0), [1, 16]), shape=(1, 16))
    spec = get_target("x86")
    target = spec.target()
    vm = relax.VirtualMachine(tvm.compile(tvm.IRModule({"main": func}), target=target,
                                          relax_pipeline=spec.relax_pipeline(target)), tvm.cpu())
    x = np.random.default_rng(0).integers(-128, 128, (3, 16)).astype(np.int8)
    assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x[:, ::-1])


@pytest.mark.slow
def test_aarch64_batch_equals_x86_under_qemu(batch_artifact, small_calib, tmp_path):
    """The same free-batch model built for aarch64 (no VNNI: TVM's loops, the same sample-by-sample
    schedules) gives, at batch 3 under qemu, the x86 artifact's integers bit for bit."""
    import shutil

    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu (targets/install_toolchains.sh)")
    from benchmarks.emulation import Aarch64Emulator

    path = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    arm = runtime.compile_model(path, "arm", tmp_path / "arm.artifact", calib=small_calib, progress=False,
                                input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)})
    x86 = runtime.load(batch_artifact)
    q = x86.quantize_inputs({"x": _batch(3, seed=7)})
    assert np.array_equal(Aarch64Emulator().run_integer(arm, q)[0], x86.run_integer(q)[0])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["riscv", "arm32"])
def test_plan_batch_equals_x86_under_qemu(batch_artifact, small_calib, tmp_path, target):
    """riscv64 and armv7 (no TVM runtime: a plan run by intq_exec) take a free batch too: the plan
    is the batch-1 module, run once per sample; at batch 5 under qemu it gives the x86 free-batch
    artifact's integers bit for bit."""
    import shutil

    from benchmarks.emulation import plan_launcher
    from runtime.plan import run_plan

    path = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    board = runtime.compile_model(path, target, tmp_path / "board.artifact", calib=small_calib, progress=False,
                                  input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)})
    manifest = runtime.artifact.read_manifest(board)
    assert manifest["inputs"][0]["shape"] == ["n", 3, 16, 16] and manifest["inputs"][0]["range"] == {"n": [1, 8]}
    launcher = plan_launcher(manifest["target"]["arch"])
    if shutil.which(launcher[0]) is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    x86 = runtime.load(batch_artifact)
    q = x86.quantize_inputs({"x": _batch(5, seed=9)})
    got = run_plan(board, q, launcher)[0]
    assert got.shape == (5, 10) and np.array_equal(got, x86.run_integer(q)[0])


def test_inputs_sharing_the_batch_must_agree():
    from runtime.model import _check_shape

    spec = {"shape": ["n", 128], "range": {"n": [1, 16]}}
    sizes: dict = {}
    _check_shape("input_ids", [4, 128], spec, sizes)
    with pytest.raises(InputError, match=r"'attention_mask': shape \[3, 128\]: n = 3, but another input has n = 4"):
        _check_shape("attention_mask", [3, 128], spec, sizes)


def test_batch_workers_never_crash(batch_artifact):
    """Batch workers set their TVM pool size through TVM_NUM_THREADS; set while another worker ran
    in TVM (which reads the environment), it segfaulted (a free-batch OriNet at batch 4 on two
    workers, every time). New worker threads each run, so that every run sets it again; in a child
    process, so that a crash fails this test instead of killing the suite."""
    import subprocess
    import sys

    script = f"""
import numpy as np, runtime
model = runtime.load({str(batch_artifact)!r})
x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
model.batch_workers = 1
want = model.run({{"x": x}})["y"]
for i in range(40):
    model.batch_workers = 2 + i % 3  # a new pool of new threads: each sets its pool size
    assert np.array_equal(model.run({{"x": x}})["y"], want)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).parent.parent))
    assert done.returncode == 0 and "ok" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_environment_changes_wait_for_runs():
    """The guard itself: a change of the environment (a worker's TVM_NUM_THREADS) waits until no run
    is in TVM, and a run that starts meanwhile waits for the change."""
    import threading
    import time

    from runtime.model import _Environment

    env, order, release = _Environment(), [], threading.Event()

    def change():
        with env.change():
            order.append("change")
            release.wait(5)
            order.append("change ends")

    def run():
        with env.read():
            order.append("run")

    changer = threading.Thread(target=change, daemon=True)
    with env.read():
        changer.start()
        time.sleep(0.2)
        order.append("first run done")
    time.sleep(0.2)
    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    time.sleep(0.2)
    assert order == ["first run done", "change"]  # the change waited; the new run waits for it
    release.set()
    changer.join(5)
    reader.join(5)
    assert order == ["first run done", "change", "change ends", "run"]


def test_plan_outputs_join_along_each_batch_axis():
    """intq_exec writes each sample's batch-1 outputs one after the other; a per-sample artifact's
    output whose batch is axis 1 ([T, 1, C] per sample) is joined there, not stacked on axis 0."""
    from runtime.plan import _joined

    samples = [np.arange(6, dtype=np.int8).reshape(3, 1, 2) + 10 * k for k in range(4)]
    flat = np.concatenate([s.ravel() for s in samples])
    assert np.array_equal(_joined(flat, [3, 1, 2], 1), np.concatenate(samples, axis=1))
    assert np.array_equal(_joined(flat, [3, 1, 2], 0), np.concatenate(samples, axis=0))
    assert _joined(np.array([7], np.int32), [], 0).shape == ()


def test_four_bit_free_batch_runs_per_sample(tmp_path, small_calib):
    """4-bit kernels are compiled for batch 1 (it was refused): with a free batch the artifact runs
    its batch-1 module per sample. This file's reshapes fix the batch at 1, so float onnxruntime
    cannot run a batch of two: its outputs are joined on axis 0, where each has its 1."""
    from runtime.mixed import Precision

    path = small_cnn(tmp_path / "dyn.onnx", dynamic_batch=True)
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "b4", calib=small_calib, progress=False,
                                             input_shapes={"x": (FreeDim("n", 1, 8), 3, 16, 16)},
                                             precision=Precision(bits="4")))
    assert art.manifest["batch"] == "per-sample" and art.manifest["quantization"]["weight_bits"] == 4
    x = _batch(3, seed=4)
    alone = np.concatenate([art.run_integer(art.quantize_inputs({"x": x[i:i + 1]}))[0] for i in range(3)])
    assert np.array_equal(art.run_integer(art.quantize_inputs({"x": x}))[0], alone)


def test_batch_of_views_refused_naming_the_file(tmp_path):
    """A batch that holds 4 views of one item (ICLabel: Reshape(x, [4, -1]), a mean over them) cannot
    run at batch 1: the refusal names the user's file (not intq's temporary copy) and says why."""
    n = helper.make_node
    graph = helper.make_graph(
        [n("Relu", ["x"], ["r"]), n("Reshape", ["r", "shape"], ["g"]), n("Transpose", ["g"], ["gt"], perm=[1, 0]),
         n("Reshape", ["gt", "views"], ["g3"]), n("ReduceMean", ["g3"], ["y"], axes=[2], keepdims=0)],
        "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 8])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [4, -1]),
         helper.make_tensor("views", TensorProto.INT64, [3], [-1, 8, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "views.onnx")
    with pytest.raises(CompileError) as err:
        runtime.compile_model(tmp_path / "views.onnx", "x86", tmp_path / "a", progress=False,
                              input_shapes={"x": (FreeDim("n", 4, 32), 8)})
    text = str(err.value)
    assert str(tmp_path / "views.onnx") in text and "intq-onnx-" not in text and "cannot run at batch 1" in text
