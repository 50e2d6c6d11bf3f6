"""Pure-NumPy references of every integer kernel (no TVM import).

The compiled kernels must equal these bit for bit on every target.
"""

from .kernels import (INT_RANGE, add_requant, conv2d_acc, dyadic, matmul_acc, max_pool2d, quantize_weights,
                      requantize, sum_pool)

__all__ = ["INT_RANGE", "add_requant", "conv2d_acc", "dyadic", "matmul_acc", "max_pool2d", "quantize_weights",
           "requantize", "sum_pool"]
