"""Pool3dAsPool2d: a 3-D max or average pool (volumes, video) is two 2-D pools, over (H, W) then over D.

    max_pool3d(x[N, C, D, H, W], (kd, kh, kw), strides, dilation, pads)
    ==> p = max_pool2d(x as [N, C * D, H, W], (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw))
        q = max_pool2d(p as [N, C, D, Ho * Wo], (kd, 1), (sd, 1), (front, 0, back, 0), (dd, 1))
        ==> q as [N, C, Do, Ho, Wo]

A box window is the product of its axes' windows: the max of maxes is the max, and an average is the
average of the plane averages (each window's count of real, unpadded elements is the product of its
depth count and its plane count), so the integer path's 2-D pool lowerings and kernels serve 3-D
pools exactly. Average pools in ceil mode stay (their last window's divisor is not separable in
general).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .call_rewrite import ints, rewrite_calls, static_shape

_POOLS = {"relax.nn.max_pool3d": relax.op.nn.max_pool2d, "relax.nn.avg_pool3d": relax.op.nn.avg_pool2d}


def _as_pool2d(call: relax.Call, x: relax.Expr) -> relax.Expr | None:
    a = call.attrs
    shape, out = static_shape(x), static_shape(call)
    if a.layout != "NCDHW" or (a.out_layout or "NCDHW") != "NCDHW" or shape is None or out is None:
        return None
    if call.op.name == "relax.nn.avg_pool3d" and bool(a.ceil_mode):
        return None
    (n, c, d, h, w), (_, _, do, ho, wo) = shape, out
    (kd, kh, kw), (sd, sh, sw), (dd, dh, dw) = ints(a.pool_size), ints(a.strides), ints(a.dilation)
    front, top, left, back, bottom, right = ints(a.padding)
    pool, ceil, include = _POOLS[call.op.name], bool(a.ceil_mode), bool(a.count_include_pad)
    plane = pool(relax.op.reshape(x, [n, c * d, h, w]), (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw),
                 ceil, include, "NCHW")
    depth = pool(relax.op.reshape(plane, [n, c, d, ho * wo]), (kd, 1), (sd, 1), (front, 0, back, 0), (dd, 1),
                 ceil, include, "NCHW")
    return relax.op.reshape(depth, [n, c, do, ho, wo])


@tvm.transform.module_pass(opt_level=0, name="Pool3dAsPool2d")
def pool3d_as_pool2d(mod, _ctx):
    """Rewrite every NCDHW max/avg pool3d with static shapes into two pool2d (see module doc)."""

    def rewrite(_builder, call):
        new = _as_pool2d(call, call.args[0])
        return call if new is None else new

    for op in _POOLS:
        mod = rewrite_calls(mod, op, rewrite)
    return mod
