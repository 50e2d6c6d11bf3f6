"""Pure-NumPy references of every integer kernel (no TVM import).

The compiled kernels must equal these bit for bit on every target.
"""

from .kernels import (add_requant, conv2d_acc, dequantize, dyadic, matmul_acc, max_pool2d, quantize,
                      quantize_weights, requantize, sum_pool)

__all__ = ["add_requant", "conv2d_acc", "dequantize", "dyadic", "matmul_acc", "max_pool2d", "quantize",
           "quantize_weights", "requantize", "sum_pool"]
