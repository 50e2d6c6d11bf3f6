"""AVX512-VNNI kernels (targets/vnni.py): the rewrite fires where it should, and the compiled
kernels (requantization epilogue and residual branch fused) equal the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import relax_main, run_relax, unscheduled_kernels
from tvm.relax.op import add

from passes import reference as ref
from passes.lowering import emit
from targets import get_target

pytestmark = pytest.mark.skipif("+avx512vnni" not in get_target("x86").features,
                                reason="this CPU has no AVX512-VNNI")
VNNI_FLEET = "x86-64-v4+avx512vnni"  # not the host: on an AMX host its tiles take the dense layers
rng = np.random.default_rng(7)


def _lowered_names(build, inputs) -> str:
    """Names and TIR of the kernels the project's CPU lowering makes of `build`."""
    import tvm

    from targets.cpu_pipeline import cpu_lowering_passes

    target = get_target("x86", cpu=VNNI_FLEET).target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, inputs))
    return "\n".join(f"{gv.name_hint}\n{f.script()}" for gv, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc))


def _operand(dtype, shape):
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    x.flat[:2] = [lo, hi]
    return x


class _Pointwise:
    strides, padding, dilation, groups = (1, 1), (0, 0, 0, 0), (1, 1), 1
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape,kernel", [
    ((1, 64, 96, 48), "dense"),  # a transformer dense layer: rows x K @ K x N
    ((1, 1, 64, 1000), "dense"),  # a classifier: 1000 columns padded to whole vectors, sliced back
    ((1, 37, 64, 40), "dense"),  # 37 tokens (no 2+ row tile): rows padded to 40 and columns to 48, sliced back
    ((1, 16, 28, 28, 24), "conv_lanes_pixels"),  # big image: 16 pixels per vector
    ((1, 32, 7, 7, 48), "conv_lanes_out"),  # small image: 16 output channels per vector
])
def test_vnni_kernel_with_epilogue_is_exact(shape, kernel, x_dtype):
    if kernel == "dense":
        _, m, k, n = shape
        x, w = _operand(x_dtype, (1, m, k)), _operand("int8", (k, n))
        acc_ref, acc = ref.matmul_acc(x, w), (lambda a: emit.matmul_acc(a, w))
        channels = (n,)
    else:
        _, c, h, wd, o = shape
        x, w = _operand(x_dtype, (1, c, h, wd)), _operand("int8", (o, c, 1, 1))
        acc_ref = ref.conv2d_acc(x, w, (1, 1), (0, 0, 0, 0))
        acc = (lambda a: emit.conv2d_acc(a, w, _Pointwise))
        channels = (1, o, 1, 1)
    bias = rng.integers(-5000, 5000, channels).astype(np.int32)
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, channels[1 if kernel != "dense" else 0]))
    axis = 1 if kernel != "dense" else x.ndim - 1
    m, s = emit.channel_shape(m, x.ndim, axis), emit.channel_shape(s, x.ndim, axis)
    residual = _operand("int8", acc_ref.shape)

    def build(a, r):
        y = emit.requantize(add(acc(a), emit.const(bias, "int32")), m, s, -128, 127, "int8")
        return emit.add_requant(y, r, *ref.dyadic(0.8), *ref.dyadic(0.6), -128, 127, "int8")

    want = ref.add_requant(ref.requantize(acc_ref + bias, m, s, -128, 127, "int8"), residual,
                           *ref.dyadic(0.8), *ref.dyadic(0.6), -128, 127, "int8")
    np.testing.assert_array_equal(run_relax(build, [x, residual], VNNI_FLEET), want)
    lowered = _lowered_names(build, [x, residual])
    assert f"vnni_{kernel}" in lowered and "vpdpbusd" in lowered


def _requantized_pointwise(x: np.ndarray, out_channels: int) -> str:
    """A 1x1 conv of `x` to `out_channels` with its per-channel requantization to uint8: checks the
    compiled kernels against NumPy, returns the lowered kernels' names and TIR."""
    w = _operand("int8", (out_channels, x.shape[1], 1, 1))
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, out_channels))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)

    def build(a):
        return emit.requantize(emit.conv2d_acc(a, w, _Pointwise), m, s, 0, 255, "uint8")

    want = ref.requantize(ref.conv2d_acc(x, w, (1, 1), (0, 0, 0, 0)), m, s, 0, 255, "uint8")
    np.testing.assert_array_equal(run_relax(build, [x], VNNI_FLEET), want)
    return _lowered_names(build, [x])


