"""AVX2 and AVX-VNNI int8 kernels (targets/kernel_family.py, vnni.py) built for x86-64-v3 fleets:
the family chosen from the target, the vpmaddubsw saturation proof, bit-exact kernels on
random and worst-case inputs, the instructions in the exported library, and a small model
equal bit for bit to the host build. Code this CPU cannot run (AVX-VNNI, AVX-512) is compiled
and its instructions checked, and the run is skipped, saying so."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import build_for_cpu, run_library

from passes import reference as ref
from passes.lowering import emit
from targets import get_target
from targets.kernel_family import kernel_family, maddubs_safe
from targets.x86 import missing_features

V3, V3_VNNI = "x86-64-v3", "x86-64-v3+avxvnni"
pytestmark = pytest.mark.skipif(bool(missing_features([V3])), reason="this CPU lacks AVX2")
rng = np.random.default_rng(11)


def _runnable(cpu: str) -> None:
    """Skip the rest of a test (after its compile-time checks) where this CPU lacks `cpu`'s features."""
    level, *extras = cpu.split("+")
    if missing_features([level, *("+" + e for e in extras)]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")


def _build(build, inputs, cpu: str, tmp_path):
    """Compile `build(*inputs)` for the fleet `cpu`: (run() -> output here, disassembly)."""
    lib, functions = build_for_cpu(build, inputs, cpu, tmp_path)

    def run():
        _runnable(cpu)
        return run_library(lib, inputs)

    return run, functions


def _uses(functions: dict[str, str], kernel: str, op: str, register: str = "ymm") -> bool:
    """A function whose name has `kernel` (maddwd_dense_compute_) runs `op` on `register`s."""
    return any(re.search(rf"\b{op}\b[^\n]*%{register}", text) for name, text in functions.items()
               if kernel in name)


def _no_avx512(functions: dict[str, str]) -> bool:
    return not any("zmm" in text for text in functions.values())


class _Pointwise:
    strides, padding, dilation, groups = (1, 1), (0, 0, 0, 0), (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


def _case(kind, shape, x_dtype, w=None):
    """(build, inputs, reference accumulator) of an int8 matmul or pointwise conv; the
    activations hold both extremes of their dtype."""
    lo, hi = ref.kernels.INT_RANGE[x_dtype]
    if kind == "dense":
        m, k, n = shape
        x = rng.integers(lo, hi + 1, (1, m, k)).astype(x_dtype)
        x.flat[:2] = lo, hi
        w = rng.integers(-128, 128, (k, n)).astype(np.int8) if w is None else w
        return (lambda a: emit.matmul_acc(a, w)), [x], ref.matmul_acc(x, w)
    c, h, wd, o = shape
    x = rng.integers(lo, hi + 1, (1, c, h, wd)).astype(x_dtype)
    x.flat[:2] = lo, hi
    w = rng.integers(-128, 128, (o, c, 1, 1)).astype(np.int8) if w is None else w
    return (lambda a: emit.conv2d_acc(a, w, _Pointwise)), [x], ref.conv2d_acc(x, w, (1, 1), (0, 0, 0, 0))


def test_family_from_target_features():
    names = {cpu: kernel_family(get_target("x86", cpu=cpu).target()).name
             for cpu in ("x86-64", V3, V3_VNNI, "x86-64-v4", "x86-64-v4+avx512vnni")}
    assert names == {"x86-64": "generic", V3: "avx2", V3_VNNI: "avx-vnni", "x86-64-v4": "avx512bw",
                     "x86-64-v4+avx512vnni": "avx512-vnni"}
    assert kernel_family(get_target("arm").target()).name == "generic"


def test_saturation_rule():
    """a_max * (w0+ + w1+) <= 32767 and a_max * (w0- + w1-) <= 32768 for every adjacent pair."""
    ok = lambda *pair: maddubs_safe(np.array([pair], np.int8), 255)  # noqa: E731
    assert ok(64, 64) and ok(-64, -64) and ok(127, -128) and ok(-128, 0) and ok(0, 127)
    assert not ok(64, 65) and not ok(-65, -64) and not ok(127, 127) and not ok(-128, -1)
    assert maddubs_safe(np.array([[127, 127]], np.int8), 128)  # a smaller activation bound proves more
    # an odd K: the last weight pairs with the padding's zero (it raised a reshape error: every AVX2 compile of
    # a matmul with an odd K, 7 x 49 in the bit-exact tests, failed there)
    assert maddubs_safe(np.array([[64, 64, 127]], np.int8), 255) and not maddubs_safe(np.array([[64, 65, 1]]), 255)


@pytest.mark.parametrize("cpu,kind,shape,x_dtype,kernel", [
    (V3, "dense", (5, 36, 24), "int8", "maddwd_dense"),  # odd rows, N a multiple of 8 only
    (V3, "dense", (12, 7, 48), "int8", "maddwd_dense"),  # an odd K, zero-padded
    (V3, "conv", (6, 10, 16, 20), "uint8", "maddwd_conv_lanes_pixels"),  # C = 6: int16 pairs
    (V3, "conv", (32, 3, 3, 48), "int8", "maddwd_conv_lanes_out"),  # rows of 3 (8: most of it padding): lanes over outputs
    (V3, "conv", (32, 7, 7, 48), "int8", "maddwd_conv_lanes_pixels"),  # rows of 7 padded to 8
    (V3_VNNI, "dense", (5, 36, 24), "int8", "avxvnni_dense"),
    (V3_VNNI, "conv", (12, 28, 28, 20), "uint8", "avxvnni_conv_lanes_pixels"),
    (V3_VNNI, "conv", (32, 3, 3, 48), "int8", "avxvnni_conv_lanes_out"),
    ("x86-64-v4", "conv", (32, 7, 7, 48), "int8", "maddwd512_conv_lanes_out"),  # AVX-512 without VNNI
])
def test_fleet_kernel_is_exact(cpu, kind, shape, x_dtype, kernel, tmp_path):
    """Random int8 weights (no saturation proof: the int16 kernel on plain AVX2)."""
    build, inputs, want = _case(kind, shape, x_dtype)
    run, functions = _build(build, inputs, cpu, tmp_path)
    if cpu == "x86-64-v4":
        assert _uses(functions, kernel, "vpmaddwd", "zmm")
    else:
        assert _uses(functions, kernel, "vpmaddwd" if cpu == V3 else "vpdpbusd") and _no_avx512(functions)
        assert not _uses(functions, "", "vpmaddubsw")
    np.testing.assert_array_equal(run(), want)


def _edge_weights(k: int, n: int) -> np.ndarray:
    """[K, N] int8 whose K pairs sit exactly on the proof's limit: (64, 64), (-64, -64),
    (127, -128), (-128, 0), (0, 127) ... (255 * 128 = 32640 <= 32767)."""
    pairs = np.array([(64, 64), (-64, -64), (127, -128), (-128, 0), (0, 127), (-128, 127)], np.int8)
    w = pairs[rng.integers(0, len(pairs), (k // 2, n))]  # [K/2, N, 2]
    return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(k, n))


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_worst_case_inputs_are_exact(x_dtype, tmp_path):
    """Activations at 255 (uint8, or int8 127 shifted to 255) with weights at the proof's limit
    take vpmaddubsw and stay exact; -128/127 weights are refused by the proof and take the
    int16 vpmaddwd kernel, also exact."""
    hi = ref.kernels.INT_RANGE[x_dtype][1]
    edge = _edge_weights(64, 32)
    extreme = np.where(rng.random((64, 32)) < 0.5, -128, 127).astype(np.int8)
    assert maddubs_safe(edge.T, 255) and not maddubs_safe(extreme.T, 255)
    x = np.full((1, 8, 64), hi, x_dtype)
    x[0, 1::2, ::3] = ref.kernels.INT_RANGE[x_dtype][0]  # some rows with the other extreme
    both = lambda a: emit.matmul_acc(a, edge), lambda a: emit.matmul_acc(a, extreme)  # noqa: E731
    run, functions = _build(lambda a: _concat(both[0](a), both[1](a)), [x], V3, tmp_path)
    assert _uses(functions, "maddubs_dense", "vpmaddubsw") and _uses(functions, "maddwd_dense", "vpmaddwd")
    want = np.concatenate([ref.matmul_acc(x, edge), ref.matmul_acc(x, extreme)], -1)
    np.testing.assert_array_equal(run(), want)


def _concat(a, b):
    from tvm.relax.op import concat

    return concat([a, b], axis=-1)


@pytest.mark.parametrize("cpu", [V3, V3_VNNI])
def test_small_model_matches_host_build(cpu, tmp_path, small_cnn_path, small_calib, small_artifact):
    import runtime
    from runtime import compile_model

    fleet = compile_model(small_cnn_path, "x86", tmp_path / "fleet.artifact", calib=small_calib, cpu=cpu,
                          progress=False)
    _runnable(cpu)  # loading refuses an artifact for features this CPU lacks (tests/test_runtime.py)
    host, other = runtime.load(small_artifact), runtime.load(fleet)
    assert other.manifest["target"]["kernel_family"] == {V3: "avx2", V3_VNNI: "avx-vnni"}[cpu]
    assert host.manifest["target"]["kernel_family"] == kernel_family(get_target("x86").target()).name
    x = np.random.default_rng(5).standard_normal((4, 1, 3, 16, 16)).astype(np.float32)
    for sample in x:
        q = host.quantize_inputs({"x": sample})
        np.testing.assert_array_equal(other.run_integer(q)[0], host.run_integer(q)[0])
