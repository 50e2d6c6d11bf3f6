"""onnxruntime's RotaryEmbedding (com.microsoft) as the standard ops it stands for.

    RotaryEmbedding(x, position_ids, cos_cache, sin_cache)   (num_heads, rotary_embedding_dim, interleaved)
        x [B, S, N * h] (split into heads and back) or [B, N, S, h]; cos / sin = cache rows at position_ids
        ([B, S], or a [1] offset o: positions o .. o + S - 1); the first r = rotary_embedding_dim (default 2 *
        the cache's width) channels of each head rotated (onnx_contrib_decoder.rotate), the rest passed through

onnxruntime's rotary fusion (FusionRotaryEmbeddings, and convert_to_onnx for LLaMA / Phi) writes it before a
MultiHeadAttention or GroupQueryAttention. Left for the op check to name: a custom `scale`, packed batching
(ragged batches), and a cache whose width is not known when the graph is read (no rotary_embedding_dim).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .onnx_contrib_decoder import arange, cos_sin, dim, rotate, unsqueeze


def _attr(node, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def rotary_embedding(node, w, ranks: dict[str, int], dims: dict[str, list[int]]) -> bool:
    """RotaryEmbedding (module doc); False where the node uses what this module leaves."""
    x, positions, cos_cache, sin_cache = (list(node.input) + [""] * 4)[:4]
    heads, rotary = int(_attr(node, "num_heads", 0)), int(_attr(node, "rotary_embedding_dim", 0))
    width = dims.get(cos_cache, [])
    if float(_attr(node, "scale", 1.0)) != 1.0 or _attr(node, "is_packed_batching", 0) or not positions \
            or ranks.get(x) not in (3, 4) or ranks.get(positions) not in (1, 2):
        return False
    rotary = rotary or (2 * width[-1] if len(width) == 2 and width[-1] > 0 else 0)
    if rotary <= 0:
        return False
    rank = ranks[x]
    if rank == 3:  # [B, S, N * h] -> [B, S, N, h]: with num_heads 0 the head is the rotary width
        shape = [0, 0, heads, -1] if heads else [0, 0, -1, rotary]
        x4 = w.op("Reshape", [x, w.const(shape, np.int64)])
        head = dims.get(x, [0])[-1] // heads if heads and dims.get(x, [0])[-1] > 0 else rotary
        seq_axis = 1
    else:
        x4, head, seq_axis = x, dims.get(x, [0] * 4)[-1], 2
    if head <= 0 or head < rotary:
        return False
    if ranks[positions] == 1:  # an offset: positions o .. o + S - 1, the same for every batch row
        positions = w.op("Add", [arange(w, dim(w, x4, seq_axis)), w.op("Cast", [positions], to=7)])
        cos, sin = cos_sin(w, cos_cache, sin_cache, positions)  # [S, r/2]
        if rank == 3:
            cos, sin = unsqueeze(w, cos, [1]), unsqueeze(w, sin, [1])  # [S, 1, r/2] against [B, S, N, r/2]
    else:
        cos, sin = cos_sin(w, cos_cache, sin_cache, w.op("Cast", [positions], to=7))  # [B, S, r/2]
        axis = [2] if rank == 3 else [1]
        cos, sin = unsqueeze(w, cos, axis), unsqueeze(w, sin, axis)
    y = rotate(w, x4, cos, sin, rotary, head, bool(_attr(node, "interleaved", 0)), 3)
    if rank == 3:
        w.op("Reshape", [y, w.const([0, 0, -1], np.int64)], node.output[0])
    else:
        w.op("Identity", [y], node.output[0])
    return True
