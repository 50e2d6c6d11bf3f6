"""TeCallsToOps: the importer's data-movement `call_tir`s -> Relax ops.

    call_tir(pad | mirror_pad | replicate_pad, (x,))  -> R.nn.pad(x, widths, constant | reflect | replicate, v)
    call_tir(tile, (x,))                              -> R.tile(x, repeats)

TVM's ONNX importer emits Pad and Tile through `emit_te`, so the ops reach later passes as
opaque PrimFuncs that the integer lowering cannot see into. The parameters are recovered by
running the PrimFunc once on probes (x = +-(1..N), exact in float32 for N < 2^24, or in the
int32/int64 a tiled index tensor has; a bool mask or narrow integers by bit planes of the index): a padded
position holds the same constant for both probes, every other output names its source
element. The recovered op is checked against NumPy on the probe; a call that does not match
(or is too large to probe) is left as it was. A pad that pads nothing (TF's "SAME" where no
padding is needed) is its input; equal PrimFuncs at equal shapes are probed once.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .relax_rewrite import mutate_functions

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_PAD_MODES = {"pad": ("constant", "constant"), "mirror_pad": ("reflect", "reflect"),
              "replicate_pad": ("replicate", "edge")}  # importer name -> (Relax mode, NumPy mode)
_NAME = re.compile(r"(pad|mirror_pad|replicate_pad|tile)\d*")
_MAX_PROBE = 2**24


def _run(prim: tvm.tirx.PrimFunc, x: np.ndarray, out_shape: list[int]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": prim.with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(out_shape, x.dtype))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


def _bit_planes(prim, in_shape: list[int], out_shape: list[int], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """What `_recover`'s probe gives, (1 + source index, or the pad constant; the same for the
    negated probe), for a dtype too narrow to hold indices (a bool mask, int8): the all-false and
    all-true inputs tell padded positions (the same output for both), and one input per bit of
    the index, that bit of each element, tells every other position its source."""
    size = int(np.prod(in_shape))
    low, high = (np.zeros(in_shape, dtype), np.ones(in_shape, dtype))
    out_low, out_high = _run(prim, low, out_shape), _run(prim, high, out_shape)
    padded = out_low == out_high
    index = np.zeros(out_shape, np.int64)
    flat = np.arange(size, dtype=np.int64).reshape(in_shape)
    for bit in range(max(1, int(size - 1).bit_length())):
        plane = ((flat >> bit) & 1).astype(dtype)
        index |= (_run(prim, plane, out_shape) != out_low).astype(np.int64) << bit
    const = out_low.astype(np.float64)
    return np.where(padded, const, index + 1), np.where(padded, const, -(index + 1))


def _recover(kind: str, prim, in_shape: list[int], out_shape: list[int], dtype: str = "float32"):
    """The Relax op `call_tir(prim)` computes on a `dtype` input, as a function of it, or None."""
    size = int(np.prod(in_shape))
    narrow = dtype not in ("float32", "int32", "int64")
    limit = _MAX_PROBE if dtype == "float32" or narrow else np.iinfo(dtype).max
    if size >= limit or len(in_shape) != len(out_shape):
        return None
    if narrow:
        out, negated = _bit_planes(prim, in_shape, out_shape, dtype)
        probe = (np.arange(size, dtype=np.int64) + 1).reshape(in_shape)
    else:
        probe = (np.arange(size, dtype=dtype) + 1).reshape(in_shape)
        out = _run(prim, probe, out_shape)
        negated = None
    if in_shape == out_shape:  # TF's "SAME" padding of a 1x1 or stride-matched conv: pads nothing
        return (lambda x: x) if np.array_equal(out, probe) else None
    if kind == "tile":
        reps = [o // i for o, i in zip(out_shape, in_shape)]
        return (lambda x: relax.op.tile(x, reps)) if np.array_equal(np.tile(probe, reps), out) else None
    padded = out == (negated if narrow else _run(prim, -probe, out_shape))  # the constant, whatever the input
    value = float(out[padded][0]) if padded.any() else 0.0
    src = np.unravel_index(out[~padded].astype(np.int64) - 1, in_shape)
    dst = np.nonzero(~padded)
    before = [int(dst[k][src[k] == 0].max()) for k in range(len(in_shape))]
    widths = [(b, o - i - b) for b, o, i in zip(before, out_shape, in_shape)]
    mode, np_mode = _PAD_MODES[kind]
    want = np.pad(probe, widths, np_mode, **({"constant_values": value} if np_mode == "constant" else {}))
    if not np.array_equal(want, out):
        return None
    flat = [w for pair in widths for w in pair]
    return lambda x: relax.op.nn.pad(x, flat, mode, value)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.recovered = {}

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != _CALL_TIR or not isinstance(call.args[0], tvm.ir.GlobalVar):
            return call
        match = _NAME.fullmatch(call.args[0].name_hint)
        args = call.args[1].fields if isinstance(call.args[1], relax.Tuple) else []
        if match is None or len(args) != 1 or not isinstance(call.ty, relax.TensorType):
            return call
        try:
            in_shape = [int(d) for d in args[0].ty.shape]
            out_shape = [int(d) for d in call.ty.shape]
        except TypeError:  # symbolic shapes
            return call
        dtype = str(args[0].ty.dtype)  # float tensors, int ones (TopK's indices, tiled), bool masks (padded)
        if dtype not in ("float32", "int32", "int64", "bool", "int8", "uint8", "int16") or str(call.ty.dtype) != dtype:
            return call
        prim = self.mod_[call.args[0]]
        key = (tvm_ffi.structural_hash(prim.without_attr("global_symbol")), tuple(in_shape), tuple(out_shape), dtype)
        if key not in self.recovered:  # the importer makes one PrimFunc per call, many of them equal
            self.recovered[key] = _recover(match.group(1), prim, in_shape, out_shape, dtype)
        build = self.recovered[key]
        return call if build is None else build(args[0])


@tvm.transform.module_pass(opt_level=0, name="TeCallsToOps")
def te_calls_to_ops(mod, _ctx):
    """Rewrite the importer's pad and tile `call_tir`s of every Relax function into Relax ops."""
    rewriter = _Rewriter(mod)
    return relax.transform.DeadCodeElimination()(mutate_functions(rewriter, mod))
