"""Pool1dAsPool2d: a 1-D max or average pool (audio and sequence CNNs) is a 2-D pool over a height of one.

    max_pool1d(x[N, C, L])  ==>  reshape(max_pool2d(x[N, C, 1, L], (1, k), ...), [N, C, L'])   (avg alike)

Exact (the same windows), so the integer path's pool lowerings and kernels serve 1-D pools too.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

_POOLS = {"relax.nn.max_pool1d": relax.op.nn.max_pool2d, "relax.nn.avg_pool1d": relax.op.nn.avg_pool2d}


@tvm.transform.module_pass(opt_level=0, name="Pool1dAsPool2d")
def pool1d_as_pool2d(mod, _ctx):
    """Rewrite every NCW max/avg pool1d into a pool2d of height one."""
    x_p = wildcard()
    pool_p = is_op("relax.nn.max_pool1d")(x_p) | is_op("relax.nn.avg_pool1d")(x_p)

    def rewrite(expr, match):
        call = match[pool_p]
        a, x = call.attrs, match[x_p]
        if a.layout != "NCW" or (a.out_layout or "NCW") != "NCW" or x.ty.shape is None:
            return expr
        n, c, length = x.ty.shape
        (left, right) = (int(p) for p in a.padding)
        pool = _POOLS[call.op.name](relax.op.reshape(x, [n, c, 1, length]), (1, int(a.pool_size[0])),
                                    (1, int(a.strides[0])), (0, left, 0, right), (1, int(a.dilation[0])),
                                    bool(a.ceil_mode), bool(a.count_include_pad), "NCHW")
        return relax.op.reshape(pool, call.ty.shape)

    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pool_p, rewrite, func)
    return mod
