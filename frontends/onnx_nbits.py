"""onnxruntime's block-quantized weights (com.microsoft MatMulNBits) as the float weights they stand for.

`onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer` (weight-only 4-bit, what LLM and
encoder deployments apply) turns every MatMul with a constant weight into MatMulNBits: B packed into bytes
per output column and block, one scale (and zero point) per block. intq refused such files in both modes.
Like the other pre-quantized formats (onnx_qdq.py), the weights are dequantized at compile time and intq
quantizes them again its own way (per output channel, 8 or 4 bits):

    MatMulNBits(A, B [N, blocks, bytes], scales, zero_points?, g_idx = "", bias?)  (K, N, bits, block_size)
        ->  MatMul(A, W) (+ bias),  W[k, n] = (q[n, k] - zero[n, k // block_size]) * scale[n, k // block_size]

q is unpacked least significant bits first; the zero point is 2^(bits - 1) where none is given, else
packed the same way (or one float per block). Left as they are, for the op check to name: weights that
are not constants, and act-order (g_idx).
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper


def _unpacked(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` values of each row of `packed` (uint8, bits-wide values, least significant first)."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count].astype(np.float32)


def dequantized(node, initializers: dict) -> np.ndarray | None:
    """W [K, N] of a MatMulNBits node whose operands are constants; None where this module leaves it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * 6
    k, n, bits, block = (int(attrs.get(a, 0)) for a in ("K", "N", "bits", "block_size"))
    if bits not in (2, 4, 8) or block <= 0 or ins[4] or any(x and x not in initializers for x in (ins[1], ins[2], ins[3])):
        return None
    blocks = -(-k // block)
    q = _unpacked(numpy_helper.to_array(initializers[ins[1]]).reshape(n, blocks, -1), bits, block)  # [N, blocks, block]
    scale = numpy_helper.to_array(initializers[ins[2]]).astype(np.float32).reshape(n, blocks, 1)
    if not ins[3]:
        zero = np.float32(1 << (bits - 1))
    else:
        z = numpy_helper.to_array(initializers[ins[3]])
        zero = (_unpacked(z.reshape(n, -1), bits, blocks) if z.dtype == np.uint8 else z.astype(np.float32)).reshape(n, blocks, 1)
    w = ((q - zero) * scale).reshape(n, blocks * block)[:, :k]
    return np.ascontiguousarray(w.T)
