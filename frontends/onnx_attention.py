"""Decompose the ONNX `Attention` op (opset 23+; torch's dynamo exporter emits it for
`scaled_dot_product_attention` at opset >= 23) into the ops it is defined by, which lower to integers:

    Q [B, H, Sq, D] (or [B, Sq, H*D] with q_num_heads: reshaped and transposed to it; K, V alike)
    K, V = Concat(past, K / V) along the sequence (present_key / present_value: these)
    K, V heads repeated, interleaved, to H where there are fewer (grouped-query attention)
    S = MatMul(Q * scale, Transpose(K, [0, 1, 3, 2]))       scale: the attribute, else 1 / sqrt(D)
    S = softcap * Tanh(S / softcap)                          softcap > 0
        + attn_mask (float: added; bool: Where(mask, 0, -huge) added, true = attend)
        + Where(allowed, 0, -huge), a constant [Sq, Sk]: is_causal (key j <= i + P, P the past length)
          and the sliding window (i + P - left <= j <= i + P + right)
    Y = MatMul(Softmax(S, axis=-1), V)                       3-d Q: transposed and reshaped back

Fires where that is the whole op: static shapes (after shape inference), no nonpad_kv_seqlen (its
lengths arrive at run time), an attn_mask as long as the keys, no qk_matmul_output. Other
Attention nodes stay and are named by the op check (or run in float with --allow-float where the
importer takes them).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

MASKED = float(np.finfo(np.float32).min)  # what a false bool mask entry adds to the logits


def decompose_attention(model: onnx.ModelProto) -> int:
    """Replace every Attention node that `_plan` accepts by its definition, in place; returns how many."""
    types = {v.name: v.type.tensor_type for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    inits = {i.name: i for i in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        plan = _plan(node, types, inits)
        if plan is None:
            nodes.append(node)
            continue
        nodes.extend(_Decomposed(node, model.graph.initializer).build(**plan))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def _shape(types, name):
    t = types.get(name)
    if t is None or not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return dims if min(dims, default=1) > 0 else None


def _plan(node, types, inits) -> dict | None:
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (7 - len(node.input))
    outs = list(node.output) + [""] * (4 - len(node.output))
    if ins[6] or outs[3] or bool(ins[4]) != bool(ins[5]):
        return None  # run-time key lengths; the qk output; half a cache
    q, k, v = (_shape(types, n) for n in ins[:3])
    if not (q and k and v) or len(q) != len(k) or len(q) != len(v) or len(q) not in (3, 4):
        return None
    heads, kv_heads = (q[1], k[1]) if len(q) == 4 else (attrs.get("q_num_heads", 0), attrs.get("kv_num_heads", 0))
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        return None
    head = q[3] if len(q) == 4 else q[2] // heads
    q_len, kv_len = q[-2] if len(q) == 4 else q[1], k[-2] if len(k) == 4 else k[1]
    past = 0
    if ins[4]:
        past_shape = _shape(types, ins[4])
        if not past_shape or len(past_shape) != 4:
            return None
        past = past_shape[2]
    mask = None
    if ins[3]:
        t, mask_shape = types.get(ins[3]), _shape(types, ins[3])
        if t is None or not mask_shape or mask_shape[-1] != past + kv_len:
            return None
        mask = (ins[3], t.elem_type == onnx.TensorProto.BOOL)
    scale = attrs.get("scale")
    return dict(rank=len(q), heads=heads, kv_heads=kv_heads, mask=mask,
                scale=float(scale) if scale else 1.0 / math.sqrt(head), past=(ins[4], ins[5]) if ins[4] else None,
                allowed=_allowed(q_len, past + kv_len, past, bool(attrs.get("is_causal", 0)),
                                 int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))),
                softcap=float(attrs.get("softcap", 0.0)), presents=outs[1:3], kv_total=past + kv_len)


def _allowed(q_len: int, kv_len: int, offset: int, causal: bool, left: int, right: int) -> np.ndarray | None:
    """[q_len, kv_len] bool: which keys each query may attend under is_causal and the sliding window
    (query i sits at position i + offset, after the past keys); None where all may."""
    if not causal and left < 0 and right < 0:
        return None
    diff = (np.arange(q_len)[:, None] + offset) - np.arange(kv_len)[None, :]  # position - key
    allowed = np.ones((q_len, kv_len), bool)
    if causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return allowed


class _Decomposed:
    """The nodes replacing one Attention node (names under `<node>/attention/`), constants as initializers."""

    def __init__(self, node, initializers):
        self.node, self.nodes, self.inits = node, [], initializers
        self.prefix = (node.name or node.output[0]) + "/attention"

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), f"{self.prefix}/{name}"))
        return f"{self.prefix}/{name}"

    def op(self, kind, inputs, name, out=None, **attrs):
        out = out or f"{self.prefix}/{name}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"{self.prefix}/{name}", **attrs))
        return out

    def heads_first(self, x, heads, name):  # [B, S, H*D] -> [B, H, S, D]
        shape = self.const(f"{name}_shape", np.array([0, 0, heads, -1], np.int64))
        x = self.op("Reshape", [x, shape], f"{name}_split_heads")
        return self.op("Transpose", [x], f"{name}_heads_first", perm=[0, 2, 1, 3])

    def build(self, rank, heads, kv_heads, mask, scale, past, allowed, softcap, presents, kv_total):
        q, k, v = self.node.input[:3]
        if rank == 3:
            q, k, v = (self.heads_first(x, h, n) for x, h, n in ((q, heads, "q"), (k, kv_heads, "k"), (v, kv_heads, "v")))
        if past is not None:  # the cache, then this block's keys and values
            k = self.op("Concat", [past[0], k], "k_all", out=presents[0] or None, axis=2)
            v = self.op("Concat", [past[1], v], "v_all", out=presents[1] or None, axis=2)
        self.kv_heads = kv_heads
        if kv_heads != heads:  # each key/value head serves heads // kv_heads query heads in turn
            k, v = (self.repeated_heads(x, heads, kv_total, n) for x, n in ((k, "k"), (v, "v")))
        qs = self.op("Mul", [q, self.const("scale", np.array(scale, np.float32))], "q_scaled")
        logits = self.op("MatMul", [qs, self.op("Transpose", [k], "k_t", perm=[0, 1, 3, 2])], "logits")
        if softcap > 0:
            inner = self.op("Div", [logits, self.const("softcap", np.array(softcap, np.float32))], "capped_in")
            logits = self.op("Mul", [self.op("Tanh", [inner], "capped_tanh"), self.const("softcap2", np.array(
                softcap, np.float32))], "capped")
        if mask is not None:
            name, is_bool = mask
            if is_bool:
                name = self.op("Where", [name, self.const("zero", np.array(0.0, np.float32)),
                                         self.const("masked", np.array(MASKED, np.float32))], "mask_bias")
            logits = self.op("Add", [logits, name], "masked_logits")
        if allowed is not None:
            bias = np.where(allowed, 0.0, MASKED).astype(np.float32)
            logits = self.op("Add", [logits, self.const("structure_bias", bias)], "structured_logits")
        probs = self.op("Softmax", [logits], "probs", axis=-1)
        if rank == 4:
            self.op("MatMul", [probs, v], "y", out=self.node.output[0])
            return self.nodes
        y = self.op("Transpose", [self.op("MatMul", [probs, v], "y4")], "y_t", perm=[0, 2, 1, 3])
        self.op("Reshape", [y, self.const("y_shape", np.array([0, 0, -1], np.int64))], "y", out=self.node.output[0])
        return self.nodes

    def repeated_heads(self, x, heads, length, name):  # [B, h, S, D] -> [B, heads, S, D]: h0 h0 h1 h1 ...
        grown = self.op("Unsqueeze", [x, self.const(f"{name}_axis", np.array([2], np.int64))], f"{name}_grown")
        reps = self.const(f"{name}_reps", np.array([1, 1, heads // self.kv_heads, 1, 1], np.int64))
        tiled = self.op("Tile", [grown, reps], f"{name}_tiled")
        shape = self.const(f"{name}_heads", np.array([0, heads, length, -1], np.int64))
        return self.op("Reshape", [tiled, shape], f"{name}_repeated")
