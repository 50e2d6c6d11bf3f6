"""The float model's convolutions and matmuls run by torch's CPU kernels, for calibration and the sensitivity probe.

TVM's untuned float convs are plain loops: a U-Net's float run took 37 s a sample where onnxruntime
takes 1.8 s (a 10x10 conv over 80 x 240 x 320: 4.5 s against 0.4 s), and calibration runs it per
sample. Calibration wants ranges, not TVM's own float bits, so each float32 conv (2-D, transposed
too) with a constant weight becomes a packed call into Python (`intq.float_conv`) that runs
`torch.nn.functional.conv2d` / `conv_transpose2d` (oneDNN). The weight is converted once, when the
model is rewritten; `Convs` holds the rewritten calls' closures for the model that runs them. So does every
float32 matmul (`torch.matmul`, constant operands converted once): TVM's untuned float matmuls made
all-MiniLM-L6-v2's float run 83 ms a sample, where its calibration and sensitivity probe run it ~100 times.
Without torch installed (it is an optional dependency: `intq[examples]`) the convs stay TVM's.

    convs = Convs()
    mod = convs.rewrite(float_mod)      (then compile and run with `with convs.active(): ...`)
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import tvm
from tvm import relax

from . import constant_arrays

CALL = "intq.float_conv"
TORCH = importlib.util.find_spec("torch") is not None
_current = threading.local()


def _dispatch(*args):
    *values, index = args
    out = _current.convs[int(index)](*(np.from_dlpack(v) for v in values))
    return tvm.runtime.tensor(np.require(out, requirements="C"))


tvm.register_global_func(CALL, _dispatch, override=True)


SMALL_CONV_MACS = 1 << 25  # multiply-accumulates below which a float conv runs on one torch thread
# torch's thread pool and TVM's (the tapped model's other kernels) take turns in one process, and a
# worker of either pool still spinning when the other starts made each small torch conv wait for a
# core: 15 ms a call on the 2-core machine (ghostnet at 96 px: 10830 conv calls, 163 s of a 215 s
# compile); on one thread 0.1-0.4 ms. Big convs (a U-Net's) keep torch's threads.


@contextmanager
def _one_thread():
    import torch

    old = torch.get_num_threads()
    if old == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _to_nchw(layout: str) -> list[int]:
    return [layout.index(c) for c in "NCHW"]


def conv_closure(call: relax.Call, weight: np.ndarray | None = None):
    """A closure x -> y computing `call` (x a NumPy array in the call's data layout) with torch, with
    `weight` (in the call's kernel layout) in place of the call's own where given."""
    import torch
    import torch.nn.functional as F

    a = call.attrs
    transposed = call.op.name == "relax.nn.conv2d_transpose"
    w = constant_arrays.array(call.args[1]) if weight is None else weight.astype(np.float32)
    # torch wants OIHW for conv2d and IOHW for conv2d_transpose
    weight = torch.from_numpy(np.array(  # a writable copy: a read-only constant made torch warn
        w.transpose([a.kernel_layout.index(c) for c in ("IOHW" if transposed else "OIHW")]), np.float32))
    into, back = _to_nchw(a.data_layout), np.argsort(_to_nchw(a.out_layout))
    top, left, bottom, right = (int(p) for p in a.padding)
    strides, dilation, groups = [int(s) for s in a.strides], [int(d) for d in a.dilation], int(a.groups)
    out_h, out_w = (int(d) for d in (call.ty.shape[i] for i in _to_nchw(a.out_layout)[2:]))
    out_elements = int(np.prod([int(d) for d in call.ty.shape]))
    macs = out_elements * (int(np.prod(w.shape)) // max(1, int(weight.shape[1 if transposed else 0]))) \
        // (groups if transposed else 1)
    threads = _one_thread if macs < SMALL_CONV_MACS else nullcontext

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(into)))
        with torch.no_grad(), threads():
            if transposed:
                y = F.conv_transpose2d(t, weight, stride=strides, dilation=dilation, groups=groups)
                # the full output, cropped by the pads and widened by the output padding (zeros: out of reach)
                y = F.pad(y, [0, max(0, left + out_w - y.shape[3]), 0, max(0, top + out_h - y.shape[2])])
                y = y[:, :, top:top + out_h, left:left + out_w]
            elif top == bottom and left == right:  # no padded copy of the input
                y = F.conv2d(t, weight, stride=strides, padding=(top, left), dilation=dilation, groups=groups)
            else:
                y = F.conv2d(F.pad(t, [left, right, top, bottom]), weight, stride=strides, dilation=dilation,
                             groups=groups)
        return y.numpy().transpose(back)

    return run


def matmul_closure(call: relax.Call):
    """A closure computing `call` (`relax.matmul`, NumPy's broadcasting, as torch.matmul's) from its
    non-constant operands, in order, with torch; constant operands converted once."""
    import torch

    fixed = [_kept_tensor(a) if isinstance(a, tvm.ir.GenericConst) else None for a in call.args[:2]]
    macs = int(np.prod([int(d) for d in call.ty.shape])) * int(call.args[0].ty.shape[-1])
    threads = _one_thread if macs < SMALL_CONV_MACS else nullcontext

    def run(*arrays: np.ndarray) -> np.ndarray:
        given = iter(arrays)
        a, b = (t if t is not None else torch.from_numpy(np.ascontiguousarray(next(given))) for t in fixed)
        with torch.no_grad(), threads():
            return torch.matmul(a, b).numpy()

    return run


def _kept_tensor(const):
    """A torch view of the constant's kept read-only array (never written: torch warns once for such)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(constant_arrays.array(const))


def _static_float32(values) -> bool:
    return all(isinstance(v.ty, relax.TensorType) and str(v.ty.dtype) == "float32"
               and isinstance(v.ty.shape, relax.ShapeExpr) and all(isinstance(d, tvm.tirx.IntImm) for d in v.ty.shape)
               for v in values)


def _takes(call) -> str | None:
    """"conv" or "matmul" where `call` is one that torch runs here, else None."""
    if not (TORCH and isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
        return None
    if (call.op.name in ("relax.nn.conv2d", "relax.nn.conv2d_transpose")
            and isinstance(call.args[1], tvm.ir.GenericConst) and _static_float32([call, *call.args[:2]])):
        return "conv"
    if call.op.name == "relax.matmul" and _static_float32([call, *call.args[:2]]) \
            and not all(isinstance(a, tvm.ir.GenericConst) for a in call.args[:2]):
        return "matmul"
    return None


class Convs:
    """The torch closures of one rewritten model, indexed as its packed calls are."""

    def __init__(self):
        self._closures: list = []

    def rewrite(self, value: relax.Expr) -> relax.Expr:
        """`value` as a packed call to torch where it is a float32 conv with a constant weight or a float32
        matmul (static shapes); otherwise `value` itself."""
        kind = _takes(value)
        if kind is None:
            return value
        self._closures.append(conv_closure(value) if kind == "conv" else matmul_closure(value))
        operands = value.args[:1] if kind == "conv" else [a for a in value.args[:2]
                                                          if not isinstance(a, tvm.ir.GenericConst)]
        return relax.op.call_pure_packed(CALL, *operands, relax.prim_value(len(self._closures) - 1), ty_args=value.ty)

    @contextmanager
    def active(self):
        """Within: the packed calls of this model's run reach its closures (per thread)."""
        previous = getattr(_current, "convs", None)
        _current.convs = self._closures
        try:
            yield
        finally:
            _current.convs = previous
