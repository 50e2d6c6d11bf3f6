"""MergeStepKernels: the kernels of one step of an unrolled recurrence -> one kernel.

    a = call_tir(k1, (xs, t, C1))             (t a constant index: the step's take of its input)
    b = call_tir(k2, (a, h, C2))
    h' = call_tir(k3, (b, a, h, C3))          ==>  h' = call_tir(step, (xs, t, C1, h, C2, C3))
                                                   step: k1; k2; k3 in one body, a and b its scratch

An LSTM/GRU unrolled step by step (`frontends/onnx_rnn.py`) runs 6-9 kernels a step once fused (the
step's take, the recurrent GEMVs, the gate lookups, slices and the gate arithmetic): at hidden sizes
of 32-128 each does nanoseconds of work and the VM's call around it (~0.3 us: argument checks,
views, tensor allocation) costs more than all of them. After scheduling, each run of consecutive small
kernels (outputs of at most MAX_OUTPUT_BYTES) that starts at a step's take (a kernel reading one
constant scalar index: `passes/recurrent_steps.py` finds steps the same way) and ends before the
next such kernel becomes one PrimFunc: the kernels' bodies in their order, each intermediate a buffer
of its own (scratch), the values read after the run its outputs. The statements are the kernels' own,
so the integers are too. The steps' merged kernels are structurally equal (`dedupe_kernels` compiles
one). Does not fire outside recurrences, on calls it cannot read (symbolic shapes, tuple or shape
arguments), or where a run has a single kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.s_tir.stmt import SBlock, SBlockRealize

from frontends.relax_rewrite import Substitute

from .tir_pipeline import TRUSTED

MAX_OUTPUT_BYTES = 1 << 16  # kernels whose outputs are this small are call-bound at a recurrence's sizes
MAX_CALLS = 32  # kernels in one merged step at most
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def _static_bytes(ty) -> int | None:
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = ty.shape.values
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) * tvm.DataType(str(ty.dtype)).bits // 8


def _kernel(mod: tvm.IRModule, binding) -> tirx.PrimFunc | None:
    """The PrimFunc of a small single-output call_tir whose arguments are tensors (vars or constants)."""
    if not isinstance(binding, relax.VarBinding):
        return None
    call = binding.value
    if not (isinstance(call, relax.Call) and call.op.same_as(_CALL_TIR) and len(call.args) == 2):
        return None
    size = _static_bytes(call.ty)
    if size is None or size > MAX_OUTPUT_BYTES or not isinstance(call.args[1], relax.Tuple):
        return None
    args = list(call.args[1].fields)
    if not all(isinstance(a, (relax.Var, tvm.ir.GenericConst)) and _static_bytes(a.ty) is not None for a in args):
        return None
    func = mod[call.args[0]] if call.args[0] in mod.functions else None
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != len(args) + 1:
        return None
    return func


def _is_seed(call: relax.Call) -> bool:
    """A step's first kernel: it reads a constant integer scalar (the step's index into its input)."""
    return any(isinstance(a, tvm.ir.GenericConst) and a.value.numpy().ndim == 0
               and np.issubdtype(a.value.numpy().dtype, np.integer) for a in call.args[1].fields)


def _copy(src, dst) -> tirx.Stmt:
    """dst[...] = src[...], element by element (two buffers of one shape and dtype)."""
    shape = [int(d) for d in src.shape]
    if shape != [int(d) for d in dst.shape] or str(src.dtype) != str(dst.dtype):
        raise ValueError(f"{src.name} {shape} {src.dtype} read as {dst.name} {list(dst.shape)} {dst.dtype}")
    loops = [tirx.Var(f"i{k}", "int64") for k in range(len(shape))]
    stmt = tirx.BufferStore(dst, tirx.BufferLoad(src, loops), loops)
    for var, extent in reversed(list(zip(loops, shape))):
        stmt = tirx.For(var, tirx.const(0, "int64"), tirx.const(extent, "int64"), tirx.ForKind.SERIAL, stmt)
    return stmt


def _merged(funcs: list, run: list, outputs: list) -> tuple[tirx.PrimFunc, list]:
    """(PrimFunc running `funcs` in order, its relax arguments). A kernel's parameter (a buffer) that reads a
    value made earlier in the run, or an argument an earlier kernel read too, becomes scratch of the merged
    kernel filled by a copy (TVM 0.27 has no buffer substitution that reaches into s_tir blocks' regions);
    `outputs` (values read after the run) are the last parameters."""
    produced = {}  # relax var -> the producing kernel's output buffer
    outside = []  # (relax arg, the first reader's buffer): the merged kernel's inputs
    bodies, scratch = [], []
    for func, binding in zip(funcs, run):
        func = tvm.s_tir.renew_defs(func)  # a kernel run twice in a step (one gate table on two gates)
        copies = []
        for param, arg in zip(func.params[:-1], binding.value.args[1].fields):
            known = produced.get(arg) if isinstance(arg, relax.Var) else None
            if known is None:
                known = next((b for a, b in outside if a.same_as(arg)), None)
            if known is None:
                outside.append((arg, param))
            else:
                copies.append(_copy(known, param))
                scratch.append(param)
        produced[binding.var] = func.params[-1]
        body = func.body
        if isinstance(body, SBlockRealize) and body.block.name_hint == "root" and not body.block.iter_vars:
            scratch.extend(body.block.alloc_buffers)  # the kernel's own scratch, now the merged kernel's
            body = body.block.body
        bodies.extend(copies + [body])
    scratch += [b for v, b in produced.items() if not any(v.same_as(o) for o in outputs)]
    params = [b for _, b in outside] + [produced[v] for v in outputs]
    root = SBlock([], [], [], "root", tirx.SeqStmt(bodies), alloc_buffers=scratch)
    func = tirx.PrimFunc(params, SBlockRealize([], True, root))
    func = func.with_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "s_tir": True, TRUSTED: True})
    return func, [a for a, _ in outside]


@tvm.transform.module_pass(opt_level=0, name="MergeStepKernels")
def merge_step_kernels(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every run of a recurrence step's small kernels, one kernel (see the module docstring)."""
    builder, rewritten, count = relax.BlockBuilder(mod), {}, 0
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        blocks, changed = [], False
        for block in func.body.blocks:
            if not isinstance(block, relax.DataflowBlock):
                blocks.append(block)
                continue
            bindings = list(block.bindings)
            later = set()  # vars read by the block's later bindings or the function's result

            def visit(e, into=later):
                if isinstance(e, relax.Var):
                    into.add(e)

            relax.analysis.post_order_visit(func.body.body, visit)
            reads_from = [None] * len(bindings)  # vars read at or after each index
            for i in range(len(bindings) - 1, -1, -1):
                reads_from[i] = set(later)
                relax.analysis.post_order_visit(bindings[i].value, visit)
            new, i = [], 0
            while i < len(bindings):
                func_i = _kernel(mod, bindings[i])
                if func_i is None or not _is_seed(bindings[i].value):
                    new.append(bindings[i])
                    i += 1
                    continue
                j, funcs = i, []
                while j < len(bindings) and len(funcs) < MAX_CALLS:
                    f = _kernel(mod, bindings[j])
                    if f is None or (j > i and _is_seed(bindings[j].value)):
                        break
                    funcs.append(f)
                    j += 1
                if len(funcs) < 2:
                    new.append(bindings[i])
                    i += 1
                    continue
                after = reads_from[j - 1]
                run = bindings[i:j]
                outputs = [b.var for b in run if b.var in after or not isinstance(b.var, relax.DataflowVar)]
                if not outputs:
                    new.extend(run)
                    i = j
                    continue
                try:
                    merged, args = _merged(funcs, run, outputs)
                except ValueError:  # a kernel that reads a value with another shape: left as it was
                    new.extend(run)
                    i = j
                    continue
                kernel = builder.add_func(merged, f"merged_step{count}")
                count += 1
                tys = [o.ty for o in outputs]
                call = builder.normalize(relax.call_tir(kernel, args, tys[0] if len(tys) == 1 else tys))
                if len(outputs) == 1:
                    new.append(relax.VarBinding(outputs[0], call))
                else:
                    tuple_var = relax.DataflowVar(f"step{count}", relax.TupleType(tys))
                    new.append(relax.VarBinding(tuple_var, call))
                    new.extend(relax.VarBinding(o, builder.normalize(relax.TupleGetItem(tuple_var, k)))
                               for k, o in enumerate(outputs))
                changed = True
                i = j
            blocks.append(relax.DataflowBlock(new) if changed else block)
        if changed:
            rewritten[gv] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                                     func.is_pure, func.attrs, func.span)
    if not rewritten:
        return mod
    out = builder.get()
    for gv, func in rewritten.items():
        out[gv] = func
    return out