@pytest.mark.parametrize("batch", [1, 2])
def test_lanes_out_epilogue_runs_over_channel_vectors(batch):
    """Lanes over outputs: the requantization runs on the accumulators as they lie (16 output channels
    per vector, its constants vector loads), each result stored into its NCHW row; the accumulators
    are no longer copied out in NCHW order first (a lane at a time into vectors of 7 pixels)."""
    import re

    lowered = _requantized_pointwise(_operand("uint8", (batch, 96, 7, 7)), 64)
    assert "vnni_conv_lanes_out" in lowered and "vnni_conv_lanes_out_global" not in lowered
    assert re.search(r"T\.vectorized\(T\.int64\((16|32|64)\)\)", lowered.split("vnni_conv_lanes_out_init")[-1])


def test_lanes_pixels_epilogue_over_rows_of_56_is_vectorized():
    """Lanes over pixels on a 56x56 image (a tile of two rows): each row's requantization is one
    vector loop (LLVM's own vectorizer, of the serial loop, kept the 64-bit multiply's widening
    that `tir_pipeline`'s rewrites take out), int8 inputs shifted and corrected (EfficientNet-Lite0's
    expand convs after a residual), equal to NumPy."""
    import re

    lowered = _requantized_pointwise(_operand("int8", (1, 24, 56, 56)), 144)
    assert "vnni_conv_lanes_pixels" in lowered
    assert re.search(r'T\.vectorized\(T\.int64\(56\)\):\s*with T\.sblock\("compute"\)', lowered)


@pytest.mark.parametrize("width,tile", [(48, (4, 3)), (80, (2, 5)), (240, (4, 3))])
def test_lanes_pixels_rows_of_odd_vectors_take_a_many_accumulator_tile(width, tile):
    """Rows of 3, 5 or 15 vectors (48, 80, 240 pixels: a YOLO head's 80x80 map) admitted no lanes-over-pixels
    tile but the one-accumulator (1, 1), whose dot products wait on each other: a 128 -> 128 1x1 conv at
    96x80 ran at 63 GMAC/s (2.0 ms; 0.90 with the (2, 5) tile). Equal to NumPy."""
    from targets import vnni
    from targets.kernel_family import VNNI

    assert vnni.conv_tile(vnni.CONV_LANES_PIXELS, 96, 6, width, VNNI) == tile
    lowered = _requantized_pointwise(_operand("uint8", (1, 24, 6, width)), 96)
    assert "vnni_conv_lanes_pixels" in lowered


@pytest.mark.parametrize("batch,height,width,out_channels,padded", [
    (1, 14, 14, 96, True),  # EfficientNet-Lite0's 14x14 expand convs: 16 columns a row, 2 sliced off
    (2, 5, 76, 32, True),  # 76 -> 80, a batch
    (1, 19, 19, 64, True),  # 19 -> 32: lanes over outputs would take a (1, 4) tile
    (1, 52, 52, 96, True),  # 52 -> 56: two rows of 56 are the (2, 7) tile's 112 pixels
    (1, 7, 7, 96, False),  # 7 -> 16 wastes more than half: lanes over outputs
])
def test_pointwise_rows_padded_to_whole_vectors(batch, height, width, out_channels, padded):
    """Rows that are not whole vectors: lanes over pixels all the same where the repack's zero-padded
    columns cost little (`vnni_rewrite._padded_rows`), the padded columns sliced off; equal to NumPy."""
    lowered = _requantized_pointwise(_operand("int8", (batch, 40, height, width)), out_channels)
    assert ("vnni_conv_lanes_pixels" in lowered) == padded and ("vnni_conv_lanes_out" in lowered) != padded


