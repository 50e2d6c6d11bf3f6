"""4-bit spatial convs on the 8-bit taps kernels, their weights stored two to a byte and unpacked per call.

The lowering writes a 4-bit spatial conv of one group as a pointwise 4-bit conv over its patches
(`passes/lowering/int4.py`, `patches_of` in the kernel's `intq.int4` geometry), or, where the patches
would be too big, as its plain `int4_conv2d`. On x86 the 4-bit pointwise kernels then ran it at ~5x
the 8-bit taps kernel's time (a 64-channel 3x3 layer at 80x80: 6.5 against 1.3 ms), the plain one in
TVM's loops. `vnni_rewrite` gives such a conv to its taps kernels instead (`amx.taps_te` on AMX,
`vnni.conv_taps_te` else), on the conv's own input, or, for rows the taps leave to patches (16 pixels
or fewer), to its 8-bit pointwise kernels over the patches; with the weights in those kernels' layout held
at 4 bits in the library: `stored` packs value i with value i + N/2 into one byte, and a small kernel
unpacks them into int8 (or the recipe's int16) at every call. It reads half a byte and writes one per
weight, against ~Ho Wo multiply-adds per weight in the conv, so the conv costs about what it costs at
8 bits (the point of 4 bits there is the size: compute-bound convs gain no speed from narrower weights).
On AMX the same holds for 4-bit pointwise convs and many-row matmuls (`dense`): the 8-bit tile kernels on
weights unpacked per call run at the tiles' rate, the 4-bit dot-product kernels at VNNI's.
The unpack kernel also takes the conv's input, unread, so that FoldConstant does not evaluate it at
compile time (which would store the weights unpacked again). The same products as the reference:
the same int32 sums.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import tvm
from tvm import relax, te, tirx

from passes.conv_as_pointwise import OPAQUE

ATTR = "intq.int4"  # the lowering's geometry attribute (`passes/lowering/int4.py`)


def spatial_conv(mod: tvm.IRModule, lookup, call: relax.Call) -> tuple | None:
    """(x, w [O, C, kh, kw] int8 values in [-8, 7], attrs, patched) of a 4-bit spatial conv of one group: the
    lowering's pointwise conv over patches (x the patches' input, `lookup(var)` its binding; `patched` the patch
    weights [O, rows, 1, 1]) or its plain conv (`patched` None); else None."""
    read = _lowered(mod, call)
    if read is None or str(read[0]["op"]) != "conv2d":
        return None
    geometry, x, w = read
    ints = lambda g, key: [int(v) for v in g[key]]  # noqa: E731
    g, patched = geometry, None
    source = geometry.get("patches_of")
    if source is not None:  # [O, rows, 1, 1] over the patches of x: rows c * kh * kw + i * kw + j, zero-padded
        patches = lookup(x) if isinstance(x, relax.Var) else None
        if patches is None or not isinstance(patches, relax.Call) or not isinstance(patches.args[1], relax.Tuple):
            return None
        patched = w
        x, g = patches.args[1].fields[0], source
        o, c, kh, kw = ints(g, "weight_shape")
        w = np.ascontiguousarray(w.reshape(o, -1)[:, :c * kh * kw].reshape(o, c, kh, kw))
    if int(g["groups"]) != 1 or w.shape[2] * w.shape[3] == 1:
        return None
    attrs = SimpleNamespace(strides=ints(g, "strides"), padding=ints(g, "padding"), dilation=ints(g, "dilation"))
    return x, w, attrs, patched


def dense(mod: tvm.IRModule, call: relax.Call) -> tuple | None:
    """(x, w int8 values in [-8, 7]) of the lowering's 4-bit matmul (w [K, N]) or pointwise conv of one group,
    stride 1 and no padding (w [O, C]); else None."""
    read = _lowered(mod, call)
    if read is None:
        return None
    g, x, w = read
    if str(g["op"]) == "conv2d":
        ints = lambda key: [int(v) for v in g[key]]  # noqa: E731
        if (w.ndim != 4 or w.shape[2:] != (1, 1) or int(g["groups"]) != 1 or any(ints("padding"))
                or any(v != 1 for v in ints("strides") + ints("dilation"))):
            return None
        return x, w.reshape(w.shape[:2])
    return (x, w) if w.ndim == 2 else None


def _lowered(mod: tvm.IRModule, call: relax.Call) -> tuple | None:
    """(geometry, x, w unpacked) of a call to one of the lowering's 4-bit kernels (`intq.int4` geometry); else None."""
    from passes.reference.int4 import unpack_int4

    if call.op != tvm.ir.Op.get("relax.call_tir") or not isinstance(call.args[0], tvm.ir.GlobalVar) \
            or call.args[0] not in mod.functions:
        return None
    func = mod[call.args[0]]
    geometry = func.attrs.get(ATTR) if isinstance(func, tvm.tirx.PrimFunc) and func.attrs else None
    args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
    if geometry is None or len(args) != 2 or not isinstance(args[1], tvm.ir.GenericConst):
        return None
    return geometry, args[0], unpack_int4(args[1].value.numpy(), [int(v) for v in geometry["weight_shape"]])


def stored(bb: relax.BlockBuilder, weights: np.ndarray, like: relax.Expr) -> relax.Expr:
    """`weights` (values in [-8, 7], any shape, an even count) as the output of a kernel that unpacks them from a
    constant of half the bytes at every call; `like` (an input of the conv) keeps it from being folded."""
    flat = weights.reshape(-1).astype(np.int64)
    if flat.size % 2:  # the taps kernels' channels are whole dot-product steps: never so
        return relax.const(weights)
    half = flat.size // 2
    packed = ((flat[:half] & 15) | ((flat[half:] & 15) << 4)).astype(np.uint8)
    # a kernel of its own (fused with a reshape, it wrote through a staging buffer at a third of the speed);
    # its [2, N/2] output viewed in the weights' shape, not reshaped (an R.reshape became a copy kernel)
    out = bb.emit(bb.call_te(unpack_te, relax.const(packed, "uint8"), like, str(weights.dtype),
                             primfunc_name_hint="int4_unpack", primfunc_attrs={"op_pattern": OPAQUE}))
    return bb.emit(relax.op.memory.view(out, list(weights.shape)))


def unpack_te(packed: te.Tensor, like: te.Tensor, dtype: str) -> te.Tensor:
    """[2, N/2]: row 0 the low nibbles, row 1 the high ones, sign-extended; `like` is not read."""
    def value(h, i):
        nibble = tirx.Select(h == 0, packed[i] & tirx.const(15, "uint8"), packed[i] >> tirx.const(4, "uint8"))
        return ((nibble ^ tirx.const(8, "uint8")).astype("int8") - tirx.const(8, "int8")).astype(dtype)

    return te.compute((2, packed.shape[0]), value, name="int4_unpack")
