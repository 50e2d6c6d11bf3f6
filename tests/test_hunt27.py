"""Hunt 27 (time series, video, point clouds, diffusion UNets, recommenders, graph nets): each fix for its family,
on small graphs built here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sum_of_heads(path, terms: int):
    """x [1, 16] -> `terms` linear heads, each sliced to 24 columns, summed one by one (N-BEATS' forecast sum)."""
    rng = np.random.default_rng(0)
    inits, nodes, acc = [], [], None
    for i in range(terms):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (16, 32)).astype(np.float32), f"w{i}"))
        for name, v in (("st", [0]), ("en", [24]), ("ax", [1])):
            inits.append(numpy_helper.from_array(np.array(v, np.int64), f"{name}{i}"))
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Slice", [f"m{i}", f"st{i}", f"en{i}", f"ax{i}"], [f"s{i}"])]
        if acc is None:
            acc = f"s{i}"
        else:
            nodes.append(helper.make_node("Add", [acc, f"s{i}"], [f"a{i}"]))
            acc = f"a{i}"
    graph = helper.make_graph(nodes, "sum_of_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info(acc, TensorProto.FLOAT, [1, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_long_sum_of_requantized_terms_compiles_quickly(tmp_path):
    """N-BEATS (nbeats-pytorch, 6 blocks) sums every block's forecast into the running one: one chain of
    single-use requantized adds, which FuseOps made one kernel whose nested expression TVM's StmtSimplify
    took exponential time over (6 terms 86 s, N-BEATS > 15 min). Cut every 4 nested requantizations
    (targets/cut_requant_chains.py): 8 terms compile in seconds, the sum at float's cosine."""
    model = _sum_of_heads(str(tmp_path / "sum8.onnx"), 8)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(8, 1, 16)).astype(np.float32))
    script = textwrap.dedent(f"""
        from runtime.compiler import compile_model
        compile_model({model!r}, output={str(tmp_path / 'sum8.artifact')!r}, calib={str(tmp_path / 'calib.npz')!r},
                      progress=False)
    """)
    start = time.time()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=90, capture_output=True)
    assert time.time() - start < 90
    import runtime
    x = rng.normal(size=(1, 16)).astype(np.float32)
    y = runtime.load(tmp_path / "sum8.artifact").run({"x": x})
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert _cos(next(iter(y.values())) if isinstance(y, dict) else y[0], ref) > 0.99


def test_cut_leaves_residual_chains_whole():
    """A chain through a value with two readers (a residual net's skip tensor) is not cut; a single-use chain of
    more than 4 requantizations is, once per 4 (at 3 an LSTM's steps were cut too: 99 -> 162 planned views,
    test_recurrent)."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R, tirx as T

    from targets.cut_requant_chains import _cuts

    @T.prim_func(private=True, s_tir=True)
    def windowed_requant(a: T.Buffer((4,), "int32"), b: T.Buffer((4,), "int32")):
        T.func_attr({"op_pattern": 0})
        for i in range(4):
            with T.sblock("c"):
                vi = T.axis.spatial(4, i)
                b[vi] = a[vi] + 1

    def chain(readers: int):
        bb = relax.BlockBuilder()
        gv = bb.add_func(windowed_requant, "windowed_requant")
        x = relax.Var("x", R.Tensor((4,), "int32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                v, keep = x, []
                for _ in range(7):
                    v = bb.emit(relax.call_tir(gv, [v], R.Tensor((4,), "int32")))
                    for _ in range(readers - 1):
                        keep.append(bb.emit(relax.call_tir(gv, [v], R.Tensor((4,), "int32"))))
                out = bb.emit_output(v)
            bb.emit_func_output(out)
        mod = bb.get()
        return mod, mod["main"].body.blocks[0]

    mod, block = chain(1)
    assert _cuts(mod, block) == [3]
    mod, block = chain(2)
    assert _cuts(mod, block) == []
