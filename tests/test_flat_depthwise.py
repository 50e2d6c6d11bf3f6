"""Flat-row depthwise convs (targets/depthwise.py) over a symbolic batch: stride 1 and 2
(the padded image, then its phases), compiled for x86 with the default schedules, equal the
reference for every sample."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from passes import reference as ref
from passes.lowering import emit
from targets import get_target

rng = np.random.default_rng(3)


class _Attrs:
    dilation, data_layout, kernel_layout, out_layout = (1, 1), "NCHW", "OIHW", "NCHW"

    def __init__(self, strides, padding, groups):
        self.strides, self.padding, self.groups = strides, padding, groups


def _conv_module(shape: list, w: np.ndarray, attrs: _Attrs):
    """`main(x: uint8[shape])` returning the integer conv's int32 sums (emit.conv2d_acc)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.conv2d_acc(xv, w, attrs))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("stride,padding,k,hw", [(1, (1, 1, 1, 1), 3, (13, 11)), (2, (0, 0, 1, 1), 3, (13, 11)),
                                                 (2, (2, 1, 2, 2), 5, (13, 11)),
                                                 (2, (0, 0, 1, 1), 3, (28, 28))])  # phase rows of 16: shuffled pairs
def test_free_batch(stride, padding, k, hw):
    c = 16
    x = rng.integers(0, 256, (3, c, *hw)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    attrs = _Attrs((stride, stride), padding, c)
    spec = get_target("x86")
    target = spec.target()
    ex = tvm.compile(_conv_module([tvm.tirx.Var("n", "int64"), c, *hw], w, attrs), target=target,
                     relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (stride, stride), padding, groups=c))


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 32, 7, 7), 5, 1, (2, 2, 2, 2)),      # EfficientNet's last 5x5 stage
    ((1, 16, 14, 14), 5, 2, (1, 1, 2, 2)),    # 4 phases, 3 and 2 taps per phase row
    ((1, 16, 9, 6), 7, 1, (3, 2, 3, 1)),      # 7 taps: two quads, one slot unused; asymmetric pads
])
def test_quad_taps(shape, k, stride, padding, x_dtype):
    """Depthwise convs whose taps along x are summed 4 at a time (AVX512-VNNI hosts: quad rows and
    vpdpbusd; elsewhere the flat-row kernel): equal to the reference, with the requantization
    epilogue per channel, at the extremes of both dtypes."""
    from targets.kernel_family import VNNI, kernel_family

    spec = get_target("x86")
    target = spec.target()
    rewritten, got, want = _requantized_depthwise(shape, k, stride, padding, x_dtype, target)
    quads = VNNI in kernel_family(target).dots
    assert ("dwflat_quad" in rewritten.script()) == quads
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_dtype", ["int8", "uint8", "int16"])
@pytest.mark.parametrize("shape,k,stride,padding", [
    ((1, 16, 14, 14), 3, 1, (1, 1, 1, 1)),    # MobileNet's 3x3 at 14x14
    ((2, 16, 14, 14), 5, 1, (2, 2, 2, 2)),    # EfficientNet's 5x5 at 14x14, two samples
    ((1, 16, 28, 28), 5, 2, (1, 1, 2, 2)),    # 4 phases, 3 and 2 taps per phase row
    ((1, 16, 57, 45), 3, 2, (0, 0, 1, 1)),    # odd sizes, TF's same padding
    ((1, 16, 40, 36), 7, 1, (3, 3, 3, 3)),    # 7 taps: two quads, one slot unused
])
def test_window_quads(shape, k, stride, padding, x_dtype):
    """With AVX512-VBMI, the quads are permuted from the padded row in a register (no quad rows in
    memory); int16 inputs (sensitivity-kept tensors) take pairs of taps the same way (vpermw, then
    vpdpwssd; they had TVM's generic conv: a 5x5 at 100x76 1.26 -> 0.92 ms). Lowered for such a
    fleet, no quad-row stage is left; run where the host has the ISA, the requantized outputs equal
    the reference at the extremes of each dtype."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.depthwise import window_dot

    fleet = get_target("x86", cpu="x86-64-v4+avx512vnni+avx512vbmi").target()

    c = shape[1]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    with fleet:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(fleet))(
            _conv_module(list(shape), w, _Attrs((stride, stride), padding, c)))
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert 'T.sblock("dwflat_quad' in text and "dwflat_quads" not in text
    host = get_target("x86").target()
    with host:
        if window_dot("int16" if x_dtype == "int16" else "uint8") is None:
            pytest.skip("this CPU lacks AVX512-VBMI and VNNI (int16: AVX512-BW): lowered, not run")
    rewritten, got, want = _requantized_depthwise(shape, k, stride, padding, x_dtype, host)
    np.testing.assert_array_equal(got, want)


def _requantized_depthwise(shape, k, stride, padding, x_dtype, target):
    """(flat_depthwise's module, compiled output, reference) of a requantized depthwise conv with
    random extreme inputs and weights."""
    from targets import depthwise

    lo, hi = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}[x_dtype]
    c = shape[1]
    x = rng.integers(lo, hi + 1, shape).astype(x_dtype)
    x.flat[:2] = [lo, hi]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    w.flat[:3] = [-128, 127, -128]
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, c))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)
    attrs = _Attrs((stride, stride), padding, c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(shape), x_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.requantize(emit.conv2d_acc(xv, w, attrs), m, s, 0, 255, "uint8"))
        bb.emit_func_output(out)
    spec = get_target("x86")
    with target:
        rewritten = depthwise.flat_depthwise(bb.get())
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ref.requantize(ref.conv2d_acc(x, w, (stride, stride), padding, groups=c), m, s, 0, 255, "uint8")
    return rewritten, got, want


@pytest.mark.parametrize("shifted", [False, True])
def test_padded_rows_read_inside_the_input(shifted):
    """The padded rows load the input at clamped rows: TVM's simplifier dropped a clamp under the
    select's condition `0 <= y < h`, and the select, evaluated whole, loaded rows before and after
    the input (a free-batch ResNet stem segfaulted where a sample's buffer ended at a page)."""
    from tvm import te

    from targets.depthwise import depthwise_flat_te

    x = te.placeholder((1, 3, 20, 20), "int8", name="x")
    w = te.placeholder((8, 3, 7, 7), "int8", name="w")
    corr = te.placeholder((8,), "int32", name="corr") if shifted else None
    out = depthwise_flat_te(x, w, (3, 3, 3, 3), stride=2, groups=1, corr=corr)
    text = te.create_prim_func([x, w, out] + ([corr] if shifted else [])).script()
    loads = re.findall(r"\bx\[v_b, v_ch, ([^\]]*)\]", text)
    assert loads
    for load in loads:  # every row clamped to the image: T.max(T.min(...), 0); a column at most 3 bytes out
        assert load.startswith("T.max(T.min(") and load.count("T.max(T.min(") == 1, load


def test_free_batch_stem_runs_batches_side_by_side(tmp_path):
    """A 7x7 stride-2 RGB stem with a free batch, run at batch 8 on the batch workers (one sample
    per call, each in its own exact-size buffer): it segfaulted every time before the fix above."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from frontends.onnx_import import FreeDim
    from runtime import compile_model

    w = np.random.default_rng(0).normal(0, 0.1, (16, 3, 7, 7)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3]),
         helper.make_node("Relu", ["c"], ["y"])], "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 112, 112])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "stem.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(0, 1, (4, 3, 224, 224)).astype(np.float32))
    art = compile_model(tmp_path / "stem.onnx", "x86", tmp_path / "stem.artifact", calib=tmp_path / "calib.npz",
                        input_shapes={"x": (FreeDim("n", 1, 8), 3, 224, 224)}, progress=False)
    # the batch-1 library set aside (conftest.without_sample_library): the symbolic one runs each sample
    script = ("import numpy as np, runtime; m = runtime.load(%r); m.batch_workers = 2\n"
              "m._libs = {key: lib for key, lib in m._libs.items() if not key[1]}\n"
              "x = np.random.default_rng(2).normal(0, 1, (8, 3, 224, 224)).astype(np.float32)\n"
              "y = [m.run({'x': x})['y'] for _ in range(10)]\n"
              "one = m.run({'x': x[3:4]})['y']\n"
              "assert all(np.array_equal(a, y[0]) for a in y) and np.array_equal(one[0], y[0][3])\n" % str(art))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("width,groups", [(15000, 1), (4095, 4)], ids=["stem-15000", "depthwise-4095"])
def test_long_rows_vectorize_in_pieces(width, groups):
    """A 1-D conv over 60 s of a 250 Hz signal (MEGnet: a [1, 5] kernel over 15000 samples): its padded
    row was one 15004-lane vector, and LLVM took 24 GB on it (the compile was killed). Rows past
    MAX_ROW_LANES are vectorized in pieces (a divisor of the row, else 16 with a tail); bit-exact."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.cpu_schedules import MAX_ROW_LANES

    c = 4
    x = rng.integers(0, 256, (1, groups, 1, width)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, c // groups if groups > 1 else 1, 1, 5)).astype(np.int8)
    attrs = _Attrs((1, 1), (0, 2, 0, 2), groups)
    mod = _conv_module(list(x.shape), w, attrs)
    spec = get_target("x86")
    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    loops = re.findall(r"T\.vectorized\(T\.int64\((\d+)\)(?:, T\.int64\((\d+)\))?\)", text)  # (extent) or (min, end)
    assert "dwflat" in text and max(int(b) - int(a) if b else int(a) for a, b in loops) <= MAX_ROW_LANES
    ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (1, 1), (0, 2, 0, 2), groups=groups))


@pytest.mark.parametrize("cpu", ["x86-64-v4+avx512vnni", "x86-64-v3"])
def test_rgb_stems_take_the_dot_kernels(cpu):
    """An 8-bit RGB stem runs on the dot-product kernels (taps, or patches where the image is this small),
    not over flat rows, with AVX-512 as with
    AVX2: on an AVX-512 Xeon the flat-row stem took 1.7-3.8x as long (a 7x7/2 64-channel stem 3.8 ms
    against 1.0). Lowered for each fleet (not run: the host may lack the ISA); run for the host, the
    sums are the conv's."""
    from targets.cpu_pipeline import cpu_lowering_passes

    x = rng.integers(0, 256, (1, 3, 20, 18)).astype(np.uint8)
    w = rng.integers(-128, 128, (16, 3, 3, 3)).astype(np.int8)
    attrs = _Attrs((2, 2), (0, 0, 1, 1), 1)
    mod = _conv_module(list(x.shape), w, attrs)
    target = get_target("x86", cpu=cpu).target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    names = [gv.name_hint for gv in lowered.functions.keys()]
    assert any("taps" in n or "patches" in n for n in names) and not any("dwflat" in n for n in names), names
    spec = get_target("x86")
    ex = tvm.compile(mod, target=spec.target(), relax_pipeline=spec.relax_pipeline(spec.target()))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (2, 2), (0, 0, 1, 1)))


