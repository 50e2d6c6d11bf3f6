"""Float predicates of quantized tensors: isnan, isinf, isfinite.

isnan(x), isinf(x) -> a constant all-false bool mask    isfinite(x) -> all-true

An integer tensor stands for a finite real value, so these are known at compile time. They arrive
from guards around data-dependent bounds: TVM's importer turns `Clip(x, min=m)` with a tensor `m`
into `maximum(x, where(isnan(m), -inf, m))` (log-mel front ends clamp to `max(logmel) - top_db`
this way). The mask is exact (an `IntTensor`), so the `where` that consumes it lowers as any other
masked select, its infinite constant saturating to the integer range. NumPy reference:
`reference.binary.float_predicate`.
"""

from __future__ import annotations

import numpy as np

from ..reference.binary import float_predicate
from . import emit
from .registry import lowers
from .values import IntTensor


@lowers("relax.isnan", "relax.isinf", "relax.isfinite")
def lower_float_predicate(ctx, call, args):
    """isnan/isinf/isfinite of an integer-represented tensor: a constant mask."""
    (x,) = args
    if isinstance(x, np.ndarray):
        ctx.fail(f"{call.op.name} of a constant should have been folded")
    shape = tuple(int(d) for d in call.ty.shape)
    return IntTensor(emit.const(float_predicate(call.op.name[len("relax."):], shape), "bool"))
