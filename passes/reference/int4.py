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


# -- the x86 dot-product tile layout (targets/vnni_int4_kernels.py) -----------------------------
#
# The dot-product kernels (targets/vnni.py) read int8 weights [N, K] as tiles [N/L, K/k, L, k]:
# L output lanes x k consecutive inputs, one vector per (lanes, k-step). Their 4-bit form keeps
# two k-steps in one vector of bytes, [N/L, K/(2k), L, k] uint8:
#
#     tiles[v, t, l, j] = (q[v*L + l, 2t*k + j] & 15) | (q[v*L + l, (2t+1)*k + j] & 15) << 4
#
# and the kernel unpacks the two k-steps of a load with byte operations that leave each value
# multiplied by 16 (a signed int8: 16 * q in [-128, 112]):
#
#     step 2t:   int8(byte << 4)        step 2t+1:   int8(byte & 0xF0)
#
# accumulates acc16 = sum_k x_k * 16 q_k, and returns acc16 >> 4 (exact: acc16 is a multiple of
# 16 as long as |16 * sum| < 2^31, i.e. K * max|x| * 8 * 16 < 2^31, which the rewrite checks).


def pack_int4_tiles(q_nk, lanes: int, k: int) -> np.ndarray:
    """[N, K] 4-bit values (N % lanes == 0, K % (2k) == 0) -> [N/L, K/(2k), L, k] uint8 tiles."""
    q = np.asarray(q_nk).astype(np.int64)
    n, k_len = q.shape
    if n % lanes or k_len % (2 * k):
        raise ValueError(f"pack_int4_tiles: [{n}, {k_len}] is not a whole number of {lanes} x {2 * k} tiles")
    if q.size and (q.min() < INT4_RANGE[0] or q.max() > INT4_RANGE[1]):
        raise ValueError(f"pack_int4_tiles: values outside [-8, 7] (min {q.min()}, max {q.max()})")
    steps = (q & 15).reshape(n // lanes, lanes, k_len // (2 * k), 2, k).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(steps[:, :, 0] | steps[:, :, 1] << 4).astype(np.uint8)


def unpack_int4_tiles(tiles) -> np.ndarray:
    """The [N, K] int8 values of `pack_int4_tiles`' tiles, as the kernel sees them divided by 16."""
    t = np.asarray(tiles, np.uint8).astype(np.int64)
    v, steps, lanes, k = t.shape
    low = ((t << 4) & 0xF0 ^ 0x80) - 0x80  # int8(byte << 4) = 16 * q[2t]
    high = ((t & 0xF0) ^ 0x80) - 0x80  # int8(byte & 0xF0) = 16 * q[2t + 1]
    sixteen = np.stack([low, high], axis=2)  # [V, T, 2, L, k]
    return (sixteen.transpose(0, 3, 1, 2, 4).reshape(v * lanes, steps * 2 * k) // 16).astype(np.int8)


def matmul_int4_tiles_acc(x, tiles, n: int | None = None) -> np.ndarray:
    """x [..., K] @ the 4-bit tiles' weight ([N, K] transposed), computed as the kernel does:
    sum of x * 16 q in int64, checked against int32, then >> 4. `n` drops padded columns."""
    w16 = unpack_int4_tiles(tiles).astype(np.int64) * 16
    acc16 = np.asarray(x).astype(np.int64) @ w16.T
    if np.abs(acc16).max(initial=0) >= 2**31:
        raise OverflowError("matmul_int4_tiles_acc: the x16 accumulator leaves int32")
    out = (acc16 >> 4).astype(np.int32)
    return out if n is None else out[..., :n]
