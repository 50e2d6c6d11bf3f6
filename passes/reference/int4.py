"""NumPy twins of the 4-bit weight kernels: packing and the packed conv2d / matmul.

A 4-bit weight tensor (values in [-8, 7], as `quantize_weights(w, 4, axis)` returns them)
is stored flat, in its own row-major order (OIHW for conv2d, [K, N] for matmul), two
values per byte, the even element in the low nibble:

    packed[i] = (q[2i] & 15) | (q[2i + 1] & 15) << 4        (a missing last q[2i + 1] is 0)

and unpacked inside the kernel's reduction with a sign extension:

    v = (packed[j // 2] >> 4 * (j % 2)) & 15;   q[j] = (v ^ 8) - 8

The compiled kernels (`passes/lowering/int4.py`) must equal these bit for bit.
"""

from __future__ import annotations

import numpy as np

from .kernels import conv2d_acc, matmul_acc

INT4_RANGE = (-8, 7)


def pack_int4(q) -> np.ndarray:
    """Flat uint8 array of ceil(q.size / 2) bytes holding the 4-bit values of `q`."""
    q = np.asarray(q).reshape(-1).astype(np.int64)
    if q.size and (q.min() < INT4_RANGE[0] or q.max() > INT4_RANGE[1]):
        raise ValueError(f"pack_int4: values outside [-8, 7] (min {q.min()}, max {q.max()})")
    nibbles = (q & 15).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, shape) -> np.ndarray:
    """The int8 tensor of `shape` that `pack_int4` packed (sign-extended nibbles)."""
    packed = np.asarray(packed, np.uint8).reshape(-1)
    count = int(np.prod(shape))
    if packed.size != (count + 1) // 2:
        raise ValueError(f"unpack_int4: {packed.size} bytes cannot hold shape {tuple(shape)}")
    j = np.arange(count)
    v = (packed[j // 2].astype(np.int64) >> (4 * (j % 2))) & 15
    return ((v ^ 8) - 8).astype(np.int8).reshape(shape)


def conv2d_int4_acc(x, packed, w_shape, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                    groups: int = 1) -> np.ndarray:
    """NCHW x packed 4-bit OIHW convolution, int32 accumulation (padding: top, left, bottom, right)."""
    return conv2d_acc(x, unpack_int4(packed, w_shape), strides, padding, dilation, groups)


def matmul_int4_acc(x, packed, w_shape) -> np.ndarray:
    """x [..., K] @ packed 4-bit [K, N] weight, int32 accumulation."""
    return matmul_acc(x, unpack_int4(packed, w_shape))
