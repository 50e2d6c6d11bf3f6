"""Vectors of 32 x 32 -> 64-bit requantizations on their even and odd lanes, no widening shuffles.

`requant.py`'s unsigned form computes, per lane of a vector of L uint32 values u,

    q = int32((uint64(u) * uint64(m) + c) >> s)

and LLVM widens u to two vectors of L/2 uint64 (a 256-bit extract and two `vpmovzxdq`: three
shuffles for 16 lanes) before its `vpmuludq`s, and narrows q back with two truncations and an
unpack. `vpmuludq` multiplies the low 32 bits of each 64-bit lane, so the 32-bit vector seen as
L/2 uint64 lanes already holds the even lanes where it reads them, and one logical shift by 32
brings the odd ones there:

    even = (uint64xL/2(u) & 0xffffffff) * m_even + c_even >> s_even     (lane 2j of q in its low half)
    odd  = (uint64xL/2(u) >> 32) * m_odd + c_odd >> s_odd               (lane 2j+1)
    q    = the low halves of even and odd interleaved                    (one two-source permutation)

The results are the same integers lane by lane (the multiply, add and shift are those of the
scalar expression; the low half of a uint64 is its truncation to int32). Runs on lowered,
vectorized TIR (`vpmuludq`'s operand whose upper halves are known zero is LLVM's own pattern:
no intrinsic), on x86 (`tir_pipeline.py`), for lane counts that are multiples of 8 with AVX-512
(a depthwise conv's rows of 14 lanes, 2 x 7 uint64, were slower: 0.140 -> 0.146 ms) and of 16
with AVX2 only (whose interleave of 56 lanes LLVM built lane by lane: EfficientNet-Lite0's stem
0.336 -> 0.414 ms built for x86-64-v3).
EfficientNet-Lite0's epilogue-bound 1x1 convs were the reason (their requantization ~15
instructions per 16 outputs against 4 dot products; Zen 4, 1 thread, kernel alone, best of 6
alternating rounds: 112x112 16 -> 96 0.283 -> 0.263 ms, 56x56 24 -> 144 0.121 -> 0.113, 14x14
112 -> 672 0.109 -> 0.103).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

LOW = 0xFFFFFFFF
STEP = 8  # lane counts rewritten: whole multiples of this (see the module doc)


def _type(e) -> tvm.DataType:
    return tvm.DataType(str(e.ty.dtype))


def _splat(value: int, lanes: int):
    return tirx.Broadcast(tirx.const(value, "uint64"), lanes)


def _is_widened(e, lanes: int):
    """u where e is uint64xL(u) of a uint32xL vector u (zero-extended; an int32 one would be
    sign-extended), else None."""
    if isinstance(e, tirx.Cast) and str(_type(e.value)) == f"uint32x{lanes}":
        return e.value
    return None


def _halves(e, lanes: int):
    """(even, odd): uint64 vectors of L/2 lanes holding e's (uint64xL) even and odd lanes in their low
    32 bits where e widens a uint32 vector (the high bits zero), or whole."""
    half = lanes // 2
    if isinstance(e, tirx.Broadcast):
        value = e.value
        return tirx.Broadcast(value, half), tirx.Broadcast(value, half)
    narrow = _is_widened(e, lanes)
    if narrow is not None:  # a uint32 vector widened: its halves in place, as for u
        wide = tirx.reinterpret(f"uint64x{half}", narrow)
        return wide & _splat(LOW, half), wide >> _splat(32, half)
    return (tirx.Shuffle([e], [2 * j for j in range(half)]), tirx.Shuffle([e], [2 * j + 1 for j in range(half)]))


def _rewrite(cast, permute: bool):
    """cast = int32xL((uint64xL(u) * m + c) >> s) on even and odd lanes, or the cast as it is (L not
    a multiple of STEP); the halves interleaved by a permutation or by in-lane shift and or."""
    t = _type(cast)
    lanes = t.lanes
    if t.bits != 32 or lanes % STEP or not isinstance(cast.value, tirx.RShift):
        return cast
    shift = cast.value
    add = shift.a
    if not isinstance(add, tirx.Add) or _type(add) != tvm.DataType(f"uint64x{lanes}"):
        return cast
    for mul, c in ((add.a, add.b), (add.b, add.a)):
        if not isinstance(mul, tirx.Mul):
            continue
        for x, m in ((mul.a, mul.b), (mul.b, mul.a)):
            if _is_widened(x, lanes) is None:
                continue
            half = lanes // 2
            inputs, *parts = (_halves(v, lanes) for v in (x, m, c, shift.b))
            products = [(inputs[k] * parts[0][k] + parts[1][k]) >> parts[2][k] for k in (0, 1)]
            if permute:  # one two-source permutation (vpermt2d)
                words = [tirx.reinterpret(f"int32x{lanes}", p) for p in products]
                out = tirx.Shuffle(words, [i for j in range(half) for i in (2 * j, lanes + 2 * j)])
            else:  # in-lane ops: the odd results into the high halves
                out = tirx.reinterpret(f"int32x{lanes}", (products[0] & _splat(LOW, half)) | (products[1] << _splat(32, half)))
            return out if str(t) == f"int32x{lanes}" else tirx.reinterpret(str(t), out)
    return cast


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="EvenOddMultiply")
def even_odd_multiply(func, _mod, _ctx):
    """Rewrite every vectorized unsigned 32 x 32 -> 64-bit requantization of an x86 kernel (see
    module doc)."""
    from .exp2_cubic import has_avx512
    from .kernel_family import is_x86

    target = func.attrs.get("target") if func.attrs is not None else None
    if not is_x86(target):
        return func
    permute = has_avx512(target)  # a two-source permutation (vpermt2d) exists
    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.Cast, lambda c: _rewrite(c, permute))]))
