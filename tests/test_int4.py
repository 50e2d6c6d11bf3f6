"""4-bit weights: packing, the packed conv2d/matmul kernels bit-exact against their NumPy
references (x86), the x86 dot-product kernels that unpack the nibbles in registers or into an
L1 stage (targets/vnni_int4.py, vnni_int4_kernels.py) on every kernel family this CPU runs, the
rewrite (a half-size uint8 constant, no int8 copy, in the compiled library too), and the 4-bit
small CNN on the cross targets (riscv run under qemu)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import run_relax
from tvm import relax

from frontends.errors import CompileError, ToolchainError
from passes import reference as ref
from passes.lowering import emit, int4
from passes.reference.int4 import (
    conv2d_int4_acc,
    matmul_int4_acc,
    matmul_int4_tiles_acc,
    pack_int4,
    pack_int4_tiles,
    unpack_int4,
    unpack_int4_tiles,
)

rng = np.random.default_rng(7)
R = relax.op


def _w4(shape, extreme=True):
    w = rng.integers(-8, 8, shape).astype(np.int8)
    if extreme:
        w.flat[:3] = [-8, 7, -1]
    return w


def _x(shape, dtype):
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    x.flat[:2] = [lo, hi]
    return x


def _bb():
    return relax.BlockBuilder.current()


class _Conv:
    def __init__(self, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
        self.strides, self.padding, self.dilation, self.groups = strides, padding, dilation, groups
        self.data_layout, self.kernel_layout, self.out_layout = "NCHW", "OIHW", "NCHW"


# ---------------------------------------------------------------- reference


@pytest.mark.parametrize("shape", [(1,), (7,), (4, 3, 3, 3), (33, 5)])
def test_pack_unpack_round_trip(shape):
    q = _w4(shape, extreme=len(shape) > 1)
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.size == (q.size + 1) // 2
    np.testing.assert_array_equal(unpack_int4(packed, shape), q)


def test_pack_layout_low_nibble_first():
    np.testing.assert_array_equal(pack_int4(np.array([1, -1, -8, 7, 3])), [0xF1, 0x78, 0x03])
    with pytest.raises(ValueError, match="outside"):
        pack_int4(np.array([8]))


@pytest.mark.parametrize("lanes,k", [(16, 4), (8, 4), (8, 2), (1, 4)])
def test_tile_layout_round_trip(lanes, k):
    """Two k-steps per byte vector: step 2t in the low nibbles, step 2t + 1 in the high ones."""
    q = _w4((2 * lanes, 6 * k))
    tiles = pack_int4_tiles(q, lanes, k)
    assert tiles.shape == (2, 3, lanes, k) and tiles.dtype == np.uint8
    np.testing.assert_array_equal(unpack_int4_tiles(tiles), q)
    v, t, lane, j = 1, 2, lanes - 1, k - 1
    n, c = v * lanes + lane, 2 * t * k + j
    assert int(tiles[v, t, lane, j]) == (int(q[n, c]) & 15) | (int(q[n, c + k]) & 15) << 4
    x = _x((3, 6 * k), "uint8")
    np.testing.assert_array_equal(matmul_int4_tiles_acc(x, tiles), matmul_int4_acc(x, pack_int4(q.T), q.T.shape))
    with pytest.raises(ValueError, match="tiles"):
        pack_int4_tiles(q[:, :k], lanes, k)


def test_reference_against_float():
    """4-bit per-channel weights: the integer matmul times its scales tracks the float one."""
    x = rng.integers(0, 256, (8, 256)).astype(np.uint8)
    w = rng.standard_normal((256, 32))
    q, scale = ref.quantize_weights(w, 4, axis=1)
    got = matmul_int4_acc(x, pack_int4(q), q.shape) * scale
    want = x.astype(np.float64) @ w
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    # rounding noise step / sqrt(12) with step ~ 3 sigma / 7 (Gaussian weights): ~12% of the rms
    assert rel < 0.15, rel


# ---------------------------------------------------------------- compiled == reference


CONVS = [  # (input shape, weight shape, geometry)
    ((1, 8, 10, 10), (6, 4, 3, 3), _Conv((2, 1), (1, 0, 2, 1), (1, 2), 2)),
    ((1, 16, 9, 9), (16, 1, 3, 3), _Conv((1, 1), (1, 1, 1, 1), groups=16)),  # depthwise
    ((1, 12, 7, 7), (24, 1, 5, 5), _Conv((2, 2), (2, 2, 2, 2), groups=12)),  # depthwise, multiplier 2
    ((2, 13, 5, 5), (7, 13, 1, 1), _Conv()),  # pointwise, odd weight count
]


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONVS)
def test_int4_conv2d_bit_exact(x_shape, w_shape, attrs, x_dtype):
    x, w = _x(x_shape, x_dtype), _w4(w_shape)
    got = run_relax(lambda v: int4.conv2d_int4(_bb(), v, w, attrs), [x])
    want = conv2d_int4_acc(x, pack_int4(w), w.shape, attrs.strides, attrs.padding, attrs.dilation, attrs.groups)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("x_shape,w_shape", [((3, 64), (64, 48)), ((2, 5, 33), (33, 7)), ((1, 1280), (1280, 1000))])
def test_int4_matmul_bit_exact(x_shape, w_shape, x_dtype):
    x, w = _x(x_shape, x_dtype), _w4(w_shape)
    got = run_relax(lambda v: int4.matmul_int4(_bb(), v, w), [x])
    np.testing.assert_array_equal(got, matmul_int4_acc(x, pack_int4(w), w.shape))


def test_int4_kernels_get_cpu_schedules():
    """4-bit convs run vectorized over output x, 4-bit matmuls over output columns (not the
    plain loop nest: EfficientNet-Lite0 at 4 bits went from 413 to 77 ms per image, 1 thread)."""
    import tvm
    from conftest import relax_main

    from targets.cpu_schedules import schedule_int_matmul_cpu

    x, w = _x((1, 16, 8, 8), "uint8"), _w4((32, 16, 3, 3))
    xm, wm = _x((4, 96), "int8"), _w4((96, 64))
    for build, arg in ((lambda v: int4.conv2d_int4(_bb(), v, w, _Conv(padding=(1, 1, 1, 1))), x),
                       (lambda v: int4.matmul_int4(_bb(), v, wm), xm)):
        mod = tvm.transform.Sequential([relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
                                        relax.transform.FuseTIR(), schedule_int_matmul_cpu])(relax_main(build, [arg]))
        kernels = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        assert kernels and all(f.attrs and "tirx.is_scheduled" in f.attrs for f in kernels)
        assert "T.vectorized" in mod.script() or "T.parallel" in mod.script()


def test_extreme_accumulation_bit_exact():
    """All inputs 255 and all weights -8: the largest accumulator the bound allows for K."""
    x = np.full((2, 4096), 255, np.uint8)
    w = np.full((4096, 16), -8, np.int8)
    got = run_relax(lambda v: int4.matmul_int4(_bb(), v, w), [x])
    np.testing.assert_array_equal(got, np.full((2, 16), -8 * 255 * 4096, np.int32))


def test_int4_with_fused_requantization_bit_exact():
    """The requantization epilogue fuses into the 4-bit kernel (and a CPU schedule may touch it)."""
    x, w = _x((1, 16, 8, 8), "uint8"), _w4((32, 16, 1, 1))
    m, s = ref.dyadic(np.linspace(1e-3, 3e-2, 32))
    m, s = m.reshape(1, -1, 1, 1), s.reshape(1, -1, 1, 1)
    got = run_relax(lambda v: emit.requantize(int4.conv2d_int4(_bb(), v, w, _Conv()), m, s, 0, 255, "uint8"), [x])
    want = ref.requantize(conv2d_int4_acc(x, pack_int4(w), w.shape), m, s, 0, 255, "uint8")
    np.testing.assert_array_equal(got, want)
    xm, wm = _x((4, 96), "int8"), _w4((96, 64))
    m, s = ref.dyadic(0.01)
    got = run_relax(lambda v: emit.requantize(int4.matmul_int4(_bb(), v, wm), m, s, -128, 127, "int8"), [xm])
    np.testing.assert_array_equal(got, ref.requantize(matmul_int4_acc(xm, pack_int4(wm), wm.shape), m, s, -128,
                                                      127, "int8"))


# ---------------------------------------------------------------- x86 dot-product kernels

V3, V3_VNNI, V4, V4_VNNI = "x86-64-v3", "x86-64-v3+avxvnni", "x86-64-v4", "x86-64-v4+avx512vnni"


def _fleet_build(build, inputs, cpu, tmp_path):
    """Compile `build(*inputs)` for the fleet `cpu`, run it here: (output, {function: disassembly})."""
    import tvm
    from conftest import relax_main

    from targets import get_target
    from targets.x86 import missing_features

    spec = get_target("x86", cpu=cpu)
    if missing_features(spec.features):
        pytest.skip(f"this CPU cannot run {cpu} code")
    target = spec.target()
    ex = tvm.compile(relax_main(build, inputs), target=target, relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / "lib.so"
    ex.export_library(str(lib))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    return out, dict(re.findall(r"<(\w+)>:\n(.*?)(?=\n\n|\Z)", asm, re.S))


def _uses(functions, kernel: str, op: str, register: str) -> bool:
    """Function `kernel`_compute_ (the kernel's body, "fused_" where an op joined it) runs `op` on `register`s."""
    return any(re.search(rf"\b{op}\b[^\n]*%{register}", text) for name, text in functions.items()
               if name.removeprefix("fused_").startswith(f"{kernel}_compute"))


# (fleet, dot-product instruction, register, recipe prefix)
FLEETS = [(V4_VNNI, "vpdpbusd", "zmm", "vnni"), (V3_VNNI, "vpdpbusd", "ymm", "avxvnni"),
          (V4, "vpmaddwd", "zmm", "maddwd512"), (V3, "vpmaddwd", "ymm", "maddwd")]
KERNELS = [  # (kind, shape, x dtype, kernel): unpacked in registers, or once per weight block ("staged")
    ("dense", (1, 384, 96), "int8", "dense4"),  # batch 1: each weight is used once
    ("dense", (12, 64, 48), "uint8", "dense4_staged"),  # several row tiles; N padded to whole vectors
    ("conv", (32, 28, 28, 48), "uint8", "conv_lanes_pixels4_staged"),  # big image: lanes over pixels
    # small image: lanes over output channels on 16 lanes; AVX2's 8 pad each row of 7 to 8 (vnni_rewrite.padded_width)
    ("conv", (40, 7, 7, 64), "int8",
     {"zmm": "conv_lanes_out4_packed_staged", "ymm": "conv_lanes_pixels4_strided_slice"}),
    ("conv", (32, 14, 14, 48), "uint8", "conv_lanes_pixels4_staged_strided_slice"),  # rows padded 14 -> 16
    ("conv", (64, 1, 1, 64), "int8", "conv_lanes_out4"),  # one pixel
]


def _case4(kind, shape, x_dtype, w=None):
    if kind == "dense":
        m, k, n = shape
        x, w = _x((m, k), x_dtype), _w4((k, n)) if w is None else w
        return (lambda v: int4.matmul_int4(_bb(), v, w)), x, matmul_int4_acc(x, pack_int4(w), w.shape)
    c, h, wd, o = shape
    x, w = _x((1, c, h, wd), x_dtype), _w4((o, c, 1, 1)) if w is None else w
    return (lambda v: int4.conv2d_int4(_bb(), v, w, _Conv())), x, conv2d_int4_acc(x, pack_int4(w), w.shape)


@pytest.mark.parametrize("kind,shape,x_dtype,kernel", KERNELS)
@pytest.mark.parametrize("cpu,op,register,recipe", FLEETS)
def test_int4_dot_kernels_bit_exact(cpu, op, register, recipe, kind, shape, x_dtype, kernel, tmp_path):
    """Each family's 4-bit kernel equals the reference and runs the family's dot product on
    the family's registers (no zmm in an x86-64-v3 build)."""
    build, x, want = _case4(kind, shape, x_dtype)
    got, functions = _fleet_build(build, [x], cpu, tmp_path)
    np.testing.assert_array_equal(got, want)
    kernel = kernel[register] if isinstance(kernel, dict) else kernel
    assert _uses(functions, f"{recipe}_{kernel}", op, register), sorted(functions)
    assert not any("int4_matmul" in name or "int4_conv2d" in name for name in functions)
    if cpu.startswith(V3):
        assert not any("zmm" in text for text in functions.values())


@pytest.mark.parametrize("rows,kernel", [(4, "dense4"), (12, "dense4_staged")])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_int4_dot_kernels_worst_case(x_dtype, rows, kernel, tmp_path):
    """Activations at both extremes, weights -8 and 7: the x16 accumulator at its largest;
    weights in [-4, 4] pass vpmaddubsw's proof on AVX2 (16 * 8 * 255 = 32640) and take it."""
    lo, hi = ref.kernels.INT_RANGE[x_dtype]
    x = np.full((rows, 512), hi, x_dtype)
    x[1::2] = lo
    extreme = np.where(rng.random((512, 32)) < 0.5, -8, 7).astype(np.int8)
    extreme[:, 0], extreme[:, 1] = -8, 7
    small = rng.integers(-4, 5, (512, 32)).astype(np.int8)
    want = np.concatenate([matmul_int4_acc(x, pack_int4(w), w.shape) for w in (extreme, small)], -1)
    from tvm.relax.op import concat

    build = lambda v: concat([int4.matmul_int4(_bb(), v, extreme), int4.matmul_int4(_bb(), v, small)], axis=-1)
    for cpu in (V4_VNNI, V3):
        try:
            got, functions = _fleet_build(build, [x], cpu, tmp_path)
        except pytest.skip.Exception:
            continue
        np.testing.assert_array_equal(got, want)
        if cpu == V3:
            assert _uses(functions, f"maddubs_{kernel}", "vpmaddubsw", "ymm")
            assert _uses(functions, f"maddwd_{kernel}", "vpmaddwd", "ymm")


FLAT = [  # depthwise convs and an RGB stem with 4-bit weights: the flat-row kernel (targets/depthwise.py)
    ((1, 16, 14, 14), (16, 1, 3, 3), _Conv((1, 1), (1, 1, 1, 1), groups=16), "int8"),
    ((1, 24, 15, 15), (24, 1, 5, 5), _Conv((2, 2), (1, 1, 2, 2), groups=24), "uint8"),
    # rows of 14: narrower than the taps kernels take (a wide stem takes them: OriNet's at 320x320, whose flat-row
    # kernel was a sixth of the 4-bit model's time)
    ((1, 3, 28, 28), (8, 3, 3, 3), _Conv((2, 2), (0, 0, 1, 1)), "int8"),
]


@pytest.mark.parametrize("cpu", [V4_VNNI, V3])
@pytest.mark.parametrize("x_shape,w_shape,attrs,x_dtype", FLAT)
def test_int4_flat_row_convs_bit_exact(x_shape, w_shape, attrs, x_dtype, cpu, tmp_path):
    """The nibbles unpacked into an int8 stage per channel, then the 8-bit flat-row taps."""
    x, w = _x(x_shape, x_dtype), _w4(w_shape)
    got, functions = _fleet_build(lambda v: int4.conv2d_int4(_bb(), v, w, attrs), [x], cpu, tmp_path)
    want = conv2d_int4_acc(x, pack_int4(w), w.shape, attrs.strides, attrs.padding, attrs.dilation, attrs.groups)
    np.testing.assert_array_equal(got, want)
    assert any(name.startswith("dwflat_conv2d_int4") for name in functions)
    assert not any("int4_conv2d" in name for name in functions)


@pytest.mark.parametrize("cpu", [V4_VNNI, V3])
@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((1, 16, 14, 14), (32, 16, 3, 3), _Conv((1, 1), (1, 1, 1, 1))),
    ((1, 12, 15, 15), (16, 12, 3, 3), _Conv((2, 2), (0, 0, 1, 1)))])  # 108 patch rows: 4 zero rows added
