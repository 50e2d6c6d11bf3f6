"""LegalizeOps that builds each distinct kernel once: calls equal but for their variables share one.

TVM's LegalizeOps turns every Relax op call into a TE kernel of its own (~0.4 ms of Python each),
and FuseOps/dedupe merge them again later. A 300-step unrolled LSTM has 96,000 calls and only a
few hundred distinct ones: legalization took 36 s of its build, and as much of calibration's float
build. Here a call whose op, attributes, constant operands and operand types (static shapes) equal
those of one legalized before reuses that result, its variables substituted: the same kernel, the
same values. Only results that are one call reading nothing but the call's own operands are
reused (anything else is legalized afresh).
"""

from __future__ import annotations

import tvm
from tvm import relax, topi

from frontends.relax_rewrite import Substitute


def _static(ty) -> bool:
    if isinstance(ty, relax.TensorType):
        return ty.shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape)
    if isinstance(ty, relax.TupleType):
        return all(_static(f) for f in ty.fields)
    return False


def _operands(expr, out: list) -> bool:
    """Flatten `expr` into `out`: Vars (static shapes), constants and literals (numbers, static
    shapes), through Tuples; False for anything else (the call is then legalized as it is)."""
    if isinstance(expr, relax.Tuple):
        return all(_operands(f, out) for f in expr.fields)
    out.append(expr)
    if isinstance(expr, relax.Var):
        return _static(expr.ty)
    if isinstance(expr, relax.ShapeExpr):
        return all(isinstance(d, tvm.tirx.IntImm) for d in expr.values)
    return isinstance(expr, (tvm.ir.GenericConst, tvm.tirx.IntImm, tvm.tirx.FloatImm, tvm.ir.StringImm))


def _value(operand):
    """What the kernel may depend on, exactly (printed or as bytes: TVM's structural hash collided on
    int64 data, [2**62 - 1] and [2**31 - 1] alike): a Var's type; a small constant's bytes (a
    legalization may inline them); a larger constant's type (it is a kernel argument, substituted
    like a Var)."""
    if isinstance(operand, relax.Var):
        return str(operand.ty)
    if isinstance(operand, tvm.ir.GenericConst):
        data = operand.value.numpy()
        return ("const", str(data.dtype), data.shape, data.tobytes() if data.size <= 64 else None)
    return ("value", str(operand))


def _key(call: relax.Call):
    operands: list = []
    if not isinstance(call.op, tvm.ir.Op) or not all(_operands(a, operands) for a in call.args):
        return None, None
    variables = [v for v in operands if isinstance(v, relax.Var)]
    first = {}
    pattern = tuple(first.setdefault(v, i) for i, v in enumerate(variables))  # add(x, x) is not add(x, y)
    values = tuple(_value(v) for v in operands)
    structure = tuple(len(a.fields) if isinstance(a, relax.Tuple) else -1 for a in call.args)
    attrs = str(call.attrs) if call.attrs is not None else ""
    types = (str(call.ty), tuple(str(t) for t in call.ty_args))
    return (call.op.name, attrs, structure, values, pattern, types), operands


def _cached(default, cache: dict):
    def legalize(bb, call):
        key, operands = _key(call)
        if key is not None and key in cache:
            template, params = cache[key]  # each operand of the first call -> this call's
            return Substitute({p: o for p, o in zip(params, operands) if not p.same_as(o)}).visit_expr(template)
        out = default(bb, call)
        if (key is not None and isinstance(out, relax.Call)
                and set(relax.analysis.free_vars(out)) <= {v for v in operands if isinstance(v, relax.Var)}):
            cache[key] = (out, operands)
        return out

    return legalize


INJECTIVE = 2  # FuseOps' kInjective: AnnotateTIROpPattern keeps an op_pattern it finds


def _take(bb, call):
    """A gather as an injective kernel, as Relay had it: TVM's pattern analysis calls a load at a
    data-dependent index opaque, so every table lookup ran as a kernel of its own, apart from the
    requantization that computes its index (an unrolled LSTM: two VM calls per gate and step)."""
    return bb.call_te(topi.take, call.args[0], call.args[1], call.attrs.axis, mode=call.attrs.mode,
                      primfunc_name_hint="take", primfunc_attrs={"op_pattern": INJECTIVE})


@tvm.transform.module_pass(opt_level=0, name="LegalizeOps")
def legalize_ops_once(mod, _ctx):
    """`relax.transform.LegalizeOps()`, each distinct kernel legalized once (module doc)."""
    cache: dict = {}
    table = {}
    for name in tvm.ir.Op.list_op_names():
        if name.startswith("relax."):
            default = _take if name == "relax.take" else tvm.ir.Op.get(name).get_attr("FLegalize")
            if default is not None:
                table[name] = _cached(default, cache)
    return relax.transform.LegalizeOps(table)(mod)