@pytest.mark.parametrize("hw,stride,padding", [(14, 1, (2, 2, 2, 2)), (7, 1, (2, 2, 2, 2)), (14, 2, (1, 1, 2, 2))])
def test_quad_rows_pad_whole_rows(hw, stride, padding):
    """The quad rows read all but the last bytes of the padded rows' last row. Computed where they are
    read, the padded rows then had a predicate on their row loop, which TVM vectorizes as a masked
    vector and a scalar tail per row: a third of a 14x14 5x5 conv's time (167 -> 128 us a call in
    EfficientNet-Lite0). The quad rows' read is widened to whole rows while the pad is placed.
    Lowered for an AVX512-VNNI fleet (not run: the host may lack it); test_quad_taps runs it."""
    from targets.cpu_pipeline import cpu_lowering_passes

    c = 32
    w = rng.integers(-128, 128, (c, 1, 5, 5)).astype(np.int8)
    mod = _conv_module([1, c, hw, hw], w, _Attrs((stride, stride), padding, c))
    target = get_target("x86", cpu="x86-64-v4+avx512vnni").target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert "dwflat_quads" in text
    pads = [b for b in re.split(r'with T\.sblock\("', text)[1:] if b.startswith("dwflat_pad")]
    assert pads and not any("T.where(" in b.split("with T.sblock")[0] for b in pads), pads


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4", "x86-64-v4+avx512vnni"])
def test_int16_depthwise_on_each_fleet(cpu):
    """int16 inputs over flat rows on AVX2 (the flat taps), AVX-512 without VNNI (pairs on vpmaddwd)
    and with it (vpdpwssd): the sums equal the conv's; run where this CPU has the fleet's features."""
    from targets.x86 import missing_features

    c = 16
    x = rng.integers(-32768, 32768, (2, c, 20, 18)).astype(np.int16)
    w = rng.integers(-128, 128, (c, 1, 5, 5)).astype(np.int8)
    attrs = _Attrs((1, 1), (2, 2, 2, 2), c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(x.shape), "int16"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.conv2d_acc(xv, w, attrs))
        bb.emit_func_output(out)
    spec = get_target("x86", cpu=cpu)
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}")
    from targets.cpu_pipeline import cpu_lowering_passes

    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(bb.get())
    assert any("dwflat" in gv.name_hint for gv in lowered.functions.keys())
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (1, 1), (2, 2, 2, 2), groups=c))


