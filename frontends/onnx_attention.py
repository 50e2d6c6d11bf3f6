"""Decompose the ONNX `Attention` op (opset 23+; torch's dynamo exporter emits it for
`scaled_dot_product_attention` at opset >= 23) into the ops it is defined by, which lower to integers:

    Q [B, H, Sq, D] (or [B, Sq, H*D] with q_num_heads: reshaped and transposed to it; K, V alike)
    S = MatMul(Q * scale, Transpose(K, [0, 1, 3, 2]))       scale: the attribute, else 1 / sqrt(D)
        + attn_mask (float: added; bool: Where(mask, 0, -huge) added, true = attend)
    Y = MatMul(Softmax(S, axis=-1), V)                       3-d Q: transposed and reshaped back

Fires only where that is the whole op: no past key/value, no padding lengths, is_causal 0, softcap 0,
as many key/value heads as query heads, and only Y used (present_key/value and qk_matmul_output
not). Static shapes (after shape inference). Other Attention nodes stay and are named by the op
check (or run in float with --allow-float where the importer takes them).
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
    if (attrs.get("is_causal", 0) or attrs.get("softcap", 0.0) or any(ins[4:7])
            or any(o for o in node.output[1:])):
        return None
    q, k, v = (_shape(types, n) for n in ins[:3])
    if not (q and k and v) or len(q) != len(k) or len(q) != len(v) or len(q) not in (3, 4):
        return None
    heads, kv_heads = (q[1], k[1]) if len(q) == 4 else (attrs.get("q_num_heads", 0), attrs.get("kv_num_heads", 0))
    if heads <= 0 or heads != kv_heads:
        return None
    head = q[3] if len(q) == 4 else q[2] // heads
    mask = None
    if ins[3]:
        t = types.get(ins[3])
        if t is None:
            return None
        mask = (ins[3], t.elem_type == onnx.TensorProto.BOOL)
    scale = attrs.get("scale")
    return dict(rank=len(q), heads=heads, mask=mask, scale=float(scale) if scale else 1.0 / math.sqrt(head))


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

    def build(self, rank, heads, mask, scale):
        q, k, v = self.node.input[:3]
        if rank == 3:
            q, k, v = (self.heads_first(x, heads, n) for x, n in ((q, "q"), (k, "k"), (v, "v")))
        qs = self.op("Mul", [q, self.const("scale", np.array(scale, np.float32))], "q_scaled")
        logits = self.op("MatMul", [qs, self.op("Transpose", [k], "k_t", perm=[0, 1, 3, 2])], "logits")
        if mask is not None:
            name, is_bool = mask
            if is_bool:
                name = self.op("Where", [name, self.const("zero", np.array(0.0, np.float32)),
                                         self.const("masked", np.array(MASKED, np.float32))], "mask_bias")
            logits = self.op("Add", [logits, name], "masked_logits")
        probs = self.op("Softmax", [logits], "probs", axis=-1)
        if rank == 4:
            self.op("MatMul", [probs, v], "y", out=self.node.output[0])
            return self.nodes
        y = self.op("Transpose", [self.op("MatMul", [probs, v], "y4")], "y_t", perm=[0, 2, 1, 3])
        self.op("Reshape", [y, self.const("y_shape", np.array([0, 0, -1], np.int64))], "y", out=self.node.output[0])
        return self.nodes