@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2), (5, 1)])
def test_depthwise_kernels_with_epilogue_stay_scheduled(k, stride):
    """A depthwise conv with its requantization: every kernel keeps its schedule (the inlining of an
    epilogue's other inputs once took the padded rows for such an input, and the flat-row kernels
    fell back to TVM's loops: EfficientNet-Lite0 7.5 -> 10.9 ms)."""
    class Attrs(_Pointwise):
        strides, padding, groups = (stride, stride), (k // 2,) * 4, 32

    x, w = _operand("uint8", (1, 32, 14, 14)), _operand("int8", (32, 1, k, k))
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, 32))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)

    def build(a):
        return emit.requantize(emit.conv2d_acc(a, w, Attrs), m, s, 0, 255, "uint8")

    want = ref.requantize(ref.conv2d_acc(x, w, (stride, stride), (k // 2,) * 4, groups=32), m, s, 0, 255, "uint8")
    np.testing.assert_array_equal(run_relax(build, [x], VNNI_FLEET), want)
    assert unscheduled_kernels(build, [x]) == []


def test_epilogue_input_made_before_the_product_is_inlined():
    """An epilogue that also reads a value reshaped in the same kernel (an LSTM step: the input
    projection, squeezed, plus the recurrent matvec) still gets the dot-product tiles; the squeeze
    ran first as a loop of its own, and the whole kernel fell back to TVM's scalar loops (1.2 ms a
    step for a 768 x 3072 matvec instead of 0.03)."""
    from tvm.relax.op import squeeze

    from tvm.relax.op import astype, clip

    x, w = _operand("uint8", (1, 256)), _operand("int8", (256, 512))
    residual = rng.integers(-(2**20), 2**20, (1, 1, 512)).astype(np.int32)
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, 512))
    mr, sr = ref.dyadic(3e-5)
    lo, hi = ref.kernels.INT_RANGE["int32"]

    def build(a, r):
        part = emit.requantize(squeeze(r, axis=[1]), mr, sr, lo, hi, "int32")  # made before the product
        y = emit.requantize(emit.matmul_acc(a, w), m, s, lo, hi, "int32")
        return astype(clip(add(part, y), -128, 127), "int8")

    part = ref.requantize(residual[:, 0], mr, sr, lo, hi, "int32").astype(np.int64)
    want = np.clip(part + ref.requantize(ref.matmul_acc(x, w), m, s, lo, hi, "int32"), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(run_relax(build, [x, residual], VNNI_FLEET), want)
    lowered = _lowered_names(build, [x, residual])
    assert "squeeze" in lowered and "vpdpbusd" in lowered


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_patch_embedding_conv_becomes_a_vnni_matmul(x_dtype):
    """A ViT patch embedding (stride == kernel) runs as patches @ weights, exactly."""
    x, w = _operand(x_dtype, (1, 3, 28, 42)), _operand("int8", (48, 3, 14, 14))

    class Patchify(_Pointwise):
        strides = (14, 14)

    want = ref.conv2d_acc(x, w, (14, 14), (0, 0, 0, 0))
    np.testing.assert_array_equal(run_relax(lambda a: emit.conv2d_acc(a, w, Patchify), [x], VNNI_FLEET), want)
    assert "vpdpbusd" in _lowered_names(lambda a: emit.conv2d_acc(a, w, Patchify), [x])


def test_channels_off_the_dot_step_are_padded_into_it():
    x, w = _operand("int8", (1, 6, 8, 8)), _operand("int8", (8, 6, 1, 1))  # C = 6: padded to 8 (zero weights)
    got = run_relax(lambda a: emit.conv2d_acc(a, w, _Pointwise), [x], VNNI_FLEET)
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (1, 1), (0, 0, 0, 0)))
    assert "vpdpbusd" in _lowered_names(lambda a: emit.conv2d_acc(a, w, _Pointwise), [x])


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_reduction_lengths_off_the_dot_step_are_padded(dtype):
    """A pointwise conv over 27 channels and a matmul over 30 (a pruned ResNet's 243 and 486
    channels ran TVM's generic loops, 3 GMAC/s): zero-padded to whole dot-product steps, they take
    the dot kernels, bit-exact with the int64 product."""
    import tvm
    from tvm import relax

    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.kernel_family import kernel_family

    spec = get_target("x86")
    target = spec.target()
    if not kernel_family(target).dots:
        pytest.skip("no dot-product kernels on this CPU")
    rng = np.random.default_rng(5)
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (1, 27, 6, 5)).astype(dtype)  # 30 pixels: the matmul-over-pixels form
    w = rng.integers(-128, 128, (40, 27, 1, 1)).astype(np.int8)
    t = rng.integers(lo, hi, (16, 30)).astype(dtype)
    wm = rng.integers(-128, 128, (30, 48)).astype(np.int8)
    R = relax.op
    bb = relax.BlockBuilder()
    xv, tv = relax.Var("x", relax.TensorType(x.shape, dtype)), relax.Var("t", relax.TensorType(t.shape, dtype))
    with bb.function("main", [xv, tv]):
        with bb.dataflow():
            conv = bb.emit(R.nn.conv2d(xv, relax.const(w), out_dtype="int32"))
            mm = bb.emit(R.matmul(tv, relax.const(wm), out_dtype="int32"))
            out = bb.emit_output(relax.Tuple([conv, mm]))
        bb.emit_func_output(out)
    mod = bb.get()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    kernels = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum("_dense" in k or "_conv_lanes" in k for k in kernels) == 2, kernels
    ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(t))
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.int64), x.astype(np.int64))
    np.testing.assert_array_equal(got[0].numpy(), want)
    np.testing.assert_array_equal(got[1].numpy(), t.astype(np.int64) @ wm.astype(np.int64))
