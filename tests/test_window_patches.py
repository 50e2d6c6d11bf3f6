"""passes/conv_as_pointwise.window_patches: a spatial conv's patches as vector copies of the padded image's rows,
in the dot kernels' packed layout or as plain patch rows, equal to the NumPy patches; and the x86 path that takes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax

from passes.conv_as_pointwise import PATCHES_ATTR, _out_size, conv_as_pointwise, window_patches
from targets import get_target

rng = np.random.default_rng(5)


def _reference(x, rows, kernel, strides, pads, dilation, step, fill):
    """NumPy patches: row (c, i, j) = c kh kw + i kw + j of pixel (y, x) = the padded image at (y sh + i dh, x sw + j dw)."""
    _, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = kernel, strides, dilation, pads
    ho, wo = _out_size(h, w, kernel, strides, pads, dilation)
    xp = np.pad(x[0], [(0, 0), (top, bottom), (left, right)], constant_values=fill)
    p = np.full((rows, ho, wo), fill, x.dtype)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                p[ch * kh * kw + i * kw + j] = xp[ch, i * dh:i * dh + (ho - 1) * sh + 1:sh,
                                                  j * dw:j * dw + (wo - 1) * sw + 1:sw]
    return p[None] if step == 1 else p.reshape(rows // step, step, ho * wo).transpose(0, 2, 1)


CASES = [  # x shape, kernel, strides, pads, dilation, step, dtype, fill
    ((1, 48, 36, 16), (3, 1), (1, 1), (1, 0, 1, 0), (1, 1), 4, "uint8", 128),  # openWakeWord's 3x1 convs
    ((1, 24, 36, 16), (3, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, "int16", 0),  # the int16 recipe's pairs
    ((1, 5, 20, 37), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, "uint8", 0),  # stride 2, rows past C kh kw
    ((1, 3, 17, 9), (5, 3), (1, 2), (2, 0, 1, 3), (2, 1), 4, "int8", 0),  # uneven strides and pads, dilation
    ((1, 7, 12, 70), (1, 5), (1, 1), (0, 2, 0, 2), (1, 3), 1, "uint8", 0),  # plain rows; 70 columns: whole stores + a tail
    ((1, 2, 6, 1), (3, 1), (1, 1), (1, 0, 1, 0), (1, 1), 4, "uint8", 128),  # one column
    ((1, 4, 30, 30), (7, 7), (3, 3), (3, 3, 3, 3), (1, 1), 4, "uint8", 0),  # stride 3
    ((1, 6, 9, 11), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32", 0),  # the float model's convs too
    ((1, 4, 10, 2), (3, 2), (2, 2), (1, 0, 1, 0), (1, 1), 1, "uint8", 0),  # one output column, stride 2 (Silero)
    ((1, 4, 10, 2), (3, 2), (2, 2), (1, 0, 1, 0), (1, 1), 4, "uint8", 0),
]


@pytest.mark.parametrize("shape,kernel,strides,pads,dilation,step,dtype,fill", CASES)
def test_window_patches_equal_numpy(shape, kernel, strides, pads, dilation, step, dtype, fill):
    c, kh, kw = shape[1], *kernel
    rows = -(-c * kh * kw // 4) * 4
    if dtype == "float32":
        x = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -300), min(info.max, 300) + 1, shape).astype(dtype)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(list(shape), dtype))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(window_patches(bb, xv, rows, kernel, strides, pads, dilation, step, fill))
        bb.emit_func_output(out)
    target = get_target("x86").target()
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, _reference(x, rows, kernel, strides, pads, dilation, step, fill))


def test_strided_conv_patches_read_the_padded_image():
    """A conv whose output is not its input's size takes the vector copies (the TE gather tested every element
    against the image's bounds, a byte at a time: half of openWakeWord's embedding CNN), its geometry marked so
    that the x86 kernels find the image behind the pad; the conv then equals the reference bit for bit."""
    from conftest import relax_main

    from passes.lowering import emit
    from passes.reference import kernels as ref

    class _Attrs:
        strides, padding, dilation, groups = (2, 1), (1, 0, 1, 0), (1, 1), 1
        data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"

    x = rng.integers(-128, 128, (1, 24, 36, 16)).astype(np.int8)
    wt = rng.integers(-128, 128, (32, 24, 3, 1)).astype(np.int8)
    mod = relax_main(lambda a: emit.conv2d_acc(a, wt, _Attrs()), [x])
    patched = conv_as_pointwise(mod)
    geometry = [json.loads(str(f.attrs[PATCHES_ATTR])) for f in patched.functions.values()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and PATCHES_ATTR in f.attrs]
    assert geometry and geometry[0][-1] is True, geometry
    for cpu in ("x86-64-v4+avx512vnni", "x86-64-v3"):
        spec = get_target("x86", cpu=cpu)
        from targets.x86 import missing_features

        if missing_features(spec.features):
            continue
        target = spec.target()
        ex = tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                      ref.conv2d_acc(x, wt, (2, 1), (1, 0, 1, 0), (1, 1)))


def test_window_patches_of_a_free_batch():
    """A free batch (a symbolic n) takes the vector copies too, each sample's patches its own; the conv over them
    equals the reference sample by sample."""
    from conftest import relax_main

    from passes.lowering import emit
    from passes.reference import kernels as ref

    class _Attrs:
        strides, padding, dilation, groups = (2, 2), (1, 1, 0, 0), (1, 1), 1
        data_layout, kernel_layout, out_layout = "NCHW", "OIHW", "NCHW"

    x = rng.integers(-128, 128, (3, 8, 15, 21)).astype(np.int8)
    wt = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    mod = relax_main(lambda a: emit.conv2d_acc(a, wt, _Attrs()), [x], free_batch=True)
    patched = conv_as_pointwise(mod)
    assert any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and PATCHES_ATTR in f.attrs
               and json.loads(str(f.attrs[PATCHES_ATTR]))[-1] is True for f in patched.functions.values())
    spec = get_target("x86")
    target = spec.target()
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target)), tvm.cpu())
    for batch in (1, 3):
        got = vm["main"](tvm.runtime.tensor(x[:batch])).numpy()
        np.testing.assert_array_equal(got, ref.conv2d_acc(x[:batch], wt, (2, 2), (1, 1, 0, 0), (1, 1)))
