"""Expand ONNX function ops that TVM's importer cannot take into the ops that define them.

Many newer or rarer ONNX ops are *functions*: their schema defines them as a small graph of
primitive ops (Celu, Swish, SwiGLU, CenterCropPad, RotaryEmbedding, HammingWindow, ..., and
opset 23's Attention in its causal, grouped-query, soft-capped and key/value-cache forms, which
TVM's converter for the Microsoft-domain Attention misreads). onnx's inliner replaces each such
node by its schema's body (a context-dependent one sees the node's attributes and input types), so
the model imports, and the body's primitive ops (MatMul, Softmax, Sigmoid, Where, ...) lower to
integers like any others. Model-local functions are inlined too: TVM's importer reads none.
"""

from __future__ import annotations

import onnx
import onnx.inliner

from .errors import UnsupportedModelError

STANDARD = ("", "ai.onnx")


def _importable() -> frozenset[str]:
    """The ONNX ops TVM's importer has a converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map())


# attributes (with their default) that TVM's converter ignores: a node that sets another value is expanded
IGNORED_BY_TVM = {"SpaceToDepth": {"mode": b"DCR"}}


# ops whose converter makes only the first output (the others came out as constants)
FIRST_OUTPUT_ONLY = frozenset({"LayerNormalization"})


def _tvm_converts(node, importable: frozenset[str]) -> bool:
    if node.op_type not in importable or node.op_type == "Attention":
        return False  # TVM's Attention converter is the com.microsoft one (reads num_heads)
    if node.op_type in FIRST_OUTPUT_ONLY and any(node.output[1:]):
        return False
    ignored = IGNORED_BY_TVM.get(node.op_type, {})
    return not any(a.name in ignored and onnx.helper.get_attribute_value(a) != ignored[a.name] for a in node.attribute)


def _to_expand(model: onnx.ModelProto, importable: frozenset[str]) -> set[str]:
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD), 1)
    ops = set()
    for node in model.graph.node:
        if node.domain not in STANDARD or _tvm_converts(node, importable):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            continue  # not a standard op: the op check names it
        if schema.has_function or schema.has_context_dependent_function:
            ops.add(node.op_type)
    return ops


def expand_functions(model: onnx.ModelProto, path) -> onnx.ModelProto | None:
    """The model with model-local functions and the standard function ops TVM lacks inlined (bodies
    may call more of them: repeated until none is left), or None when there was nothing to expand.
    Raises UnsupportedModelError naming the nodes that onnx cannot expand."""
    importable, failed = _importable(), {}
    expanded = None
    typed = {v.name for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    model.graph.value_info.extend(  # the inliner reads every operand's type, initializers' too
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in model.graph.initializer if i.name not in typed)
    if model.functions:
        model = expanded = onnx.inliner.inline_local_functions(model)
    for _ in range(4):
        ops = _to_expand(model, importable) - set(failed)
        for op in sorted(ops):
            try:
                model = expanded = onnx.inliner.inline_selected_functions(model, [("", op)],
                                                                          inline_schema_functions=True)
            except RuntimeError as err:  # e.g. an omitted optional input the body reads a type from
                failed[op] = str(err).strip().splitlines()[-1]
        if not ops:
            break
    if failed:
        nodes = [f"{n.op_type} (node {n.name or '<unnamed>'})" for n in model.graph.node if n.op_type in failed]
        raise UnsupportedModelError(
            f"{path}: TVM's ONNX importer cannot convert these node(s), and onnx could not expand them into "
            "their definition (" + "; ".join(f"{op}: {why}" for op, why in failed.items()) + "):\n  " +
            "\n  ".join(nodes))
    return expanded