def test_int4_spatial_convs_run_over_patches_bit_exact(x_shape, w_shape, attrs, cpu, tmp_path):
    """A spatial conv of one group is a pointwise conv over its patches, on the 4-bit dot-product
    kernels (TVM's loops ran OriNet's 3x3 convs 4-6x slower than 8-bit), bit-exact."""
    x, w = _x(x_shape, "uint8"), _w4(w_shape)
    got, functions = _fleet_build(lambda v: int4.conv2d_int4(_bb(), v, w, attrs), [x], cpu, tmp_path)
    want = conv2d_int4_acc(x, pack_int4(w), w.shape, attrs.strides, attrs.padding, attrs.dilation, attrs.groups)
    np.testing.assert_array_equal(got, want)
    assert any("conv_patches" in name for name in functions)
    assert not any(name.startswith("int4_conv2d") for name in functions), sorted(functions)


AMX_FLEET = "x86-64-v4+avx512vnni+amx-tile+amx-int8"


@pytest.mark.parametrize("cpu", [V4_VNNI, V3, AMX_FLEET])
@pytest.mark.parametrize("x_shape,w_shape,attrs,x_dtype", [
    ((1, 32, 24, 40), (32, 32, 3, 3), _Conv((1, 1), (1, 1, 1, 1)), "uint8"),  # patched by the lowering
    ((1, 64, 36, 44), (32, 64, 3, 3), _Conv((2, 2), (0, 0, 1, 1)), "int8"),  # stride 2, uneven pads
    ((1, 64, 30, 40), (48, 64, 1, 5), _Conv((1, 1), (0, 4, 0, 4), (1, 2)), "uint8"),  # dilated 1 x 5
    ((1, 64, 96, 96), (32, 64, 3, 3), _Conv((1, 1), (1, 1, 1, 1)), "int8")])  # patches too big: the plain conv
