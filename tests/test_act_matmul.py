"""Activation x activation matmuls (attention's Q.K^T and P.V: targets/act_matmul.py) on every x86
kernel family: the right recipe in the exported library, and, where this CPU runs the family,
results equal to the NumPy reference bit for bit (extreme operands, padded columns, K tails)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import relax_main

from passes import reference as ref
from targets import get_target
from targets.kernel_family import maddubs_safe_range
from targets.x86 import missing_features

rng = np.random.default_rng(3)

# fleet -> (family, kernel of 8-bit operands, its instruction and register; int16 kernel, ...)
FAMILIES = {
    "x86-64-v4+avx512vnni": ("avx512-vnni", "vnni_act_dense", "vpdpbusd", "zmm", "wvnni_act_dense", "vpdpwssd", "zmm"),
    "x86-64-v3+avxvnni": ("avx-vnni", "avxvnni_act_dense", "vpdpbusd", "ymm", "wavxvnni_act_dense", "vpdpwssd", "ymm"),
    "x86-64-v4": ("avx512bw", "wmaddwd512_act_dense", "vpmaddwd", "zmm", "wmaddwd512_act_dense", "vpmaddwd", "zmm"),
    "x86-64-v3": ("avx2", "wmaddwd_act_dense", "vpmaddwd", "ymm", "wmaddwd_act_dense", "vpmaddwd", "ymm"),
}

# (A shape, B shape, A dtype, B dtype): MiniLM-like heads, ViT-like 257 tokens (padded columns,
# K tails of 1 and 3), uint8 probabilities, a 2-D right operand
CASES = [
    ((1, 4, 16, 32), (1, 4, 32, 48), "int8", "int8"),  # Q.K^T, N padded 48 -> 64
    ((1, 4, 16, 48), (1, 4, 48, 32), "int16", "int16"),  # P.V: 15-bit probabilities, 16-bit V
    ((1, 2, 9, 33), (1, 2, 33, 20), "int16", "int8"),  # K tail of one (pairs), odd rows
    ((2, 7, 35), (2, 35, 16), "int8", "int8"),  # K tail of 3 with the +128 shift
    ((1, 2, 8, 64), (1, 2, 64, 16), "uint8", "int8"),  # uint8 probabilities: no shift
    ((6, 40), (40, 24), "uint8", "int16"),
    ((1, 2, 37, 37), (1, 2, 37, 16), "int16", "int16"),  # 37 tokens (no 2+ row tile): rows padded to 40
]


def _operand(dtype: str, shape, nonnegative: bool = False) -> np.ndarray:
    lo, hi = ref.kernels.INT_RANGE[dtype]
    lo = 0 if nonnegative else lo
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    x.flat[::7] = hi  # both extremes, often
    x.flat[3::7] = lo
    return x


def _inputs(sa, sb, da, db):
    # 16-bit x 16-bit: probabilities are >= 0 and the int32 sums must not overflow (as the lowering proves)
    a = _operand(da, sa, nonnegative=da == "int16" and db == "int16")
    if da == "int16" and db == "int16":
        a //= sa[-1]
    return a, _operand(db, sb)


def _compile(a, b, cpu, tmp_path):
    """(library path, {function: disassembly}) of int32 matmul(a, b) built for the fleet `cpu`."""
    import tvm
    from tvm import relax

    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    mod = relax_main(lambda x, y: relax.op.matmul(x, y, out_dtype="int32"), [a, b])
    ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / f"{cpu}.so"
    ex.export_library(str(lib))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    return lib, dict(re.findall(r"<(\w+)>:\n(.*?)(?=\n\n|\Z)", asm, re.S))


def _uses(functions: dict[str, str], kernel: str, op: str, register: str) -> bool:
    return any(re.search(rf"\b{op}\b[^\n]*%{register}", text) for name, text in functions.items() if kernel in name)


@pytest.mark.parametrize("cpu", list(FAMILIES))
@pytest.mark.parametrize("sa,sb,da,db", CASES)
def test_activation_matmul_kernel(cpu, sa, sb, da, db, tmp_path):
    """The family's recipe is in the library; where this CPU runs it, the result is exact."""
    import tvm
    from tvm import relax

    a, b = _inputs(sa, sb, da, db)
    lib, functions = _compile(a, b, cpu, tmp_path)
    _, byte_kernel, byte_op, reg, word_kernel, word_op, _ = FAMILIES[cpu]
    byte = da in ("int8", "uint8") and db == "int8"
    kernel, op = (byte_kernel, byte_op) if byte else (word_kernel, word_op)
    assert _uses(functions, kernel, op, reg), f"{kernel} does not run {op} on {reg}"
    if reg == "ymm":
        assert not any("zmm" in text for text in functions.values())
    assert not _uses(functions, "", "vpmaddubsw", reg)  # run-time int8 can never prove it safe
    if missing_features(get_target("x86", cpu=cpu).features):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_array_equal(got, ref.matmul_acc(a, b))


@pytest.mark.parametrize("cpu", list(FAMILIES))
@pytest.mark.parametrize("sa,sb,da,db", [((4, 16, 35), (4, 35, 20), "int8", "int8"),  # K tail, shift, padded N
                                         ((2, 9, 32), (2, 32, 16), "int16", "int16"),
                                         ((2, 37, 32), (2, 32, 16), "int16", "int16")])  # rows padded to 40
