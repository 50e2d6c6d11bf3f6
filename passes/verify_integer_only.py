"""Integer-only verifier: proves no float arithmetic remains in a lowered module.

Walks every Relax binding of every function (each value's type must be an integer or
bool tensor, or a tuple/shape of them; `astype` to a float is refused), then legalizes
one call of each kind (op, attributes, operand types) and checks every TIR buffer of every
kernel, those the module has too. Reports every offender at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import tvm
from tvm import relax

from frontends.relax_rewrite import Substitute

from .legalize_once import legalize_ops_once

_INT_PREFIXES = ("int", "uint", "bool")
_FLOAT_RE = re.compile(r"\b(b?float\d+|e\d+m\d+\w*)\b")


@dataclass
class IntegerOnlyReport:
    """The verdict and, if it failed, one line per offending op or kernel buffer."""

    offenders: list[str] = field(default_factory=list)

    @property
    def integer_only(self) -> bool:
        return not self.offenders

    def __str__(self) -> str:
        if self.integer_only:
            return "integer-only: yes"
        return f"integer-only: NO ({len(self.offenders)} float op(s)):\n  " + "\n  ".join(self.offenders)


def _float_types(ty) -> list[str]:
    if isinstance(ty, relax.TensorType):
        dtype = str(ty.dtype)
        return [] if dtype.startswith(_INT_PREFIXES) else [dtype]
    if isinstance(ty, relax.TupleType):
        return [d for f in ty.fields for d in _float_types(f)]
    return []


def verify_integer_only(mod: tvm.IRModule) -> IntegerOnlyReport:
    """Check `mod` (integer Relax, before compilation) holds no float tensor or op."""
    report = IntegerOnlyReport()
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for p in func.params:
            for dtype in _float_types(p.ty):
                report.offenders.append(f"{gv.name_hint}: parameter {p.name} is {dtype}")
        for block in func.body.blocks:
            for b in block.bindings:
                value = b.value
                op = value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else \
                    type(value).__name__
                for dtype in _float_types(b.var.ty):
                    report.offenders.append(f"{gv.name_hint}: {b.var.name} = {op}(...) -> {dtype}")
                if isinstance(value, relax.Call):
                    for i, arg in enumerate(value.args):
                        if isinstance(arg, tvm.ir.GenericConst):
                            for dtype in _float_types(arg.ty):
                                report.offenders.append(f"{gv.name_hint}: {b.var.name} = {op}(...) "
                                                        f"takes a {dtype} constant (argument {i})")
    if report.integer_only:
        _check_kernels(mod, report)  # the kernels it has (the importer's)
        _check_kernels(legalize_ops_once(_one_call_of_each_kind(mod)), report)  # and those its ops become
    return report


def _operand_kind(arg):
    if isinstance(arg, relax.Tuple):
        return tuple(_operand_kind(f) for f in arg.fields)
    if isinstance(arg, tvm.ir.GenericConst):
        return ("const", str(arg.ty))
    return str(arg.ty) if isinstance(arg, relax.Var) else str(arg)


def _one_call_of_each_kind(mod: tvm.IRModule) -> tvm.IRModule:
    """A module of one function per kind of op call in `mod` (op, attributes, operand types; constants
    by type, not value): what legalization makes of a call does not depend on its constants' values, and
    an unrolled recurrence has thousands of calls that differ only in those (a requantization's
    multiplier per step: verifying them all took a tenth of a GRU model's compile)."""
    kinds: dict = {}
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                call = b.value
                if (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                        and call.op.get_attr("FLegalize") is not None):
                    key = (call.op.name, str(call.attrs), tuple(_operand_kind(a) for a in call.args), str(call.ty))
                    kinds.setdefault(key, call)
    bb = relax.BlockBuilder()
    for i, call in enumerate(kinds.values()):
        free = list(relax.analysis.free_vars(call))
        fresh = [relax.Var(v.name, v.ty) for v in free]
        with bb.function(f"kind{i}", fresh):
            bb.emit_func_output(bb.emit(Substitute(dict(zip(free, fresh))).visit_expr(call)))
    return bb.get()


def _check_kernels(mod: tvm.IRModule, report: IntegerOnlyReport) -> None:
    # The Python API has no TIR visitor: scan each kernel's TVMScript for float types
    # (buffers, casts and immediates all print their dtype).
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            found = sorted(set(_FLOAT_RE.findall(func.script())))
            if found:
                report.offenders.append(f"kernel {gv.name_hint} uses {', '.join(found)}")
