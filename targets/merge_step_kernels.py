"""MergeStepKernels: the kernels of one step of an unrolled recurrence -> one kernel.

    a = call_tir(k1, (xs, t, C1))             (t a constant index: the step's take of its input)
    b = call_tir(k2, (a, h, C2))
    h' = call_tir(k3, (b, a, h, C3))          ==>  h' = call_tir(step, (xs, t, C1, h, C2, C3))
                                                   step: k1; k2; k3 in one body, a and b its scratch

An LSTM/GRU unrolled step by step (`frontends/onnx_rnn.py`) ran 6-10 VM calls a step once fused (the
step's take, the recurrent GEMVs, the gate lookups, slices, casts and the gate arithmetic, each a kernel,
and the views between them): at hidden sizes of 16-128 each kernel does tens of nanoseconds of work and
the VM's call around it (~0.3 us: the call, the checks of every tensor argument, views) costs more.

After scheduling, each run of consecutive small kernels (single outputs of at most MAX_OUTPUT_BYTES, tensor
arguments of static shapes) that starts at a step's seed (a kernel reading one constant integer scalar:
the step's take of its input, as `passes/recurrent_steps.py` finds steps; a seed's kernel met at MIN_STEPS
indices or more: a transformer's one take of its first token is none) and ends before the next seed
becomes a Primitive relax function, which FuseTIR turns into one PrimFunc: the scheduled kernels' bodies
in their order, each value passed inside a buffer of the kernel's own, the values read after the run its
outputs. The statements are the kernels' own, so are the integers. Corresponding steps' kernels are
structurally equal (`dedupe_kernels` compiles one). Merged kernels are marked TRUSTED: their argument checks
are dropped (`tir_pipeline.trust_merged_step_arguments`). Does not fire outside recurrences, on calls it
cannot read (symbolic shapes, tuple or shape arguments), or on a run of one kernel.
"""

from __future__ import annotations

import collections

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from frontends.relax_rewrite import Substitute

from .tir_pipeline import TRUSTED

MAX_OUTPUT_BYTES = 1 << 16  # kernels whose outputs are this small are call-bound at a recurrence's sizes
MAX_CALLS = 32  # kernels in one merged step at most
MIN_STEPS = 3  # seeds of one kernel a recurrence has at least (`passes/recurrent_steps.py` asks as many)
# a kernel reading a constant (weights) larger than this streams it for tens of microseconds, beside which its
# call is noise; merged, VFL's 768-wide LSTM GEMVs (2.4 MB of weights a step) ran slower (29.6 -> 35.4 ms a run)
MAX_CONSTANT_BYTES = 1 << 20
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
    if any(isinstance(a, tvm.ir.GenericConst) and _static_bytes(a.ty) > MAX_CONSTANT_BYTES for a in args):
        return None
    func = mod[call.args[0]] if call.args[0] in mod.functions else None
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != len(args) + 1:
        return None
    return func


def _is_seed(call: relax.Call) -> bool:
    """A step's first kernel: it reads a constant integer scalar (the step's index into its input)."""
    return any(isinstance(a, tvm.ir.GenericConst) and a.value.numpy().ndim == 0
               and np.issubdtype(a.value.numpy().dtype, np.integer) for a in call.args[1].fields)


def _seed_kind(mod: tvm.IRModule, binding) -> int | None:
    """The structural hash of a seed's kernel (steps read theirs at different indices), else None."""
    func = _kernel(mod, binding)
    if func is None or not _is_seed(binding.value):
        return None
    return tvm_ffi.structural_hash(func.without_attr("global_symbol"))


def _consistent(funcs: list, run: list) -> bool:
    """Whether every value passed inside the run (or read by two of its kernels) has one buffer type in all the
    kernels that touch it, as FuseTIR requires (a kernel may read a [1, 128] tensor as [128]: left unmerged)."""
    seen = {}
    for func, b in zip(funcs, run):
        for param, arg in zip(func.params[:-1], b.value.args[1].fields):
            key = next((k for k in seen if k.same_as(arg)), arg)
            if key in seen and not tvm_ffi.structural_equal(seen[key], param.ty):
                return False
            seen[key] = param.ty
        seen[b.var] = func.params[-1].ty
    return True


def _primitive(run: list, outputs: list) -> tuple[relax.Function, list]:
    """(a Primitive relax function of the run's calls, its arguments): FuseTIR then makes it one PrimFunc,
    substituting each value's buffers (no copies)."""
    args, params, mapping = [], [], {}
    inside = {b.var for b in run}
    for b in run:
        for a in b.value.args[1].fields:
            if isinstance(a, relax.Var) and (a in mapping or a in inside):
                continue
            if any(a.same_as(x) for x in args):
                continue
            param = relax.Var(f"a{len(params)}", a.ty)
            args.append(a)
            params.append(param)
            if isinstance(a, relax.Var):
                mapping[a] = param
    bb = relax.BlockBuilder()
    with bb.function("step", params, private=True):
        with bb.dataflow():
            for b in run:
                fields = [mapping[a] if isinstance(a, relax.Var)
                          else next(p for x, p in zip(args, params) if x.same_as(a)) for a in b.value.args[1].fields]
                mapping[b.var] = bb.emit(relax.call_tir(b.value.args[0], fields, b.value.ty))
            result = [mapping[o] for o in outputs]
            out = bb.emit_output(relax.Tuple(result) if len(result) > 1 else result[0])
        bb.emit_func_output(out)
    func = bb.get()["step"].with_attr("Primitive", True)
    return func, args


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
            reads_from = [None] * len(bindings)  # vars read after each index (later bindings, the result)
            for i in range(len(bindings) - 1, -1, -1):
                reads_from[i] = set(later)
                relax.analysis.post_order_visit(bindings[i].value, visit)
            # seeds of a recurrence: equal kernels read at MIN_STEPS constant indices or more (a transformer's one
            # take of its first token is no step)
            kind = [_seed_kind(mod, b) for b in bindings]
            counts = collections.Counter(k for k in kind if k is not None)
            seed = lambda at: kind[at] is not None and counts[kind[at]] >= MIN_STEPS  # noqa: E731
            new, i = [], 0
            while i < len(bindings):
                first = _kernel(mod, bindings[i])
                if first is None or not seed(i):
                    new.append(bindings[i])
                    i += 1
                    continue
                j, funcs = i, []
                while j < len(bindings) and len(funcs) < MAX_CALLS:
                    f = _kernel(mod, bindings[j])
                    if f is None or (j > i and seed(j)):
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
                if not outputs or not _consistent(funcs, run):
                    new.extend(run)
                    i = j
                    continue
                tys = [o.ty for o in outputs]
                prim, args = _primitive(run, outputs)
                kernel = builder.add_func(prim, f"merged_step{count}")
                count += 1
                call = builder.normalize(relax.Call(kernel, args))
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
    before = {gv.name_hint for gv, f in out.functions_items() if isinstance(f, tirx.PrimFunc)}
    out = relax.transform.FuseTIR()(out)  # each step's function -> one PrimFunc (the kernels' bodies in order)
    for gv, f in out.functions_items():
        if isinstance(f, tirx.PrimFunc) and gv.name_hint not in before:
            out[gv] = f.with_attr({"tirx.noalias": True, "tirx.is_scheduled": True, TRUSTED: True})
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
