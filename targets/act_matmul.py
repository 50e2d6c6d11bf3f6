"""Activation x activation int matmuls (attention's Q.K^T and P.V) -> x86 dot-product kernels
with the right operand packed at run time, batched over heads (called by `vnni_rewrite.py`).

    matmul(A[..., M, K], B[..., K, N]) (int8/uint8/int16, out int32)
        -> slice_N({dot}_dense(A', Bp, tail))
    (Bp, tail) = {dot}_pack(B):  Bp[..., Np/L, K'/k, L, k] = B[..., K' rows, N columns zero-padded to Np]
                               tail[..., t, Np] = B's last t = K - K' rows (K' = k * floor(K / k))

The recipe (`kernel_family.py`): two 8-bit operands (B int8) take the family's u8 x s8 recipe
(A int8 is shifted to uint8, A' = A + 128, and the kernel takes back 128 * sum_k Bp, summed
from the packed operand by a small kernel of its own), `vpmaddubsw` only where the operands' ranges
prove no pair saturates (never for int8 A shifted to 255); everything else (int16 operands:
15-bit probabilities, 16-bit V; uint8 B) takes the family's int16 x int16 word recipe with
both operands widened to int16. The family's generic loops stay where it has no recipe.
All recipes sum the same int32 products modulo 2^32: bit-exact with the plain loop. The pack
kernel takes B's producer (its requantization, a transpose) inlined and stores one vector per
(L columns, k rows) tile (`vnni.schedule_pack`).
A free batch (a symbolic leading dim, `passes/generalize_batch.py`) loops over the same kernel:
its tiles are those of one sample (before, the symbolic library ran MiniLM's attention matmuls as
generic loops, 3.3 of its 16.5 ms a sample at batch 8). Not rewritten (generic loops): broadcast
batch dims, symbolic inner dims, other dtypes.
"""

from __future__ import annotations

import tvm
from tvm import relax, te

from . import vnni
from .kernel_family import MADDUBS, Dot, Family, maddubs_safe_range
from .schedule_common import static_factor

_DTYPES = ("int8", "uint8", "int16")
SHIFT = 128  # int8 -> uint8 for the u8 x s8 recipes


def pack_te(b: te.Tensor, lanes: int, k: int, n_pad: int, dtype: str, dot: str):
    """B [..., K, N] -> Bp [..., Np/L, K'/k, L, k], or [Bp, tail [..., t, Np]] when K % k."""
    *batch, kdim, n = b.shape  # batch dims may be symbolic (a free batch)
    kdim, n = int(kdim), int(n)
    main, t = kdim - kdim % k, kdim % k

    def at(i, row, col):
        return tvm.tirx.if_then_else(col < n, b[(*i, row, tvm.tirx.min(col, n - 1))].astype(dtype),
                                     tvm.tirx.const(0, dtype))

    nb = len(batch)
    bp = te.compute([*batch, n_pad // lanes, main // k, lanes, k],
                    lambda *i: at(i[:nb], i[nb + 1] * k + i[nb + 3], i[nb] * lanes + i[nb + 2]), name=f"{dot}_{vnni.PACK}")
    if not t:
        return bp
    tail = te.compute([*batch, t, n_pad], lambda *i: at(i[:nb], main + i[nb], i[nb + 1]), name=f"{dot}_{vnni.PACK}tail")
    return [bp, tail]


def _recipe(family: Family, a_dtype: str, b_dtype: str) -> tuple[Dot | None, bool]:
    """(recipe, shift A by +128) for operands of these dtypes, or (None, False)."""
    if a_dtype in ("int8", "uint8") and b_dtype == "int8":
        a_max = 255  # uint8, or int8 shifted
        byte = next((d for d in family.dots if d.a_dtype == "uint8" and d.w_dtype == "int8"
                     and (d is not MADDUBS or maddubs_safe_range(a_max, -128, 127))), None)
        if byte is not None:
            return byte, a_dtype == "int8"
    return family.word, False


def _tile_columns(n: int, lanes: int) -> int:
    """N padded to whole vectors; two at least (a 2-vector tile reuses each broadcast word)."""
    step = lanes if n <= lanes else 2 * lanes
    return -(-n // step) * step


def rewrite(builder: relax.BlockBuilder, call: relax.Call, family: Family) -> relax.Expr | None:
    """The kernel call replacing int32 `matmul(A, B)` of two activations, or None."""
    a, b = call.args
    a_shape, b_shape = _static(a), _static(b)
    a_dtype, b_dtype = str(a.ty.dtype), str(b.ty.dtype)
    if (a_shape is None or b_shape is None or a_dtype not in _DTYPES or b_dtype not in _DTYPES
            or len(a_shape) < 2 or len(b_shape) < 2 or not all(isinstance(d, int) for d in (a_shape[-1], *b_shape[-2:]))
            or a_shape[-1] != b_shape[-2]
            or (len(b_shape) > 2 and not _same(b_shape[:-2], a_shape[len(a_shape) - len(b_shape):-2]))):
        return None
    dot, shift = _recipe(family, a_dtype, b_dtype)
    k, n = b_shape[-2:]
    if dot is None or k < dot.k:
        return None
    n_pad = _tile_columns(n, dot.lanes)
    rows = vnni.padded_rows(a_shape[-2])  # 257 tokens: 260 (zero rows, sliced off below)
    if vnni.dense_tile(static_factor(rows), n_pad, dot) is None:
        return None
    if shift:
        a = builder.emit(relax.op.astype(relax.op.add(relax.op.astype(a, "int16"), relax.const(SHIFT, "int16")),
                                         "uint8"))
    elif a_dtype != dot.a_dtype:
        a = builder.emit(relax.op.astype(a, dot.a_dtype))
    if rows != a_shape[-2]:
        a = builder.emit(vnni.pad_rows(a, rows - a_shape[-2]))
    packed = builder.emit(builder.call_te(pack_te, b, dot.lanes, dot.k, n_pad, dot.w_dtype, dot.name,
                                          primfunc_name_hint=f"{dot.name}_{vnni.PACK}"))
    bp, tail = ((builder.emit(relax.TupleGetItem(packed, 0)), builder.emit(relax.TupleGetItem(packed, 1)))
                if k % dot.k else (packed, None))
    corr = builder.emit(builder.call_te(vnni.colsum_te, bp, SHIFT, dot.name, primfunc_name_hint=f"{dot.name}_colsum")
                        ) if shift else None
    out = builder.call_te(vnni.dense_te, a, bp, corr, dot.name, tail, SHIFT if shift else 0,
                          primfunc_name_hint=f"{dot.name}_act_dense")
    return vnni.slice_back(builder, out, a_shape[-2], rows, n, n_pad)


def _static(expr) -> list | None:
    """Dims as ints; a symbolic leading dim (a free batch) stays an expression; None otherwise."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in list(shape)[1:]):
        return None
    return [int(d) if isinstance(d, tvm.tirx.IntImm) else d for d in shape]


def _same(dims: list, others: list) -> bool:
    """Equal batch dims: the same ints, or the same symbolic expression."""
    return len(dims) == len(others) and all(
        d == o if isinstance(d, int) and isinstance(o, int) else
        not isinstance(d, int) and not isinstance(o, int) and tvm.sym.Analyzer().can_prove_equal(d, o)
        for d, o in zip(dims, others))
