"""x86 int8 dot-product kernel families, chosen from the target's features (data, not branches).

A family lists the dot-product recipes its kernels may use, best first. Each recipe adds, in
every int32 lane of one vector, the dot product of `k` activations with `k` weights:

    avx512-vnni  vnni     16 lanes x 4   vpdpbusd zmm (u8 x s8 -> s32)
    avx-vnni     avxvnni   8 lanes x 4   {vex} vpdpbusd ymm
    avx512bw     maddwd512 16 lanes x 2  vpmaddwd zmm, as maddwd below
    avx2         maddubs   8 lanes x 4   vpmaddubsw (u8 x s8 pairs -> s16, SATURATING)
                                         + vpmaddwd with ones (s16 pairs -> s32) + vpaddd
                 maddwd    8 lanes x 2   vpmaddwd on int16 activations and int8 weights
                                         widened by vpmovsxbw, + vpaddd (exact)
    generic      -                        the default loops (cpu_schedules.py)

The amx family (Sapphire Rapids and later) is avx512-vnni plus AMX tile kernels for int8
matmuls and pointwise convs with constant weights of enough rows (`amx.py`: 16 x 64 x 16 per instruction).

Activation x activation matmuls (attention's Q.K^T and P.V: `act_matmul.py`) pack their right
operand at run time. 8-bit operands take the family's u8 x s8 recipe (`vpmaddubsw` only where
the operands' ranges prove it safe; run-time int8 never is); int16 operands (15-bit
probabilities, 16-bit V), and 8-bit ones on families without a u8 x s8 recipe, take the
family's word recipe, int16 x int16 pairs -> int32:

    avx512-vnni  wvnni       16 lanes x 2  vpdpwssd zmm
    avx-vnni     wavxvnni     8 lanes x 2  {vex} vpdpwssd ymm
    avx512bw     wmaddwd512  16 lanes x 2  vpmaddwd zmm + vpaddd
    avx2         wmaddwd      8 lanes x 2  vpmaddwd ymm + vpaddd

Activations kept at 16 bits (measured-sensitive tensors) with int8 weights take the family's
`wide` recipe, int16 x int8 widened in registers -> int32: `wvnni8` ({vex} `wavxvnni8`,
`vpdpwssd`) on the VNNI families, `maddwd512` / `maddwd` on the others.

None of these saturates (vpdpwssd, vpdpbusd and vpmaddwd wrap modulo 2^32; only the pair
-32768 * -32768 * 2 wraps inside vpmaddwd, and then the int32 result wraps the same way), so
every recipe equals the plain int32 loop bit for bit, overflow or not.

`maddubs` is used only where `maddubs_safe` proves no pair sum can saturate (see there);
otherwise `maddwd` widens both operands to int16, where pairs of 8-bit products cannot. With
per-channel full-range int8 weights the proof rarely holds (each output channel has a weight
of magnitude 127, whose pair partner must then be 0 or 1, or of the other sign): all 32
pointwise convs and the classifier of EfficientNet-Lite0 take `maddwd`. Both spend two
multiply uops per 32 products (vpmaddubsw + vpmaddwd, or two vpmaddwd), so the exact path
costs an add and a widening more, not half the speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm.script import tirx as T


def _intrin(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def _vpdpbusd(bits: int, lanes: int):
    # LLVM 22 selects the VEX form ({vex} vpdpbusd) for the .256 intrinsic under +avxvnni alone
    return lambda acc, a, w: _intrin(f"llvm.x86.avx512.vpdpbusd.{bits}", f"int32x{lanes}", acc, a, w)


def _maddubs(acc, a, w):
    pairs = _intrin("llvm.x86.avx2.pmadd.ub.sw", "int16x16", a, w)
    return acc + _intrin("llvm.x86.avx2.pmadd.wd", "int32x8", pairs, T.broadcast(T.int16(1), 16))


def _vpdpwssd(bits: int, lanes: int):
    return lambda acc, a, w: _intrin(f"llvm.x86.avx512.vpdpwssd.{bits}", f"int32x{lanes}", acc, a, w)


def _vpdpwssd_widened(bits: int, lanes: int):
    # int8 weights stored as int8, widened on load as in `_maddwd`
    dot = _vpdpwssd(bits, lanes)
    return lambda acc, a, w: dot(acc, a, T.Cast(f"int16x{2 * lanes}", w))


def _maddwd_words(name: str, lanes: int):
    return lambda acc, a, w: acc + _intrin(name, f"int32x{lanes}", a, w)


def _maddwd(name: str, lanes: int):
    # int8 weights are stored as int8 (half the bytes of int16) and widened on load (vpmovsxbw)
    return lambda acc, a, w: acc + _intrin(name, f"int32x{lanes}", a, T.Cast(f"int16x{2 * lanes}", w))


@dataclass(frozen=True)
class Dot:
    """One dot-product recipe: `lanes` int32 accumulators += `k` a_dtype x w_dtype products each."""

    name: str  # prefix of the kernel's block names (`vnni_dense`, `maddwd_conv_lanes_out`)
    lanes: int
    k: int  # k activations make 32 bits: one broadcast int32
    a_dtype: str
    w_dtype: str  # as stored; narrower than a_dtype: widened to it in registers
    registers: int  # vector registers of the ISA: bounds the accumulator tile
    combine: Callable  # (acc, activation vector, weight vector) -> acc, TIR expressions

    @property
    def shift(self) -> bool:
        """int8 activations move to uint8 (+128, taken back per channel); int16 needs no shift."""
        return self.a_dtype == "uint8"


VNNI = Dot("vnni", 16, 4, "uint8", "int8", 32, _vpdpbusd(512, 16))
AVXVNNI = Dot("avxvnni", 8, 4, "uint8", "int8", 16, _vpdpbusd(256, 8))
MADDUBS = Dot("maddubs", 8, 4, "uint8", "int8", 16, _maddubs)
MADDWD = Dot("maddwd", 8, 2, "int16", "int8", 16, _maddwd("llvm.x86.avx2.pmadd.wd", 8))
MADDWD512 = Dot("maddwd512", 16, 2, "int16", "int8", 32, _maddwd("llvm.x86.avx512.pmaddw.d.512", 16))
# int16 x int16 (activation x activation matmuls)
WVNNI = Dot("wvnni", 16, 2, "int16", "int16", 32, _vpdpwssd(512, 16))
WAVXVNNI = Dot("wavxvnni", 8, 2, "int16", "int16", 16, _vpdpwssd(256, 8))
WMADDWD512 = Dot("wmaddwd512", 16, 2, "int16", "int16", 32, _maddwd_words("llvm.x86.avx512.pmaddw.d.512", 16))
WMADDWD = Dot("wmaddwd", 8, 2, "int16", "int16", 16, _maddwd_words("llvm.x86.avx2.pmadd.wd", 8))
# int16 activations x int8 weights (16-bit activations of constant-weight convs and matmuls)
WVNNI8 = Dot("wvnni8", 16, 2, "int16", "int8", 32, _vpdpwssd_widened(512, 16))
WAVXVNNI8 = Dot("wavxvnni8", 8, 2, "int16", "int8", 16, _vpdpwssd_widened(256, 8))
DOTS = {d.name: d for d in (VNNI, AVXVNNI, MADDUBS, MADDWD, MADDWD512, WVNNI, WAVXVNNI, WMADDWD512, WMADDWD,
                            WVNNI8, WAVXVNNI8)}


@dataclass(frozen=True)
class Family:
    name: str
    needs: tuple[str, ...]  # LLVM features the target must have
    dots: tuple[Dot, ...]  # best first
    word: Dot | None = None  # int16 x int16 recipe (activation x activation matmuls)
    wide: Dot | None = None  # int16 activations x int8 weights
    tiles: bool = False  # AMX tiles for int8 matmuls and pointwise convs with constant weights (`amx.py`)

    def recipes(self, activation_dtype: str) -> tuple[Dot, ...]:
        """The recipes for constant int8 weights and activations of this dtype, best first."""
        if activation_dtype in ("int8", "uint8"):
            return self.dots
        return (self.wide,) if activation_dtype == "int16" and self.wide else ()


# Best first; the first whose features the target has is chosen.
FAMILIES = (
    Family("amx", ("amx-int8", "amx-tile", "avx512vnni", "avx512bw"), (VNNI,), WVNNI, WVNNI8, tiles=True),
    Family("avx512-vnni", ("avx512vnni", "avx512bw"), (VNNI,), WVNNI, WVNNI8),
    Family("avx-vnni", ("avxvnni", "avx2"), (AVXVNNI,), WAVXVNNI, WAVXVNNI8),
    Family("avx512bw", ("avx512bw",), (MADDWD512,), WMADDWD512, MADDWD512),  # Skylake-SP: AVX-512 without VNNI
    Family("avx2", ("avx2",), (MADDUBS, MADDWD), WMADDWD, MADDWD),
)
GENERIC = Family("generic", (), ())


def is_x86(target) -> bool:
    """An LLVM target for x86-64 (the host when it names no triple)."""
    triple = str(target.attrs.get("mtriple", "") or "") if target is not None else ""
    return target is not None and target.kind.name == "llvm" and (not triple or triple.startswith("x86_64"))


def kernel_family(target) -> Family:
    """The family for an LLVM x86 target, from its mcpu and mattr as LLVM reads them."""
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if target.kind.name != "llvm" or (triple and not triple.startswith(("x86_64", "i686"))):
        return GENERIC
    return next((f for f in FAMILIES if codegen.target_has_features(list(f.needs), target)), GENERIC)


INT16_MAX = 32767


def maddubs_safe(w_nk: np.ndarray, a_max: int) -> bool:
    """True when `vpmaddubsw` cannot saturate for int8 weights [N, K] (K pairs (2i, 2i+1)) and
    activations in [0, a_max]: each pair's largest sum a_max * (w0+ + w1+) <= 32767 and its
    smallest -a_max * (w0- + w1-) >= -32768 (x+ = max(x, 0), x- = max(-x, 0)). The weights are
    compile-time constants, so this is a proof for every activation in range. An odd K's last
    weight pairs with the zero the caller pads K with (`_padded`)."""
    w = w_nk.astype(np.int64).reshape(w_nk.shape[0], -1)
    w = np.pad(w, ((0, 0), (0, w.shape[1] % 2))).reshape(w.shape[0], -1, 2)
    pos, neg = np.maximum(w, 0).sum(-1), np.maximum(-w, 0).sum(-1)
    return bool(a_max * pos.max(initial=0) <= INT16_MAX and a_max * neg.max(initial=0) <= INT16_MAX + 1)


def maddubs_safe_range(a_max: int, w_lo: int, w_hi: int) -> bool:
    """`maddubs_safe` for weights known only by their range [w_lo, w_hi] (a run-time operand):
    the worst pair is two extreme weights of one sign."""
    return a_max * 2 * max(w_hi, 0) <= INT16_MAX and a_max * 2 * max(-w_lo, 0) <= INT16_MAX + 1