@tvm.transform.module_pass(opt_level=0, name="ForwardTupleItems")
def forward_tuple_items(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """`t = (a, b); x = t[1]` -> x is b, and t dropped where nothing else reads it: a merged step with two
    outputs (an LSTM's h and c) is a call writing into two tensors, which CallTIRRewrite then packs into a
    tuple the VM built at every step (`vm.builtin.make_tuple`, a call as costly as a kernel's)."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        tuples, mapping = {}, {}
        for block in func.body.blocks:
            for b in block.bindings:
                value = b.value
                if isinstance(value, relax.Tuple) and all(isinstance(f, relax.Var) for f in value.fields):
                    tuples[b.var] = value
                elif (isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var)
                      and value.tuple_value in tuples):
                    mapping[b.var] = tuples[value.tuple_value].fields[value.index]
        if not mapping:
            continue
        rename = Substitute(mapping)
        blocks = []
        for block in func.body.blocks:
            bindings = [relax.VarBinding(b.var, rename.visit_expr(b.value)) if isinstance(b, relax.VarBinding)
                        else relax.MatchCast(b.var, rename.visit_expr(b.value), b.ty)
                        for b in block.bindings if b.var not in mapping]
            blocks.append(type(block)(bindings))
        body = rename.visit_expr(func.body.body)
        used = set()

        def visit(e):
            if isinstance(e, relax.Var):
                used.add(e)

        for block in blocks:
            for b in block.bindings:
                relax.analysis.post_order_visit(b.value, visit)
        relax.analysis.post_order_visit(body, visit)
        blocks = [type(block)([b for b in block.bindings if not (b.var in tuples and b.var not in used)])
                  for block in blocks]
        out[gv] = relax.Function(func.params, relax.SeqExpr(blocks, body), func.ret_ty, func.is_pure, func.attrs,
                                 func.span)
    return out