@pytest.mark.parametrize("k,stride", [(3, 2), (5, 1)])
def test_free_batch_requantization_runs_per_channel(k, stride):
    """With a free batch the conv's requantization is computed per channel right after its sums, as
    at batch 1: the flat sums (n x C x rows) and the outputs (n x C x H x W) are compared knowing that
    n >= 1 (unknown, the epilogue ran as a loop nest of its own after the whole conv, and the quad
    conv's schedule failed: EfficientNet-Lite0 with a free batch took 15.7 ms a sample, 5.3 now)."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from tvm.relax.op import add

    c, h, wd = 32, 14, 14
    x = rng.integers(0, 256, (3, c, h, wd)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    pad = k // 2
    attrs = _Attrs((stride, stride), (pad, pad, pad, pad), c)
    bias = rng.integers(-5000, 5000, (1, c, 1, 1)).astype(np.int32)
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, c))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType([tvm.tirx.Var("n", "int64"), c, h, wd], "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = add(emit.conv2d_acc(xv, w, attrs), emit.const(bias, "int32"))
            out = bb.emit_output(emit.requantize(acc, m, s, 0, 255, "uint8"))
        bb.emit_func_output(out)
    mod = bb.get()
    spec = get_target("x86")
    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(mod)
    (conv,) = [f for gv, f in lowered.functions_items() if "dwflat" in gv.name_hint]
    assert conv.attrs and "tirx.is_scheduled" in conv.attrs
    top = re.findall(r"^    for ", conv.script(), re.M)  # loops right under the function's root
    assert len(top) == 1, conv.script()
    ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    want = ref.requantize(ref.conv2d_acc(x, w, (stride, stride), attrs.padding, groups=c) + bias, m, s, 0, 255, "uint8")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4+avx512vnni"])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("hw,k,padding", [(28, 3, (0, 0, 1, 1)), (56, 5, (1, 1, 2, 2)), (14, 5, (1, 1, 2, 2))])
def test_stride_two_phases_are_shuffled_pairs(hw, k, padding, x_dtype, cpu):
    """Stride 2: a phase row is rounded up to whole vectors of 16 where that widens it by <= 15% (15 -> 16,
    30 -> 32 columns; a 9-column row stays 9), and 16 columns of both column phases are one load of 32
    and two shuffles (`phase_pairs_intrinsic`) instead of an element at a time (EfficientNet-Lite0's
    stride-2 convs ~10% faster). The sums equal the conv's on every fleet this CPU runs."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.depthwise import phase_width
    from targets.x86 import missing_features

    c = 24
    lo, hi = ref.kernels.INT_RANGE[x_dtype]
    x = rng.integers(lo, hi + 1, (1, c, hw, hw)).astype(x_dtype)
    x.flat[:2] = [lo, hi]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    attrs = _Attrs((2, 2), padding, c)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(x.shape), x_dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.conv2d_acc(xv, w, attrs))
        bb.emit_func_output(out)
    spec = get_target("x86", cpu=cpu)
    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(bb.get())
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    wq = -(-(hw + padding[1] + padding[3]) // 2)
    with target:
        widened = phase_width(hw + padding[1] + padding[3], 2)
    assert widened == (-(-wq // 16) * 16 if hw != 14 else wq)
    assert ('sblock("dwflat_pad_o")' in text) == (widened % 16 == 0)  # the phase rows tensorized
    if missing_features(spec.features):
        pytest.skip(f"this CPU lacks {missing_features(spec.features)}: lowered and checked only")
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (2, 2), padding, groups=c))


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("shape,k,padding", [
    ((1, 24, 14, 14), 5, (1, 1, 2, 2)),    # EfficientNet-Lite0's 14x14 -> 7x7, TF's same padding
    ((2, 16, 13, 11), 3, (0, 0, 1, 1)),    # odd sizes, two samples: 7x6 outputs
    ((1, 16, 12, 12), 7, (3, 3, 3, 3)),    # 7 taps a row: two quads, one slot unused
])
def test_small_stride_two_runs_over_the_unsplit_image(shape, k, padding, x_dtype):
    """With AVX512-VBMI, a stride-2 depthwise conv to <= 8x8 outputs reads the padded image itself:
    each vector's 16 outputs take every other byte of one 64-byte window (`depthwise_strided_te`), no
    phases (EfficientNet-Lite0's 14x14 -> 7x7 5x5 0.079 -> 0.057 ms). Lowered for such a fleet, no
    phase stage is left; run where the host has the ISA, the requantized outputs equal the reference."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.depthwise import window_dot

    fleet = get_target("x86", cpu="x86-64-v4+avx512vnni+avx512vbmi").target()
    c = shape[1]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    with fleet:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(fleet))(
            _conv_module(list(shape), w, _Attrs((2, 2), padding, c)))
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert 'T.sblock("dwflat_quad' in text and "dwflat_image" not in text and "dwflat_quads" not in text
    assert '"dwflat_stride": 2' in text
    host = get_target("x86").target()
    with host:
        if window_dot("uint8") is None:
            pytest.skip("this CPU lacks AVX512-VBMI and VNNI: lowered, not run")
    _, got, want = _requantized_depthwise(shape, k, 2, padding, x_dtype, host)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape,k,stride,grouped", [
    ((1, 12, 7, 7), 5, 1, True),      # 11 x 11 padded rows: four channels' rows, then their sums
    ((1, 12, 14, 14), 3, 1, True),
    ((1, 6, 7, 7), 3, 1, False),      # 6 channels: no whole groups of four
    ((1, 12, 28, 28), 5, 1, False),   # a 1 KB plane: one channel at a time
    ((1, 12, 14, 14), 5, 2, True),    # stride 2 over the unsplit image (small images, AVX512-VBMI) too
    ((1, 16, 28, 28), 3, 2, False),   # phases of a padded image
])
def test_small_images_pad_channel_groups_ahead(shape, k, stride, grouped):
    """A depthwise conv over a small image that reads its padded rows directly (stride 1, or stride 2
    over the unsplit image) builds the rows of four channels before their sums (`cpu_schedules._channel_group`: no load then waits on the stores of its own rows);
    the integers are the reference's either way."""
    from targets.cpu_pipeline import cpu_lowering_passes
    from targets.depthwise import window_dot

    target = get_target("x86").target()
    c = shape[1]
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(
            _conv_module(list(shape), w, _Attrs((stride, stride), (k // 2,) * 4, c)))
        unsplit = window_dot("uint8") is not None  # stride 2 over the unsplit image: AVX512-VBMI's byte permutes
    text = "\n".join(f.script() for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    expected = grouped and (stride == 1 or unsplit)  # else the phases of the padded image
    assert bool(re.search(r"b_f_fused_1 in (T\.parallel|range)\(T\.int64\(4\)\)", text)) == expected
    _, got, want = _requantized_depthwise(shape, k, stride, (k // 2,) * 4, "uint8", target)
    np.testing.assert_array_equal(got, want)