def test_int4_spatial_convs_take_the_taps_kernels(x_shape, w_shape, attrs, x_dtype, cpu, tmp_path):
    """A 4-bit spatial conv whose rows the 8-bit taps kernels take runs on them (AMX tiles where the fleet has
    them), its weights stored two to a byte and unpacked by `int4_unpack` at every call (the patches'
    4-bit pointwise kernel took ~5x the 8-bit taps kernel's time); bit-exact with the reference."""
    x, w = _x(x_shape, x_dtype), _w4(w_shape)
    got, functions = _fleet_build(lambda v: int4.conv2d_int4(_bb(), v, w, attrs), [x], cpu, tmp_path)
    want = conv2d_int4_acc(x, pack_int4(w), w.shape, attrs.strides, attrs.padding, attrs.dilation, attrs.groups)
    np.testing.assert_array_equal(got, want)
    taps = r"amx\w*_taps" if cpu == AMX_FLEET else "conv_taps"
    assert any(re.search(taps, name) for name in functions), sorted(functions)
    assert any("int4_unpack" in name for name in functions), sorted(functions)
    assert not any("conv_patches" in name or "int4_conv2d" in name for name in functions), sorted(functions)


@pytest.mark.parametrize("cpu", [V4_VNNI, V3, AMX_FLEET])
def test_int4_patched_convs_take_the_8bit_pointwise_kernels(cpu, tmp_path):
    """Rows too narrow for the taps kernels (14 pixels) keep the patches, and the pointwise conv over them takes
    the 8-bit kernels (AMX tiles where the fleet has them) on weights unpacked per call, not the 4-bit ones
    (256 -> 256 at 14x14 on AMX: 0.97 ms against 0.23 at 8 bits); bit-exact."""
    attrs = _Conv((1, 1), (1, 1, 1, 1))
    x, w = _x((1, 128, 14, 14), "uint8"), _w4((64, 128, 3, 3))
    got, functions = _fleet_build(lambda v: int4.conv2d_int4(_bb(), v, w, attrs), [x], cpu, tmp_path)
    want = conv2d_int4_acc(x, pack_int4(w), w.shape, attrs.strides, attrs.padding, attrs.dilation, attrs.groups)
    np.testing.assert_array_equal(got, want)
    assert any("conv_patches" in name for name in functions) and any("int4_unpack" in name for name in functions)
    assert not any(re.search(r"conv_lanes_\w*4|int4_conv2d", name) for name in functions), sorted(functions)
    if cpu == AMX_FLEET:
        assert any(re.search(r"amx\w*_conv", name) for name in functions), sorted(functions)


