"""Shared fixtures: small real ONNX graphs and a helper that compiles Relax for the host."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def relax_main(build, inputs: list[np.ndarray], free_batch: bool = False):
    """An IRModule whose `main(*inputs)` returns `build(*param vars)`; with `free_batch`, every input's
    leading dim is one symbolic `n` (as a free-batch artifact's library has it)."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    lead = lambda a: [n, *a.shape[1:]] if free_batch else list(a.shape)  # noqa: E731
    params = [relax.Var(f"x{i}", relax.TensorType(lead(a), str(a.dtype))) for i, a in enumerate(inputs)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    return bb.get()


def unscheduled_kernels(build, inputs: list[np.ndarray]) -> list[str]:
    """Names of the kernels of `main(*inputs)` that the project's x86 lowering left unscheduled (a
    schedule that raised falls back to TVM's scalar loops in silence)."""
    import tvm

    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    target = get_target("x86").target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, inputs))
    kernels = [(gv.name_hint, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels
    return [name for name, f in kernels if not (f.attrs and "tirx.is_scheduled" in f.attrs)]


def run_relax(build, inputs: list[np.ndarray], cpu: str | None = None) -> np.ndarray:
    """Build `main(*inputs)` from `build(*vars) -> expr`, compile it for the x86 host target (or
    the fleet `cpu`) with the project's pipeline (its default schedules included), run it."""
    import tvm
    from tvm import relax

    from targets import get_target

    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    ex = tvm.compile(relax_main(build, inputs), target=target, relax_pipeline=spec.relax_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def build_for_cpu(build, inputs: list[np.ndarray], cpu: str, tmp_path, free_batch: bool = False):
    """Compile `main(*inputs)` from `build` for the x86 fleet `cpu` (`free_batch`: the inputs' leading dim
    symbolic) and export it: (library path, {function name: its disassembly})."""
    import re
    import subprocess

    import tvm

    from targets import get_target

    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    ex = tvm.compile(relax_main(build, inputs, free_batch), target=target, relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / f"lib{'_n' if free_batch else ''}{len(list(tmp_path.glob('lib*.so')))}.so"
    ex.export_library(str(lib))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    return lib, dict(re.findall(r"<(\w+)>:\n(.*?)(?=\n\n|\Z)", asm, re.S))


def run_library(lib, inputs: list[np.ndarray]) -> np.ndarray:
    """Run an exported Relax library's `main` here."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def assert_flat_patches_equal(n: int, c: int, h: int, w: int, k, dtype: str, dilation=(1, 1)) -> None:
    """`same_patches_func` (flat copies) of a stride-1 `same` conv equals `patches_te`, which tests every element."""
    import tvm
    from tvm import te

    from passes.conv_as_pointwise import patch_rows, patches_te, same_patches_func
    from targets import get_target
    from targets.cpu_schedules import schedule_int_matmul_cpu

    kh, kw = (k, k) if isinstance(k, int) else k
    top, left = dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2
    rows, target = patch_rows(c, kh, kw), get_target("x86").target()
    xt = te.placeholder((n, c, h, w), dtype, name="x")
    func = te.create_prim_func([xt, patches_te(xt, rows, (kh, kw), (1, 1), (top, left) * 2, dilation)])
    with target:
        want_mod = schedule_int_matmul_cpu(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    want_fn = tvm.compile(want_mod, target=target)["main"]
    got = same_patches_func(n, c, h, w, rows, kh, kw, top, left, dtype, dilation)
    got_fn = tvm.compile(tvm.IRModule({"main": got.with_attr("global_symbol", "main")}), target=target)["main"]
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor((rng.integers(-100, 100, (n, c, h, w)) if dtype != "float32"
                            else rng.standard_normal((n, c, h, w))).astype(dtype))
    want, out = (tvm.runtime.tensor(np.full((n, rows, h, w), fill, dtype)) for fill in (0, 7))
    want_fn(x, want)
    got_fn(x, out)
    np.testing.assert_array_equal(out.numpy(), want.numpy())


def without_sample_library(model):
    """`model` with its batch-1 library (a free batch on x86) set aside, so that one-sample calls run
    the symbolic-batch library too: what other targets run, and x86 where `batch_in_one_call` is set."""
    model._libs = {key: lib for key, lib in model._libs.items() if not key[1]}
    return model


def compiled_against_onnxruntime(path, feeds: list[dict], tmp_path, calibrate: int = 4):
    """Compile the ONNX file `path` integer-only, calibrated on the first `calibrate` of `feeds`; yields
    (ours, onnxruntime's) outputs, by name, on each of the others."""
    import onnxruntime as ort

    import runtime

    np.savez(tmp_path / "c.npz", **{k: np.stack([f[k] for f in feeds[:calibrate]]) for k in feeds[0]})
    art = runtime.load(runtime.compile_model(path, "x86", tmp_path / "a", calib=tmp_path / "c.npz", progress=False))
    assert art.manifest["integer_only"] is True
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for feed in feeds[calibrate:]:
        yield art.run(feed), dict(zip(names, session.run(None, feed)))


def saved_model(nodes, inputs, outputs, inits, path, opset: int = 17, name: str = "graph") -> str:
    """An onnx.helper graph of `nodes` saved as a model at `path` (IR version 8); its path as text."""
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def small_cnn(path, dynamic_batch: bool = False, extra_nodes=()) -> str:
    """A small CNN that uses every op the integer path supports (Conv incl. depthwise and
    strided, BatchNorm, Relu, Clip, MaxPool, residual Add, Concat, Pad, Transpose,
    Reshape, Squeeze, GlobalAveragePool, Flatten, Gemm)."""
    rng = np.random.default_rng(0)

    def w(*shape, scale=0.3):
        return rng.standard_normal(shape).astype(np.float32) * scale

    inits = [
        _init("w1", w(8, 3, 3, 3)), _init("b1", w(8, scale=0.1)),
        _init("bn_g", rng.uniform(0.5, 1.5, 8)), _init("bn_b", w(8, scale=0.1)),
        _init("bn_m", w(8, scale=0.1)), _init("bn_v", rng.uniform(0.5, 1.5, 8)),
        _init("wd", w(8, 1, 3, 3)), _init("lo", 0.0), _init("hi", 6.0),
        _init("w2", w(8, 8, 1, 1)), _init("w3", w(4, 8, 3, 3)),
        _init("wfc", w(10, 12)), _init("bfc", w(10, scale=0.1)),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array([1, 12, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.array([2], np.int64), "axes2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd"], ["dw"], name="dwconv", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["r6"], name="relu6"),
        helper.make_node("Conv", ["r6", "w2"], ["pw"], name="pwconv"),
        helper.make_node("Add", ["pw", "r1"], ["res"], name="residual"),
        helper.make_node("MaxPool", ["res"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Pad", ["mp", "pads"], ["pd"], name="pad"),
        helper.make_node("Conv", ["pd", "w3"], ["c3"], name="conv3"),
        helper.make_node("Transpose", ["c3"], ["t1"], name="transpose", perm=[0, 1, 3, 2]),
        helper.make_node("Concat", ["t1", "mp"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape3"], ["rs"], name="reshape"),
        helper.make_node("Squeeze", ["rs", "axes2"], ["sq"], name="squeeze"),
        helper.make_node("Flatten", ["gap"], ["fl"], name="flatten"),
        helper.make_node("Add", ["fl", "sq"], ["feat"], name="add_features"),
        helper.make_node("Gemm", ["feat", "wfc", "bfc"], ["y"], name="fc", transB=1),
        *extra_nodes,
    ]
    batch = "N" if dynamic_batch else 1
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])]
    outputs += [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [1, 10]) for n in extra_nodes]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [batch, 3, 16, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="session")
def small_cnn_path(tmp_path_factory) -> str:
    return small_cnn(tmp_path_factory.mktemp("models") / "small_cnn.onnx")


@pytest.fixture(scope="session")
def small_calib(tmp_path_factory) -> str:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=rng.standard_normal((16, 1, 3, 16, 16)).astype(np.float32))
    return str(path)


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory, small_cnn_path, small_calib) -> str:
    from runtime import compile_model

    out = tmp_path_factory.mktemp("art") / "small.artifact"
    return str(compile_model(small_cnn_path, "x86", out, calib=small_calib, progress=False))


def onnx_lstm(path, steps: int, hidden: int, inputs: int, rng) -> None:
    """One ONNX LSTM layer (what DynamicQuantizeLSTM becomes on import; the frontend unrolls it step by step),
    weights drawn from `rng`: x [steps, 1, inputs] -> y [steps, 1, 1, hidden]."""
    w = rng.normal(0, 1 / np.sqrt(inputs), (1, 4 * hidden, inputs)).astype(np.float32)
    r = rng.normal(0, 1 / np.sqrt(hidden), (1, 4 * hidden, hidden)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["y", "h", "c"], hidden_size=hidden)], "lstm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, 1, hidden])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
