"""Flat-row depthwise convs (targets/depthwise.py) over a symbolic batch: stride 1 and 2
(the padded image, then its phases), compiled for x86 with the default schedules, equal the
reference for every sample."""

from __future__ import annotations

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


@pytest.mark.parametrize("stride,padding,k", [(1, (1, 1, 1, 1), 3), (2, (0, 0, 1, 1), 3), (2, (2, 1, 2, 2), 5)])
def test_free_batch(stride, padding, k):
    c = 16
    x = rng.integers(0, 256, (3, c, 13, 11)).astype(np.uint8)
    w = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
    attrs = _Attrs((stride, stride), padding, c)
    n = tvm.tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType([n, c, 13, 11], "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(emit.conv2d_acc(xv, w, attrs))
        bb.emit_func_output(out)
    spec = get_target("x86")
    target = spec.target()
    ex = tvm.compile(bb.get(), target=target, relax_pipeline=spec.relax_pipeline(target))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, ref.conv2d_acc(x, w, (stride, stride), padding, groups=c))