@pytest.mark.parametrize("kind,shape,x_dtype,tiles", [
    ("conv", (64, 14, 14, 48), "uint8", r"amxcu_conv"), ("conv", (128, 7, 7, 40), "int8", r"amxcs_conv"),
    ("dense", (32, 256, 96), "uint8", r"amxu_dense"), ("dense", (20, 240, 64), "int8", r"amxs_dense"),  # K padded to 256, rows to 32
    ("dense", (1, 384, 96), "int8", None)])  # one row: the tiles do not pay, the 4-bit kernel unpacks in registers
def test_int4_pointwise_convs_and_matmuls_take_amx_tiles(kind, shape, x_dtype, tiles, tmp_path):
    """On AMX a 4-bit pointwise conv or many-row matmul runs on the 8-bit tile kernels, its weights unpacked per
    call (the 4-bit dot-product kernels run at VNNI's rate: EfficientNet-Lite0 with 15 such layers at 4 bits took
    1.14x the 8-bit artifact's time, now 1.02x); bit-exact with the reference."""
    build, x, want = _case4(kind, shape, x_dtype)
    got, functions = _fleet_build(build, [x], AMX_FLEET, tmp_path)
    np.testing.assert_array_equal(got, want)
    if tiles is None:
        assert any("dense4" in name for name in functions) and not any("int4_unpack" in n for n in functions)
        return
    assert any(re.search(tiles, name) for name in functions) and any("int4_unpack" in n for n in functions), \
        sorted(functions)
    assert not any(re.search(r"dense4|conv_lanes_\w*4|int4_conv2d|int4_matmul", n) for n in functions), sorted(functions)


