"""Conv2d and MatMul with packed 4-bit weights: the nibbles are unpacked inside the kernel.

conv2d(q_x, W4) -> call_tir(int4_conv2d, [q_x, packed uint8 constant])  -> int32 [N, O, OH, OW]
matmul(q_x, W4) -> call_tir(int4_matmul, [q_x, packed uint8 constant])  -> int32 [..., N]

The weight constant is the packed array of `passes.reference.int4.pack_int4` (flat, two
values per byte, half the bytes of int8). A separate unpack op applied to the constant
would be folded back into an int8 constant by Relax's FoldConstant (and stored unpacked),
so each kernel is one TE compute that reads its nibble in the reduction:

    v = (p[j // 2] >> 4 * (j % 2)) & 15;   w = (v ^ 8) - 8        j: flat weight index

Plain TE (no schedule): it lowers on every target; the blocks are named `int4_conv2d`
(after an `int4_pad` block when the conv pads) and `int4_matmul`, which no int8 schedule
matches. Each PrimFunc carries its op and geometry as the attribute `intq.int4`, from which
the x86 rewrite (`targets/vnni_int4.py`) replaces it with a dot-product kernel that unpacks
the nibbles in registers (its own 4-bit tile layout). Integer sums are exact in any order:
the result equals the NumPy reference.
Overflow: |acc| <= K * 255 * 8 < 2^31, checked by the caller (`linear.py`).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..reference.int4 import pack_int4


def _nibble(p: te.Tensor, j):
    """The sign-extended 4-bit value at flat index `j` of packed buffer `p`, as int32."""
    byte = p[j // 2].astype("int32")
    v = tirx.Select(j % 2 == 0, byte & 15, byte >> 4)  # no index-typed shift: the kernel stays int32
    return (v ^ 8) - 8


def _conv2d_te(x: te.Tensor, p: te.Tensor, w_shape, strides, padding, dilation, groups: int):
    n, c, h, w = (int(d) for d in x.shape)
    o, cg, kh, kw = w_shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    xp = x
    if any(padding):
        zero = tirx.const(0, x.dtype)
        xp = te.compute((n, c, h + pt + pb, w + pl + pr), lambda b, ci, y, xx: tirx.if_then_else(
            tirx.all(y >= pt, y < h + pt, xx >= pl, xx < w + pl), x[b, ci, y - pt, xx - pl], zero), name="int4_pad")
    rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    return te.compute((n, o, oh, ow), lambda b, oc, y, xx: te.sum(
        xp[b, oc // og * cg + rc, y * sh + ry * dh, xx * sw + rx * dw].astype("int32")
        * _nibble(p, ((oc * cg + rc) * kh + ry) * kw + rx), axis=[rc, ry, rx]), name="int4_conv2d")


def _matmul_te(x: te.Tensor, p: te.Tensor, w_shape):
    k_len, n_len = w_shape
    k = te.reduce_axis((0, k_len), "k")
    return te.compute((*x.shape[:-1], n_len), lambda *i: te.sum(
        x[(*i[:-1], k)].astype("int32") * _nibble(p, k * n_len + i[-1]), axis=k), name="int4_matmul")


PATCH_STEP = 8  # patch rows per two 4-byte dot-product steps: what the 4-bit x86 kernels take (zero rows pad)
STEM_CHANNELS = 4  # a conv over this few channels (an RGB stem) keeps its own kernel (flat rows on x86)


def conv2d_int4(bb: relax.BlockBuilder, x: relax.Expr, w_q: np.ndarray, attrs, patches_of: dict | None = None
                ) -> relax.Expr:
    """int8/uint8 x packed int4 conv2d (NCHW/OIHW), int32 accumulation, the float conv's geometry. A
    spatial conv of one group is a pointwise conv over its patches (as `conv_as_pointwise.py` makes
    the 8-bit ones), so that it runs on the 4-bit dot-product kernels: TVM's loops ran OriNet's 3x3
    convs 4-6x slower than 8-bit. The same products, summed in another order: the same int32. The
    patched conv's geometry keeps the spatial conv's (`patches_of`): x86 runs it on the 8-bit taps
    kernels with the weights unpacked at every call (`targets/int4_taps.py`)."""
    patched = _over_patches(bb, x, w_q, attrs)
    if patched is not None:
        return patched
    packed = relax.const(pack_int4(w_q), "uint8")
    ints = lambda v: tuple(int(i) for i in v)
    geometry = _geometry(w_q, attrs)
    if patches_of is not None:
        geometry["patches_of"] = patches_of
    return bb.call_te(_conv2d_te, x, packed, tuple(w_q.shape), ints(attrs.strides), ints(attrs.padding),
                      ints(attrs.dilation), int(attrs.groups), primfunc_name_hint="int4_conv2d",
                      primfunc_attrs={"intq.int4": geometry})


def _geometry(w_q: np.ndarray, attrs) -> dict:
    ints = lambda v: [int(i) for i in v]  # noqa: E731
    return {"op": "conv2d", "weight_shape": list(w_q.shape), "strides": ints(attrs.strides),
            "padding": ints(attrs.padding), "dilation": ints(attrs.dilation), "groups": int(attrs.groups)}


def _over_patches(bb: relax.BlockBuilder, x: relax.Expr, w_q: np.ndarray, attrs) -> relax.Expr | None:
    from ..conv_as_pointwise import MAX_PATCH_BYTES, patch_rows, patch_weights, patches_te

    _, c, kh, kw = w_q.shape
    strides, pads = tuple(int(v) for v in attrs.strides), tuple(int(v) for v in attrs.padding)
    dilation = tuple(int(v) for v in attrs.dilation)
    shape = getattr(x.ty, "shape", None)
    if int(attrs.groups) != 1 or (kh, kw) == (1, 1) or c <= STEM_CHANNELS or shape is None or \
            not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    n, _, h, w = (int(d) for d in shape)
    ho = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    rows = patch_rows(c, kh, kw, PATCH_STEP)
    if n * rows * ho * wo > MAX_PATCH_BYTES:
        return None
    cols = bb.emit(bb.call_te(patches_te, x, rows, (kh, kw), strides, pads, dilation,
                              primfunc_name_hint="conv_patches"))
    return conv2d_int4(bb, cols, patch_weights(w_q, rows), SimpleNamespace(
        strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1), patches_of=_geometry(w_q, attrs))


def matmul_int4(bb: relax.BlockBuilder, x: relax.Expr, w_q: np.ndarray) -> relax.Expr:
    """int8/uint8 [..., K] x packed int4 [K, N] matmul, int32 accumulation."""
    packed = relax.const(pack_int4(w_q), "uint8")
    return bb.call_te(_matmul_te, x, packed, tuple(w_q.shape), primfunc_name_hint="int4_matmul",
                      primfunc_attrs={"intq.int4": {"op": "matmul", "weight_shape": list(w_q.shape)}})