def test_free_batch_takes_the_kernel(cpu, sa, sb, da, db, tmp_path):
    """A free batch (a symbolic leading dim, as the free-batch library has it) takes the family's
    kernel too, looped over the samples; exact at batch 3 where this CPU runs the family. Before,
    such matmuls ran the generic loops (MiniLM's attention at batch 8: 3.3 ms a sample, now 1.4)."""
    import tvm
    from tvm import relax

    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    x, y = (relax.Var(name, relax.TensorType([n, *shape[1:]], dtype)) for name, shape, dtype in (("x", sa, da), ("y", sb, db)))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, y, out_dtype="int32"))
        bb.emit_func_output(out)
    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / f"{cpu}.so"
    ex.export_library(str(lib))
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    _, byte_kernel, byte_op, reg, word_kernel, word_op, _ = FAMILIES[cpu]
    kernel, op = (byte_kernel, byte_op) if da == "int8" else (word_kernel, word_op)
    # the kernel's loop body may sit in an unnamed local function: the instruction anywhere in the library
    assert f"_{kernel}" in asm and re.search(rf"\b{op}\b[^\n]*%{reg}", asm), f"no {kernel} running {op} on {reg}"
    if missing_features(spec.features):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    a, b = _inputs((3, *sa[1:]), (3, *sb[1:]), da, db)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy(), ref.matmul_acc(a, b))


def test_maddubs_range_rule():
    assert not maddubs_safe_range(255, -128, 127)  # uint8 or shifted int8 x int8: may saturate
    assert maddubs_safe_range(128, -128, 127)  # 128 * 2 * 128 = 32768: the negative side just fits
    assert not maddubs_safe_range(129, -128, 127)


def test_broadcast_batch_keeps_the_generic_kernel():
    """B shared by all heads through a broadcast batch dim is left to the generic loops."""
    import tvm
    from tvm import relax

    from targets.cpu_pipeline import cpu_lowering_passes

    a, b = np.zeros((1, 4, 16, 32), np.int8), np.zeros((1, 1, 32, 48), np.int8)
    target = get_target("x86", cpu="x86-64-v4+avx512vnni").target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(
            relax_main(lambda x, y: relax.op.matmul(x, y, out_dtype="int32"), [a, b]))
    names = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not any("act_dense" in n for n in names) and any("matmul" in n for n in names)


def test_attention_operands_packed_from_their_requantization():
    """K^T and V as attention makes them (a requantized int32 projection, transposed): the pack
    kernels inline that producer (rows or columns contiguous), exact on this CPU's family."""
    import tvm
    from tvm import relax

    op = relax.op
    t, h, d = 33, 2, 32
    q = _operand("int8", (1, h, t, d))
    p = _operand("int16", (1, h, t, t), nonnegative=True) // t
    k, v = (rng.integers(-2**20, 2**20, (1, t, h, d)).astype(np.int32) for _ in range(2))

    def requant(x, axes, dtype):
        lo, hi = ref.kernels.INT_RANGE[dtype]
        y = op.right_shift(op.add(op.multiply(op.astype(op.permute_dims(x, axes), "int64"), relax.const(3, "int64")),
                                  relax.const(128, "int64")), relax.const(8, "int64"))
        return op.astype(op.clip(y, lo, hi), dtype)

    def build(q_, k_, p_, v_):
        return relax.Tuple([op.matmul(q_, requant(k_, [0, 2, 3, 1], "int8"), out_dtype="int32"),
                            op.matmul(p_, requant(v_, [0, 2, 1, 3], "int16"), out_dtype="int32")])

    def requant_ref(x, axes, dtype):
        return np.clip((x.transpose(axes).astype(np.int64) * 3 + 128) >> 8, *ref.kernels.INT_RANGE[dtype])

    spec = get_target("x86")
    target = spec.target()
    ex = tvm.compile(relax_main(build, [q, k, p, v]), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a) for a in (q, k, p, v)])
    np.testing.assert_array_equal(got[0].numpy(), ref.matmul_acc(q, requant_ref(k, (0, 2, 3, 1), "int8")))
    np.testing.assert_array_equal(got[1].numpy(), ref.matmul_acc(p, requant_ref(v, (0, 2, 1, 3), "int16")))


@pytest.mark.parametrize("a_shape,b_shape", [((3,), (3,)), ((2, 3, 4, 5), (5,))])
def test_matmul_with_a_vector_operand_compiles(tmp_path, a_shape, b_shape):
    """A MatMul whose second operand is 1-D (a dot product; ONNX's test_matmul_1d_1d / _4d_1d): the
    sensitivity search's MAC count read the vector's second-to-last dim (IndexError, a traceback)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    import runtime

    out = list(a_shape[:-1])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "dot",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape)),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, list(b_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((9, *a_shape)).astype(np.float32), rng.standard_normal((9, *b_shape)).astype(np.float32)
    np.savez(tmp_path / "c.npz", a=a[:8], b=b[:8])
    art = runtime.load(runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "a", calib=tmp_path / "c.npz",
                                             progress=False))
    assert art.manifest["integer_only"] is True
    ours = art.run({"a": a[8], "b": b[8]})["y"]
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"a": a[8], "b": b[8]})[0]
    assert np.shape(ours) == np.shape(want)
    np.testing.assert_allclose(ours, want, atol=0.05 * np.abs(want).max())