def test_int4_taps_weights_stay_packed(tmp_path):
    """The unpacking is not folded back into an int8 constant: the library holds the 3x3 weights at
    half their bytes (FoldConstant would evaluate a kernel of constants only)."""
    import tvm
    from conftest import relax_main

    from targets import get_target

    spec = get_target("x86", cpu=V4_VNNI)
    target = spec.target()
    x, sizes = _x((1, 256, 20, 40), "uint8"), {}
    w = _w4((256, 256, 3, 3))
    for bits in (8, 4):
        build = (lambda v: int4.conv2d_int4(_bb(), v, w, _Conv((1, 1), (1, 1, 1, 1)))) if bits == 4 else (
            lambda v: relax.op.nn.conv2d(v, relax.const(w), padding=(1, 1), out_dtype="int32"))
        ex = tvm.compile(relax_main(build, [x]), target=target, relax_pipeline=spec.relax_pipeline(target))
        ex.export_library(str(tmp_path / f"{bits}.so"))
        sizes[bits] = (tmp_path / f"{bits}.so").stat().st_size
    assert sizes[8] - sizes[4] > 0.4 * w.size, sizes


def test_int4_dot_kernel_limits():
    """The x16 accumulator bound (16 * K * 255 * 8 < 2^31) and the shapes left to the plain
    4-bit kernels: K not a multiple of two k-steps, or too long for the bound."""
    from targets.vnni_int4 import x16_safe

    assert x16_safe(65793, 255) and not x16_safe(65794, 255)
    x, w = _x((2, 36), "int8"), _w4((36, 32))  # 36 = 4 * 9: whole k-steps, not whole pairs of them
    got = run_relax(lambda v: int4.matmul_int4(_bb(), v, w), [x])
    np.testing.assert_array_equal(got, matmul_int4_acc(x, pack_int4(w), w.shape))


