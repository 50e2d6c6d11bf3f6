"""ConvAsPointwise: an integer spatial conv is a pointwise conv over its patches (im2col).

    conv2d(x[N, C, H, W], w[O, C, kh, kw]), any stride, padding, dilation, groups 1
    ==> p = patches(x)[N, K', Ho, Wo]         p[.., (c, i, j), y, x] = x_pad[.., c, y*s + i*d, x*s + j*d]
        conv2d(p, reshape(w', [O, K', 1, 1]))

K' rounds the reduction length K = C*kh*kw up to a multiple of 4 with zero rows (zero weights
too), so that it is a whole number of 4-byte dot-product steps: an STFT as a 1x512 conv over one
channel needs none (rounding C up instead made it 4 times the work). The same products are summed in another
order: the int32 result is bit-identical. A spatial conv has no kernel of its own on CPU targets
(TVM's default loops: ~5 GOP/s on one x86 core); as a pointwise conv it runs on the dot-product
kernels (`targets/vnni_rewrite.py`) or, where none takes it (dilation, x86 without AVX2), on the
matmul schedule (`conv1x1_as_matmul.py`). x86 targets only (`targets/cpu_pipeline.py`). Runs after `targets/depthwise.py`, which takes depthwise convs and
RGB stems first. The float model that calibration runs takes the same path (its spatial convs ran
at ~1 GFLOP/s). A conv whose patches would exceed MAX_PATCH_BYTES runs as convs over bands of
output rows, each within it. The patches kernel is opaque to fusion: fused into it, its input's
requantization ran once per tap (a VQ-VAE decoder's 3x3 conv: 0.155 of its 0.19 ms).
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax, te, tirx

from .call_rewrite import rewrite_calls, static_dims

OPAQUE = 8  # FuseOps' kOpaque: AnnotateTIROpPattern keeps an op_pattern it finds
PATCHES_ATTR = "intq_patches"  # on a patches kernel: JSON [rows, kernel, strides, pads, dilation(, padded input)]
MAX_PATCH_BYTES = 256 << 20
STEP = 4  # bytes per dot-product lane (vpdpbusd, vpmaddwd pairs, sdot)


def _out_size(h, w, kernel, strides, pads, dilation) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = kernel, strides, dilation, pads
    return ((int(h) + top + bottom - dh * (kh - 1) - 1) // sh + 1, (int(w) + left + right - dw * (kw - 1) - 1) // sw + 1)


def _tap(read, k, y, xx, c: int, h, w, kernel, strides, pads, dilation, fill, dtype: str, channel_major: bool = True):
    """The value patch row `k` holds for output pixel (y, xx): read(channel, iy, ix) of the pixel its tap
    reads, `fill` outside the image and past C*kh*kw. Rows are (c, i, j) channel-major, else (i, j, c)."""
    (kh, kw), (sh, sw), (dh, dw), (top, left, _, _) = kernel, strides, dilation, pads
    taps = c * kh * kw
    kc = tirx.min(k, taps - 1)
    ch, t = (kc // (kh * kw), kc % (kh * kw)) if channel_major else (kc % c, kc // c)
    iy, ix = y * sh + t // kw * dh - top, xx * sw + t % kw * dw - left
    inside = tirx.all(k < taps, iy >= 0, iy < h, ix >= 0, ix < w)
    return tirx.if_then_else(inside, read(ch, iy, ix), tirx.const(fill, dtype))


def patches_te(x: te.Tensor, rows: int, kernel: tuple[int, int], strides: tuple[int, int],
               pads: tuple[int, int, int, int], dilation: tuple[int, int]) -> te.Tensor:
    """[N, rows, Ho, Wo]: row (c, i, j) = c*kh*kw + i*kw + j holds the input pixel that tap (i, j)
    of channel c reads for each output pixel; zero outside the image and in the rows past C*kh*kw."""
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, kernel, strides, pads, dilation)
    return te.compute((n, rows, ho, wo), lambda b, k, y, xx: _tap(
        lambda ch, iy, ix: x[b, ch, iy, ix], k, y, xx, int(c), h, w, kernel, strides, pads, dilation, 0, x.dtype),
        name="conv_patches")


def pixel_patches_te(x: te.Tensor, rows: int, kernel: tuple[int, int], strides: tuple[int, int],
                     pads: tuple[int, int, int, int], dilation: tuple[int, int], fill: int = 0) -> te.Tensor:
    """[Ho * Wo, rows] from a channels-last image x [1, H, W, C]: row (i, j, c) = (i*kw + j)*C + c of
    output pixel p holds the pixel tap (i, j) reads in channel c, `fill` outside the image and past
    C*kh*kw: the layout a dot kernel with lanes over output channels reads, each tap a run of C
    contiguous values (`targets/vnni_rewrite.py`; the weights' rows in the same order)."""
    _, h, w, c = x.shape
    ho, wo = _out_size(h, w, kernel, strides, pads, dilation)
    return te.compute((ho * wo, rows), lambda p, k: _tap(
        lambda ch, iy, ix: x[0, iy, ix, ch], k, p // wo, p % wo, int(c), h, w, kernel, strides, pads, dilation,
        fill, x.dtype, channel_major=False), name="conv_pixel_patches")


def packed_patches_te(x: te.Tensor, rows: int, kernel: tuple[int, int], strides: tuple[int, int],
                      pads: tuple[int, int, int, int], dilation: tuple[int, int], step: int,
                      fill: int = 0) -> te.Tensor:
    """[rows / step, Ho * Wo, step] from x [1, C, H, W]: the patches of `patches_te` (row k =
    (c, i, j)) as a dot kernel with lanes over pixels reads them, `step` rows of each pixel together,
    `fill` outside the image and past C*kh*kw (`targets/vnni_rewrite.py`)."""
    _, c, h, w = x.shape
    ho, wo = _out_size(h, w, kernel, strides, pads, dilation)
    return te.compute((rows // step, ho * wo, step), lambda r, p, q: _tap(
        lambda ch, iy, ix: x[0, ch, iy, ix], r * step + q, p // wo, p % wo, int(c), h, w, kernel, strides, pads,
        dilation, fill, x.dtype), name="conv_packed_patches")


VECTOR_BITS = 512  # the bits `window_patches` writes per store (LLVM splits them on narrower targets)


def window_patches(builder: relax.BlockBuilder, x: relax.Expr, rows: int, kernel: tuple[int, int], strides: tuple,
                   pads: tuple, dilation: tuple, step: int, fill: int = 0, name: str = "conv_packed_patches",
                   attrs: dict | None = None, width: int | None = None) -> relax.Expr:
    """`packed_patches_te` of x [1, C, H, W] ([rows / step, Ho * width, step], each output row `width` >= Wo
    pixels, those past Wo `fill`; step 1: [N, rows, Ho, Wo], as `patches_te`) as vector copies: x padded once
    (with `fill`), then for each group of `step` patch rows and each output row, `step` runs of the padded image
    (every stride-th element of each) interleaved into one store (`window_patches_func`). Rows past C kh kw are
    `fill`. The TE compute tested every element against the image's bounds and wrote a byte at a time:
    openWakeWord's embedding CNN spent half its time in three such kernels."""
    n, c, h, w = (int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in x.ty.shape)
    batch = not (isinstance(n, int) and n == 1)  # a batch (static or a free batch's n): step 1 only
    assert step == 1 or not batch, "the packed patches are of one sample"
    (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = kernel, strides, dilation, pads
    ho, wo = _out_size(h, w, kernel, strides, pads, dilation)
    width = wo if width is None else width
    assert step > 1 or width == wo, "plain patches keep the output's width"
    hp, wp = h + top + bottom, w + left + right
    # loads are whole powers of two past a run's end: rows below the image keep the last ones inside the tensor
    extra = -(-_window_lanes(wo, step, sw, str(x.ty.dtype))[1] // wp)
    xp = builder.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom + extra, left, right], pad_value=fill))
    dtype = str(x.ty.dtype)
    func = window_patches_func(c, hp + extra, wp, rows, kernel, strides, dilation, (ho, wo), step, dtype, fill,
                               batch, width)
    gv = builder.add_func(func.with_attrs({"op_pattern": OPAQUE, **(attrs or {})}), name)
    shape = [n, rows, ho, wo] if step == 1 else [rows // step, ho * width, step]
    return relax.call_tir(gv, [xp], relax.TensorType(shape, dtype))


def _window_lanes(wo: int, step: int, sw: int, dtype: str) -> tuple[int, int]:
    """(output pixels per store, the most elements a load reads past its run)."""
    lanes = min(wo, max(1, VECTOR_BITS // tvm.DataType(dtype).bits // step))
    pow2 = lambda v: 1 << (v - 1).bit_length()  # noqa: E731
    over = max(pow2(count * sw) - count * sw for count in {lanes, wo % lanes or lanes})
    return lanes, over


def window_patches_func(c: int, hp: int, wp: int, rows: int, kernel: tuple[int, int], strides: tuple,
                        dilation: tuple, out: tuple[int, int], step: int, dtype: str, fill: int,
                        batch: bool = False, row_width: int | None = None) -> tvm.tirx.PrimFunc:
    """The PrimFunc of `window_patches` over the padded image xp [1, C, hp, wp] (see there): out[g, y W + x, q]
    = xp[c, y sh + i dh, x sw + j dw] for patch row g step + q = (c, i, j) channel-major, `fill` past C kh kw and
    for x >= Wo (W = `row_width`, default Wo). Each run is read by loads of a power of two elements (LLVM split
    a load of 7 or 14 bytes into pieces), so xp holds rows below the image for the last ones.
    `batch` (step 1): over xp [n, C, hp, wp] -> [n, rows, Ho, Wo] for a symbolic n, samples in parallel too."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, strides, dilation, out
    taps, groups = c * kh * kw, rows // step
    lanes, _ = _window_lanes(wo, step, sw, dtype)
    full, tail = divmod(wo, lanes)
    wide = wo if row_width is None else row_width
    pow2 = lambda v: 1 << (v - 1).bit_length()  # noqa: E731

    n = tvm.tirx.Var("n", "int64") if batch else 1
    image, patches = c * hp * wp, rows * ho * wide  # elements of one sample
    const = lambda lanes_: T.Broadcast(tvm.tirx.const(fill, dtype), lanes_) if lanes_ > 1 else tvm.tirx.const(fill, dtype)  # noqa: E731

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            a = T.arg("a", T.buffer((n, c, hp, wp), dtype))
            o = T.arg("o", T.buffer((n, rows, ho, wo) if step == 1 else (groups, ho * wide, step), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.sblock("root"):
                src = T.decl_buffer((n * image,), dtype, data=a.data)
                dst = T.decl_buffer((n * patches,), dtype, data=o.data)

                def run(k, y, x0, load: int, b=0):
                    """`load` elements of patch row k's source from output pixel (y, x0), or None (a fill row)."""
                    if isinstance(k, int) and k >= taps:
                        return None
                    ch, t = k // (kh * kw), k % (kh * kw)
                    start = b * image + (ch * hp + y * sh + t // kw * dh) * wp + x0 * sw + t % kw * dw
                    return src.vload([start], f"{dtype}x{load}") if load > 1 else src[start]

                def store(g, y, x0, count: int, padding: int = 0, real: int | None = None, b=0):
                    """Pixels [x0, x0 + count) of output row y and `padding` fill pixels after them, patch rows
                    g step ... (the first `real` of them read, the rest `fill`), of sample b."""
                    load = pow2(count * sw)
                    vectors = [run(g * step + q, y, x0, load, b) if real is None or q < real else None
                               for q in range(step)]
                    vectors = [const(load) if v is None else v for v in vectors] + [const(max(load, (count + padding) * step))]
                    at = b * patches + (g * (ho * wide) + y * wide + x0) * step
                    total = (count + padding) * step
                    pick = [q * load + x * sw if x < count else step * load
                            for x in range(count + padding) for q in range(step)]
                    if total == 1 and load == 1:
                        T.buffer_store(dst, vectors[0], [at])
                    else:  # (one element of a longer load: a one-lane shuffle)
                        T.buffer_store(dst, T.Shuffle(vectors, pick), [T.Ramp(at, 1, total) if total > 1 else at])

                def row(g, y, real=None, b=0):
                    if full:
                        last = 0 if tail else 1
                        if full - last:
                            with T.serial(0, full - last) as t:
                                store(g, y, t * lanes, lanes, 0, real, b)
                        if last:
                            store(g, y, (full - 1) * lanes, lanes, wide - wo, real, b)
                    if tail:
                        store(g, y, full * lanes, tail, wide - wo, real, b)

                whole = taps // step  # groups whose rows all read the image
                if whole:
                    with T.parallel(0, n * (whole * ho)) as i:
                        gy = i % (whole * ho)
                        row(gy // ho, gy % ho, b=i // (whole * ho))
                for g in range(whole, groups):  # the last rows: part image, part fill
                    with T.serial(0, n * ho) as i:
                        row(g, i % ho, max(0, taps - g * step), i // ho)
    return ib.get()


def patch_rows(c: int, kh: int, kw: int, step: int = STEP) -> int:
    """Rows of the patches: the reduction C*kh*kw rounded up to whole dot-product steps."""
    return -(-c * kh * kw // step) * step


def patch_weights(weights: np.ndarray, rows: int) -> np.ndarray:
    """[O, C, kh, kw] -> [O, rows, 1, 1], zero weights for the rows past C*kh*kw."""
    o, c, kh, kw = weights.shape
    return np.pad(weights.reshape(o, c * kh * kw), [(0, 0), (0, rows - c * kh * kw)]).reshape(o, rows, 1, 1)


CHUNK = 64  # elements a vector copy of `same_patches_func` moves at a time


def same_patches_func(n: int, c: int, h: int, w: int, rows: int, kh: int, kw: int, top: int, left: int,
                      dtype: str, dilation: tuple[int, int] = (1, 1)) -> tvm.tirx.PrimFunc:
    """`patches_te` of a stride-1 conv whose output is its input's size (`same` padding), as flat copies:
    patch row (c, i, j) is channel c's plane shifted by d = (i dh - top) W + (j dw - left) (dilation
    (dh, dw)), so it is one contiguous copy of the plane (the elements whose source falls outside it zero),
    then the columns the shift wraps into the next or previous row set to zero. TE's compute tested every
    element against the image's bounds: 1 ms of open_nsfw's 8.4 in two such kernels; a dilated ASPP
    branch (CRAFT's refiner, 3x3 at dilation 6-24 over 64 x 160 x 160) 20-25 ms each as the packed TE."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    plane, taps = h * w, c * kh * kw
    zero = lambda lanes: T.Broadcast(tvm.tirx.const(0, dtype), lanes) if lanes > 1 else tvm.tirx.const(0, dtype)  # noqa: E731

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            x = T.arg("x", T.buffer((n, c, h, w), dtype))
            o = T.arg("o", T.buffer((n, rows, h, w), dtype))
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            with T.sblock("root"):
                src = T.decl_buffer((n * c * plane,), dtype, data=x.data)
                dst = T.decl_buffer((n * rows * plane,), dtype, data=o.data)

                def fill(start, count: int, value):
                    """Elements [start, start + count) of dst from value(offset, lanes), CHUNK at a time."""
                    assert count >= 0, count  # divmod would make a negative count a store before `start`
                    full, tail = divmod(count, CHUNK)
                    index = lambda at, lanes: [T.Ramp(at, 1, lanes) if lanes > 1 else at]  # noqa: E731
                    if full:
                        with T.serial(0, full) as t:
                            T.buffer_store(dst, value(t * CHUNK, CHUNK), index(start + t * CHUNK, CHUNK))
                    if tail:
                        T.buffer_store(dst, value(full * CHUNK, tail), index(start + full * CHUNK, tail))

                with T.parallel(0, n * c) as r:
                    b, ch = r // c, r % c
                    for i in range(kh):
                        for j in range(kw):
                            out = (b * rows + ch * (kh * kw) + i * kw + j) * plane
                            source = (b * c + ch) * plane
                            d = (i * dilation[0] - top) * w + (j * dilation[1] - left)
                            # [lo, hi): where the source lies inside the plane; a shift past the whole
                            # plane (a Conv1d over fewer steps than its pads) leaves it empty
                            lo = min(plane, max(0, -d))
                            hi = max(lo, min(plane, plane - d))
                            fill(out, lo, lambda at, lanes: zero(lanes))
                            fill(out + lo, hi - lo,
                                 lambda at, lanes: src.vload([source + lo + d + at], f"{dtype}x{lanes}") if lanes > 1
                                 else src[source + lo + d + at])
                            fill(out + hi, plane - hi, lambda at, lanes: zero(lanes))
                            for col in range(w):  # columns whose source wrapped into a neighbouring row
                                if not 0 <= col + j * dilation[1] - left < w:
                                    with T.serial(0, h) as y:
                                        T.buffer_store(dst, zero(1), [out + y * w + col])
                if rows > taps:  # rows past C*kh*kw: zeros
                    with T.serial(0, n) as b:
                        fill((b * rows + taps) * plane, (rows - taps) * plane, lambda at, lanes: zero(lanes))
    return ib.get()


def _rewrite(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    if len(call.args) != 2:
        return call
    x, w = call.args
    a = call.attrs
    integer = str(x.ty.dtype) in ("int8", "uint8", "int16") and str(call.ty.dtype) == "int32"
    floating = str(x.ty.dtype) == "float32" and str(call.ty.dtype) == "float32"
    if (not isinstance(w, tvm.ir.GenericConst) or not static_dims(getattr(x.ty, "shape", None))
            or not (integer or floating) or int(a.groups) != 1 or a.data_layout != "NCHW"
            or a.kernel_layout != "OIHW" or a.out_layout != "NCHW"):
        return call
    weights = w.value.numpy()
    _, c, kh, kw = weights.shape
    strides = tuple(int(s) for s in a.strides)
    pads = tuple(int(p) for p in a.padding)
    dilation = tuple(int(d) for d in a.dilation)
    if weights.dtype != (np.int8 if integer else np.float32) or ((kh, kw) == (1, 1) and strides == (1, 1)
                                                                 and not any(pads)):
        return call  # pointwise already
    rows = patch_rows(c, kh, kw) if integer else c * kh * kw
    out_shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in call.ty.shape]
    n, ho, wo = out_shape[0], out_shape[2], out_shape[3]
    size = (n if isinstance(n, int) else 1) * rows * ho * wo * np.dtype(str(x.ty.dtype)).itemsize
    if size > MAX_PATCH_BYTES:
        return _in_bands(builder, call, -(-size // MAX_PATCH_BYTES))
    cols = patches(builder, x, rows, (kh, kw), strides, pads, dilation)
    return relax.op.nn.conv2d(cols, relax.const(patch_weights(weights, rows)), out_dtype=str(call.ty.dtype))


def patches(builder: relax.BlockBuilder, x: relax.Expr, rows: int, kernel: tuple[int, int], strides: tuple,
            pads: tuple, dilation: tuple) -> relax.Expr:
    """`patches_te` of x [N, C, H, W] (flat copies where the conv keeps the image's size: `same_patches_func`;
    vector copies of the padded image's rows for other convs: `window_patches`), opaque to fusion
    and tagged with its geometry (PATCHES_ATTR; a trailing `true` where the kernel reads the padded image, whose
    `relax.nn.pad` reads x), which the x86 kernels read to gather their own packing instead
    (`targets/vnni_rewrite.py`)."""
    n, c, h, wd = (int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in x.ty.shape)
    (kh, kw), strides, pads, dilation = kernel, tuple(strides), tuple(pads), tuple(dilation)
    ho, wo = _out_size(h, wd, kernel, strides, pads, dilation)
    attrs = {"op_pattern": OPAQUE, PATCHES_ATTR: json.dumps([rows, [kh, kw], list(strides), list(pads), list(dilation)])}
    if strides == (1, 1) and (ho, wo) == (h, wd) and isinstance(n, int):  # `same` padding
        func = same_patches_func(n, c, h, wd, rows, kh, kw, pads[0], pads[1], str(x.ty.dtype), dilation)
        gv = builder.add_func(func.with_attrs(attrs), "conv_patches")
        return relax.call_tir(gv, [x], relax.TensorType([n, rows, ho, wo], str(x.ty.dtype)))
    if str(x.ty.dtype) in ("int8", "uint8", "int16", "float32"):
        geometry = json.dumps([rows, [kh, kw], list(strides), list(pads), list(dilation), True])
        return window_patches(builder, x, rows, (kh, kw), strides, pads, dilation, 1, name="conv_patches",
                              attrs={PATCHES_ATTR: geometry})
    return builder.call_te(patches_te, x, rows, (kh, kw), strides, pads, dilation, primfunc_name_hint="conv_patches",
                           primfunc_attrs=attrs)


def _in_bands(builder: relax.BlockBuilder, call: relax.Call, bands: int) -> relax.Expr:
    """The conv as `bands` convs over bands of output rows, each over its own patches, concatenated:
    an 11x11 conv of 32 channels at 256x256 has 1 GiB of float patches (the default loops took 16 s)."""
    x, w = call.args
    a = call.attrs
    kh, (sh, _), (dh, _) = int(w.ty.shape[2]), (int(v) for v in a.strides), (int(v) for v in a.dilation)
    top, left, bottom, right = (int(p) for p in a.padding)
    ho = int(call.ty.shape[2])
    xp = builder.emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, 0, 0])) if top or bottom else x
    step = -(-ho // bands)
    parts = []
    for y0 in range(0, ho, step):
        y1 = min(y0 + step, ho)
        rows = relax.op.strided_slice(xp, axes=[2], begin=[y0 * sh], end=[(y1 - 1) * sh + dh * (kh - 1) + 1])
        band = builder.normalize(relax.op.nn.conv2d(builder.emit(rows), w, a.strides, (0, left, 0, right),
                                                    a.dilation, 1, "NCHW", "OIHW", "NCHW", str(call.ty.dtype)))
        parts.append(builder.emit(_rewrite(builder, band)))
    return relax.op.concat(parts, axis=2)


@tvm.transform.module_pass(opt_level=0, name="ConvAsPointwise")
def conv_as_pointwise(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every groups-1 spatial conv (integer or float) with constant weights (see module doc)."""
    return rewrite_calls(mod, "relax.nn.conv2d", _rewrite)
