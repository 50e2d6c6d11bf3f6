"""Per-op integer lowerings, registered with `@lowers` (imported here explicitly)."""

from . import binary, elementwise, embedding, layout, linear, pooling, predicates, reduce, resize, transformer, unary  # noqa: F401  (registration; unary last)
from .float_fallback import float_fallback
from .context import LoweringContext, QuantConfig, activation_scale, calibrated_qmax
from .registry import LOWERINGS
from .values import Accumulator, ChannelQuantized, IntTensor, Quantized

__all__ = ["LOWERINGS", "float_fallback", "Accumulator", "ChannelQuantized", "IntTensor", "LoweringContext", "QuantConfig", "Quantized", "activation_scale", "calibrated_qmax"]