# ---------------------------------------------------------------- the rewrite and its storage


def _lowered(layer_bits, w_shape=(256, 512)):
    """Integer Relax of `y = x @ W` lowered with `layer_bits` for its one layer."""
    from passes import QuantConfig, QuantizeToInteger

    w = rng.standard_normal(w_shape).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, w_shape[0]], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.matmul(x, relax.const(w)), name_hint="fc")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return QuantizeToInteger({"x": (-3.0, 3.0), "fc": (-50.0, 50.0)},
                             QuantConfig(layer_bits=layer_bits))(bb.get())


def _constants(mod):
    import tvm

    found = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                args = b.value.args[1].fields if b.value.op.name == "relax.call_tir" else b.value.args
                found += [a.value.numpy() for a in args if isinstance(a, tvm.ir.GenericConst)]
    return found


def test_rewrite_stores_packed_uint8_constant():
    mod4, mod8 = _lowered({"fc": 4}), _lowered({})
    text = mod4.script(show_meta=False)
    assert "int4_matmul" in text and "R.matmul" not in text
    assert [(c.dtype, c.size) for c in _constants(mod4) if c.size >= 256 * 256] == [(np.uint8, 256 * 512 // 2)]
    assert [(c.dtype, c.size) for c in _constants(mod8) if c.size >= 256 * 256] == [(np.int8, 256 * 512)]
    assert '"weight_bits": 4' in str(mod4["main"].attrs["intq.layers"])


def test_compiled_library_holds_the_packed_weight(tmp_path):
    """The CPU pipeline (FoldConstant included) keeps the packed constant: the 4-bit library
    is smaller by about half the int8 weight bytes."""
    import tvm

    from targets import get_target

    spec = get_target("x86")
    target = spec.target()
    sizes = {}
    for bits in (8, 4):
        mod = _lowered({"fc": bits}, (512, 1024))
        with target:
            ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
        ex.export_library(str(tmp_path / f"{bits}.so"))
        sizes[bits] = (tmp_path / f"{bits}.so").stat().st_size
    assert sizes[8] - sizes[4] > 0.4 * 512 * 1024, sizes


def test_layer_bits_config():
    from passes import QuantConfig

    config = QuantConfig(layer_bits={"b": 4, "a": 8})
    assert config.layer_bits == (("a", 8), ("b", 4)) and hash(config)
    assert config.bits_for("b") == 4 and config.bits_for("other") == 8
    assert QuantConfig(weight_bits=4).bits_for("x") == 4
    with pytest.raises(CompileError, match="layer_bits"):
        QuantConfig(layer_bits={"a": 2})


# ---------------------------------------------------------------- cross targets


@pytest.fixture(scope="module")
def small4(tmp_path_factory, small_cnn_path, small_calib):
    from passes import QuantConfig
    from runtime import compile_model

    out = tmp_path_factory.mktemp("int4")

    def build(target):
        try:
            return compile_model(small_cnn_path, target, out / f"{target}.artifact", calib=small_calib,
                                 progress=False, config=QuantConfig(weight_bits=4))
        except ToolchainError as err:  # a partial install skips, naming the package
            pytest.skip(str(err))

    return build


@pytest.mark.parametrize("target", ["arm", "riscv", "cuda"])
def test_int4_compiles_for_cross_targets(small4, target):
    import runtime

    artifact = small4(target)
    manifest = runtime.artifact.read_manifest(artifact)
    assert manifest["integer_only"] is True
    assert all(lay["weight_bits"] == 4 for lay in manifest["quantization"]["layers"])
    if target == "cuda":  # the 4-bit kernels run on the GPU (dlight's rules), not on the host
        assert "int4_conv2d" in (artifact / manifest["device_code"]).read_text()


def test_int4_riscv_plan_runs_bit_exact_under_qemu(small4):
    import runtime
    from benchmarks.emulation import plan_launcher
    from runtime.plan import run_plan

    if shutil.which("qemu-riscv64") is None:
        pytest.skip("qemu-user not installed (targets/install_toolchains.sh)")
    cpu, board = runtime.load(small4("x86")), small4("riscv")
    q = cpu.quantize_inputs({"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)})
    np.testing.assert_array_equal(run_plan(board, q, plan_launcher("riscv64"))[0], cpu.run_integer(q)[0])
