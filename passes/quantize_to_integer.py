"""QuantizeToInteger: float Relax `main` (weights bound as constants) -> integer-only `main`.

    main(x: float32) -> float32      ==>      main(q_x: int8) -> int8 | int32

Each binding is replaced by the lowering registered for its op (`passes/lowering`), using
the calibrated range of every float tensor. The float quantizer of the inputs and the
dequantizer of the outputs move to the graph boundary, recorded as the function
attribute `intq.boundary` (JSON: names, dtypes, scales); the runtime applies them. A float input
that the graph only casts to integers (float ids) becomes an exact integer input instead (scale None:
`lowering/integer_inputs.py`).
Fails, listing every offending binding at once, if an op has no integer lowering
(unless `QuantConfig.allow_float`: then such ops run in float between a dequantize and
a quantize, and the verifier reports the module as not integer-only).

Sensitive tensors: where the calibrated ranges carry a `SensitivityProbe` and
`QuantConfig.sensitivity_tol` is set, the module is first lowered at 8 bits (traced) to list every
tensor that becomes 8-bit, the probe finds those whose 8-bit grid alone costs the outputs more than
the tolerance (`passes/sensitivity.py`), and the lowering runs again with them in
`QuantConfig.wide_tensors` (16 bits), recorded with their measured errors as `intq.wide_tensors`.
First, the tensors whose 8-bit grid is coarse for their own calibration values (a relative error
above the tolerance, from the calibration's sums of squares: `coarse_grids`) are measured together,
in one set, and all widened if that set costs the outputs more than the goal (dozens of such
tensors in a re-parameterized text detector, too many to find one by one in the probe's time;
none kept in most CNNs, whose outputs do not mind); the probe searches the rest
(`intq.coarse_grids` records what was done).

Debugging (`trace=True`): the lowered `main` also returns, after its outputs, the integer
value standing for every float binding (and every 8/16-bit requantization of it that a
consumer asked for); `self.traced` lists them as `TracedValue`s (float binding name, scale,
channel axis), so that `benchmarks/op_errors.py` can compare each with the float model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import relax

from frontends.errors import CompileError, UnsupportedModelError
from frontends.onnx_origins import ORIGINS_ATTR, origin

from . import constant_arrays
from .lowering.embedding import is_integer_op, lower_integer_op
from .lowering import (LOWERINGS, Accumulator, ChannelQuantized, IntTensor, LoweringContext, QuantConfig, Quantized,
                       activation_scale, calibrated_qmax, float_fallback)
from .lowering.feature_inputs import feature_scales, whole_scale
from .lowering.float_fallback import FloatTensor, quantize_float
from .lowering.integer_inputs import find_exact_inputs, lower_exact, vars_read
from .lowering.values import MaskedLogits, MaskPenalty
from .reference.kernels import INT_RANGE
from .narrow_table_inputs import narrow_table_inputs, table_tensors
from .recurrent_steps import whole_groups
from .bias_choice import uncorrected_layers
from .sensitivity import coarse_grids, find_sensitive, scaled_input
from .smooth_choice import SmoothingChoice, matmul_readers
from .short_multipliers import short_multipliers

OFFSET_AWARE = frozenset({"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
                          "relax.matmul"})
BOUNDARY_ATTR = "intq.boundary"
LAYERS_ATTR = "intq.layers"
FLOAT_NODES_ATTR = "intq.float_nodes"  # JSON [{"node", "op", "reason"}]: what allow_float left in float
WIDE_ATTR = "intq.wide_tensors"  # JSON {binding: error at 8 bits}: kept 16-bit (measured output error, or the
# local grid error of those in COARSE_ATTR)
BIAS_ATTR = "intq.bias_correction"  # JSON {"layers", "corrected", "uncorrected", "chosen": output errors,
# "uncorrected_layers": [binding]}: where bias correction was measured to help (bias_choice.py)
COARSE_ATTR = "intq.coarse_grids"  # JSON {"tensors": [binding], "error": output error of them together at
# 8 bits (null: not measured), "kept": widened}: the tensors whose 8-bit grid is coarse for their values
MAX_WIDE = 16  # sensitive tensors promoted to 16 bits, at most (the worst first)
SENSITIVITY_GOAL = 0.05  # the output error the tensors left at 8 bits may cost together (cosine ~0.999)
LAYOUT_OPS = frozenset({"relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
                        "relax.strided_slice", "relax.split", "relax.flatten"})  # same integers as their input
OUTPUT_PATH_OPS = LAYOUT_OPS | {"relax.concat", "relax.scatter_nd", "relax.scatter_elements"}  # scatters: int32 inside
ARITHMETIC = frozenset({"relax.add", "relax.subtract"})


@dataclass(frozen=True)
class TracedValue:
    """An extra output of a traced module: the integers for float binding `name`
    (`requant` says which requantization of it: "" for the value itself, else its dtype),
    real value `q * scale` with `scale` per channel along `axis` (None: per tensor)."""

    name: str
    requant: str
    scale: np.ndarray
    axis: int | None
    dtype: str
    offset: float = 0.0  # the integers stand for the real value + offset


def _weight_rowmax(func: relax.Function) -> dict[str, np.ndarray]:
    """{tensor name: max |W| per input channel over every constant-weight matmul reading it}."""
    out: dict[str, np.ndarray] = {}
    rows: dict[int, np.ndarray] = {}  # an unrolled recurrence's steps read one array
    for name, readers in matmul_readers(func).items():
        for _, w in readers:
            row = rows.get(id(w))
            if row is None:
                row = rows[id(w)] = np.abs(w).max(axis=1)
            prev = out.get(name)
            out[name] = row if prev is None or prev.shape != row.shape else np.maximum(prev, row)
    return out


def _bias_after(func: relax.Function) -> dict[str, np.ndarray]:
    """{conv2d or matmul binding name: max |bias| per output channel} where the binding's only use
    adds a constant bias (a folded BatchNorm, a Gemm's C): what `linear._bias_fitting` reads."""
    bindings = list(_bindings(func))
    uses: dict[str, int] = {}
    for b in bindings:
        for arg in getattr(b.value, "args", []) if isinstance(b.value, relax.Call) else []:
            if isinstance(arg, relax.Var):
                uses[arg.name] = uses.get(arg.name, 0) + 1
    layers = {b.var.name: b.value for b in bindings if isinstance(b.value, relax.Call)
              and isinstance(b.value.op, tvm.ir.Op) and b.value.op.name in ("relax.nn.conv2d", "relax.matmul")
              and len(b.value.args) == 2 and isinstance(b.value.args[1], tvm.ir.GenericConst)}
    out: dict[str, np.ndarray] = {}
    for b in bindings:
        v = b.value
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.add"):
            continue
        for x, c in (v.args, v.args[::-1]):
            if isinstance(x, relax.Var) and x.name in layers and uses.get(x.name) == 1 \
                    and isinstance(c, tvm.ir.GenericConst):
                rank = len(x.ty.shape)
                bias = np.abs(c.value.numpy().astype(np.float64))
                if bias.ndim > rank:
                    break
                bias = bias.reshape((1,) * (rank - bias.ndim) + bias.shape)
                axis = 1 if layers[x.name].op.name == "relax.nn.conv2d" else rank - 1
                out[x.name] = bias.max(axis=tuple(a for a in range(rank) if a != axis)).reshape(-1)
                break
    return out


def _moves_wide(ctx: LoweringContext, value: relax.Expr, env: dict) -> bool:
    """A layout op of a 16-bit value: its result stays 16 bits for the conv or matmul it feeds."""
    return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in LAYOUT_OPS
            and isinstance(value.args[0], relax.Var) and ctx.is_wide(env.get(value.args[0])))


def _output_bound(func: relax.Function) -> frozenset[str]:
    """Bindings whose every use leads to a graph output through layout ops, concats, sums and
    differences, and scalings by a constant alone: a detector's concatenated head and the box
    arithmetic in it (YOLOv8: anchor -+ distances, their sum / 2 and difference, joined and
    multiplied by each anchor's stride). What `layout.lower_concat` may leave at one scale per
    part, and what is carried at 16 bits: at 8 bits, a box's size, the difference of two corners
    80 grid units apart, was off by 2-3 steps of those corners (box IoU 0.71 to float)."""
    uses: dict[str, list] = {}
    bindings = list(_bindings(func))
    for b in bindings:
        for arg in vars_read(b.value):
            uses.setdefault(arg.name, []).append(b)
    outputs = {v.name for v in vars_read(func.body.body)}
    bound: set[str] = set()
    for b in reversed(bindings):
        name = b.var.name
        consumers = uses.get(name, [])
        if (name in outputs or consumers) and all(
                c.var.name in bound and (isinstance(c.value, relax.Tuple) or isinstance(c.value, relax.TupleGetItem)
                                         or (isinstance(c.value, relax.Call) and isinstance(c.value.op, tvm.ir.Op)
                                             and c.value.op.name in OUTPUT_PATH_OPS | ARITHMETIC)
                                         or _scales(c.value, name))
                for c in consumers):
            bound.add(name)
    return frozenset(bound)


def _passed_inputs(func: relax.Function, bound: frozenset[str]) -> list[str]:
    """Float inputs that some path takes to an output through the ops of `_output_bound` alone (a skip
    connection, y = x + f(x), or a part of x copied out): they enter at 16 bits, or the output
    would carry the input's 8-bit rounding where float passes the input through exactly (an
    audio watermarker's residual, 1% of its output, came out at an SNR of 1 dB)."""
    outputs = {v.name for v in vars_read(func.body.body)}
    found = []
    for p in func.params:
        if _has_float(p.ty) and (p.name in outputs or any(
                b.var.name in bound and any(v.same_as(p) for v in vars_read(b.value)) for b in _bindings(func))):
            found.append(p.name)
    return found


SMALL_TENSOR = 64  # elements: a float activation this small is carried at 16 bits


def _float_tensors(func: relax.Function, most: int | None = None) -> list[str]:
    """Float inputs and bindings (given `most`: those of at most `most` elements that are neither a
    table's input nor its output). The small ones are carried at 16 bits: a handful of values, often
    each of its own magnitude (a 4 x 4 crop transform: scales near 0.06 and 1.3 beside translations
    near 30), which one 8-bit grid rounds to a few levels or to 0, and 16 bits cost nothing there. (A face mesh's lip transform came
    out with its rotation at 0 and its scale 36% off: crops 3-8 px away.) A table's input and output
    are left as they are: at 16 bits its table has 65536 entries, one per step of an unrolled
    recurrence's gates."""
    found = []
    skip = table_tensors(func) if most is not None else set()
    for var in [*func.params, *(b.var for b in _bindings(func))]:
        ty = var.ty
        if not (isinstance(ty, relax.TensorType) and str(ty.dtype).startswith("float")) or var.name in skip:
            continue
        if most is not None:
            try:
                if int(np.prod([int(d) for d in ty.shape])) > most:
                    continue
            except (TypeError, ValueError):  # a symbolic or unknown shape
                continue
        found.append(var.name)
    return found


def _scales(value, name: str) -> bool:
    """Is `value` the tensor bound to `name` times or over a constant?"""
    x = scaled_input(value)
    return x is not None and x.name == name


def _bindings(func: relax.Function):
    for block in func.body.blocks:
        yield from block.bindings


def check_lowerable(func: relax.Function) -> None:
    """Refuse, listing every one at once, the float ops of `func` that no lowering takes (before
    calibration spends its time on the model)."""
    bad = [f"{_named(func, b.var.name)} = {_op_text(b.value)}" for b in _bindings(func)
           if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
           and b.value.op.name not in LOWERINGS and _has_float(b.var.ty)]
    if bad:
        raise UnsupportedModelError(f"{len(bad)} operation(s) have no integer lowering:\n  " + "\n  ".join(bad)
                                    + "\nPass --allow-float to run them in float.")


def _named(func: relax.Function, name: str) -> str:
    """`name`, with the ONNX node its binding came from where the import recorded it."""
    where = origin(func, name)
    return f"{where}, binding {name!r}" if where else f"binding {name!r}"


def _named_entry(node: dict) -> str:
    """A float_nodes entry's binding, with its ONNX node where known."""
    return f"{node['onnx']}, binding {node['node']!r}" if node.get("onnx") else f"binding {node['node']!r}"


def _op_text(call: relax.Call) -> str:
    """The op, and for a kernel the importer emitted (call_tir) the kernel's name: what the ONNX node became."""
    if call.op.name == "relax.call_tir" and isinstance(call.args[0], tvm.ir.GlobalVar):
        return f"relax.call_tir({call.args[0].name_hint}: a kernel TVM's importer made of an ONNX op)"
    return call.op.name


def _has_float(ty) -> bool:
    if isinstance(ty, relax.TupleType):
        return any(_has_float(f) for f in ty.fields)
    return str(getattr(ty, "dtype", "")).startswith("float")


def _outputs(body: relax.Expr, env: dict) -> list:
    value = _arg(body, env)
    return value if isinstance(value, list) else [value]


class QuantizeToInteger:
    """Lower `main` to integer ops given per-tensor ranges {binding name: (lo, hi)}.

    A plain callable `mod -> mod` rather than a `tvm.transform` pass, so that a
    CompileError reaches the user as itself instead of wrapped by TVM's FFI.
    """

    def __init__(self, ranges: dict[str, tuple[float, float]], config: QuantConfig = QuantConfig(),
                 trace: bool = False):
        self.ranges, self.config, self.trace = ranges, config, trace
        self.traced: list[TracedValue] = []
        self.float_nodes: list[dict] = []  # allow_float: {"node", "op", "reason"} per binding run in float
        self.coarse: dict = {}  # the tensors with a coarse 8-bit grid, their output error together, kept wide?
        self.bias: dict = {}  # where bias correction stays (bias_choice.py): the layers left uncorrected, errors
        self.weight_errors: dict = {}  # the corrected layers' weight rounding errors (`WeightError`)

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        func = mod["main"]
        if not self.config.allow_float:
            check_lowerable(func)
        wide, uncorrected = self._sensitive(mod)
        bound = _output_bound(func)
        # what only layout ops take to an output is carried at 16 bits: an 8-bit output grid costs
        # every user (box corners 1.8 px apart, 18 levels of a mask's probability) and saves nothing
        config = replace(self.config, uncorrected=(*self.config.uncorrected, *uncorrected), wide_tensors=(
            *self.config.wide_tensors, *wide, *(_float_tensors(func) if self.config.activation_bits == 16 else ()),
            *((*bound, *_passed_inputs(func, bound)) if self.config.wide_outputs else ()),
            *(_float_tensors(func, SMALL_TENSOR) if self.config.wide_outputs and self.config.sized_widths else ())))
        ranges = narrow_table_inputs(func, self.ranges, set(config.wide_tensors))
        bb = relax.BlockBuilder()
        ctx = LoweringContext(bb, ranges, config, getattr(self.ranges, "channel_amax", None),
                              _weight_rowmax(func), _bias_after(func), getattr(self.ranges, "channel_mean", None))
        ctx.output_bound, ctx.func = bound, func
        probe = getattr(self.ranges, "probe", None)
        if probe is not None and config.smooth_alpha is not None and config.smooth_search:
            ctx.smoothing = SmoothingChoice(probe, func, config, getattr(self.ranges, "steps", []))
        env: dict[relax.Var, object] = {}
        params, boundary = [], {"inputs": [], "outputs": []}
        features: dict[relax.Var, tuple] = {}  # inputs with a scale per feature: (param, scales, max |x| per feature)
        dtype = self.config.residual_dtype  # transformers: the input starts the int16 residual stream
        self.exact = find_exact_inputs(func)  # float ids that the graph only casts to integers
        for p in func.params:
            if p.name in self.exact.dtypes:  # passed as the integers the Cast makes (runtime truncates)
                q = relax.Var(p.name, relax.TensorType(p.ty.shape, self.exact.dtypes[p.name]))
                params.append(q)
                env[p] = IntTensor(q)
                boundary["inputs"].append({"name": p.name, "dtype": self.exact.dtypes[p.name], "scale": None})
                continue
            if not str(p.ty.dtype).startswith("float"):  # token ids, masks: exact integers, kept as they are
                params.append(p)
                env[p] = IntTensor(p)
                boundary["inputs"].append({"name": p.name, "dtype": str(p.ty.dtype), "scale": None})
                continue
            lo, hi = ctx.range_of(p)
            in_dtype = "int16" if p.name in config.wide_tensors else dtype  # its 8-bit grid too coarse
            amax = ctx.channel_amax.get(p.name, (None,))[0]
            whole = p.name in getattr(self.ranges, "whole", ())  # counts, levels: a grid that keeps them whole
            sentinel = getattr(self.ranges, "sentinels", {}).get(p.name)  # one scale: its code at the grid's end
            scales = None if sentinel is not None else feature_scales(func, p, amax, INT_RANGE[in_dtype][1], whole)
            if scales is not None:  # a scale per feature (lowering/feature_inputs.py): accumulated below
                q = relax.Var(p.name, relax.TensorType(p.ty.shape, "int16"))
                params.append(q)
                features[p] = (q, scales, amax)
                boundary["inputs"].append({"name": p.name, "dtype": "int16", "scale": scales.tolist(),
                                           "axis": len(p.ty.shape) - 1})
                continue
            scale = activation_scale(lo, hi, in_dtype)
            scale = whole_scale(scale) if whole else scale
            q = relax.Var(p.name, relax.TensorType(p.ty.shape, in_dtype))
            params.append(q)
            env[p] = Quantized(q, scale, in_dtype, qmax=calibrated_qmax(in_dtype))
            if in_dtype != dtype:  # convs and matmuls then keep its 16 bits where their sums allow
                ctx.mark_wide(env[p])
            boundary["inputs"].append({"name": p.name, "dtype": in_dtype, "scale": scale,
                                       **({} if sentinel is None else {"sentinel": sentinel})})
        with bb.function("main", params):
            with bb.dataflow():
                for p, (q, scales, amax) in features.items():
                    ctx.var = p
                    env[p] = Accumulator(ctx.emit(relax.op.astype(q, "int32")), scales, len(p.ty.shape) - 1,
                                         ctx.range_of(p))
                    ctx.features[env[p]] = amax
                    if p.name in config.wide_tensors:  # measured sensitive: its matmul reads 16 bits where the sums fit
                        ctx.mark_wide(env[p])
                for binding in _bindings(func):
                    ctx.var = binding.var
                    env[binding.var] = self._lower_binding(ctx, binding.value, env)
                    if ctx.wide_output() or _moves_wide(ctx, binding.value, env):
                        ctx.mark_wide(env[binding.var])
                ctx.var = None
                outs = []
                for value in _outputs(func.body.body, env):
                    expr, meta = self._output(ctx, value)
                    outs.append(bb.emit_output(expr))
                    boundary["outputs"].append(meta)
                if self.trace:
                    outs += [bb.emit_output(e) for e in self._traced_values(ctx, func, env)]
            result = outs[0] if len(outs) == 1 else relax.Tuple(outs)
            bb.emit_func_output(result)
        corrected = set(ctx.corrected)
        self.weight_errors = {n: r for n, r in ctx.weight_errors.items() if n in corrected}
        if self.float_nodes and not self.config.allow_float:
            raise UnsupportedModelError(
                f"{len(self.float_nodes)} node(s) cannot be lowered to integers:\n  " + "\n  ".join(
                    f"{_named_entry(n)} ({n['op']}): {n['reason']}" for n in self.float_nodes) +
                "\nPass --allow-float to run them in float.")
        new = bb.get()["main"].with_attr(BOUNDARY_ATTR, json.dumps(boundary))
        new = new.with_attr(LAYERS_ATTR, json.dumps(ctx.layers))
        new = new.with_attr(FLOAT_NODES_ATTR, json.dumps(self.float_nodes))
        if func.attrs is not None and ORIGINS_ATTR in func.attrs:  # integer bindings keep their float names
            new = new.with_attr(ORIGINS_ATTR, func.attrs[ORIGINS_ATTR])
        new = new.with_attr(WIDE_ATTR, json.dumps(wide))
        new = new.with_attr(COARSE_ATTR, json.dumps(self.coarse))
        new = new.with_attr(BIAS_ATTR, json.dumps(self.bias))
        out_mod = bb.get()  # with the TE kernels that lowerings emit through call_te (4-bit weights)
        out_mod["main"] = new
        taken = {gv.name_hint for gv in out_mod.get_global_vars()}
        for gv, f in mod.functions.items():  # the importer's PrimFuncs that float-kept call_tirs (einsum) call
            if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint not in taken:
                out_mod[gv] = f
        return relax.transform.DeadCodeElimination()(short_multipliers(out_mod))

    def _sensitive(self, mod: tvm.IRModule) -> tuple[dict[str, float], list[str]]:
        """{binding: error at 8 bits} of the tensors to carry at 16 bits (memoized per config): those
        whose grid is coarse for their own values (`coarse_grids`, the local relative error), then
        those the probe finds sensitive among the rest (the output error); and the layers whose bias
        to leave uncorrected (`bias_choice.py`)."""
        probe, tol = getattr(self.ranges, "probe", None), self.config.sensitivity_tol
        moments = getattr(self.ranges, "moments", {})
        if (probe is None and not moments) or tol is None:
            return {}, []
        key = replace(self.config, sensitivity_tol=None)
        memo = (probe.__dict__ if probe is not None else self.ranges.__dict__).setdefault("_wide_memo", {})
        if key not in memo:
            eight = QuantizeToInteger(self.ranges, key, trace=True)
            eight(mod)
            ops = {b.var.name: b.value.op.name for b in _bindings(mod["main"])
                   if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)}
            grids = {}
            for t in eight.traced:  # every 8-bit value but those a layout op passes through
                if t.dtype not in ("int8", "uint8") or not (t.requant or ops.get(t.name) not in LAYOUT_OPS):
                    continue
                if t.requant.endswith("smooth"):  # a matmul input on a grid per channel (its reduction axis)
                    grids.setdefault(t.name, (np.asarray(t.scale, np.float64), *INT_RANGE[t.dtype], t.offset))
                elif t.scale.size == 1 and not t.offset:
                    grids.setdefault(t.name, (float(t.scale.reshape(())), *INT_RANGE[t.dtype]))
            if key.residual_bits == 8:  # the float inputs' own 8-bit grids (an audio waveform wants 16)
                exact = find_exact_inputs(mod["main"]).dtypes
                for p in mod["main"].params:
                    if str(p.ty.dtype).startswith("float") and p.name not in exact and p.name in self.ranges:
                        grids.setdefault(p.name, (activation_scale(*self.ranges[p.name], "int8"), *INT_RANGE["int8"]))
            coarse = coarse_grids(grids, moments, tol)
            report = {"tensors": list(coarse), "error": None, "kept": bool(coarse)}
            try:
                if probe and coarse:  # one measurement: do they cost the outputs anything together?
                    report["error"] = probe.error({n: grids[n] for n in coarse}) ** 0.5
                    report["kept"] = report["error"] > SENSITIVITY_GOAL  # a set: the bar of the rest together
                    if not report["kept"]:
                        coarse = {}
                rest = {n: g for n, g in grids.items() if n not in coarse}
                measured = find_sensitive(probe, rest, tol, MAX_WIDE, SENSITIVITY_GOAL,
                                          groups=getattr(self.ranges, "steps", [])) if probe else {}
            except Exception as err:  # noqa: BLE001  (a measurement that cannot run leaves the rest at 8 bits)
                warnings.warn(f"sensitivity measurement failed ({type(err).__name__}: {err}); "
                              "the activations it would measure stay at 8 bits", stacklevel=2)
                measured = {}
            bias = {"uncorrected": []}
            if probe and eight.weight_errors:
                try:
                    off, bias = uncorrected_layers(probe, eight.weight_errors, mod)
                    bias["uncorrected_layers"] = off
                except Exception as err:  # noqa: BLE001  (a measurement that cannot run leaves the correction on)
                    warnings.warn(f"bias correction measurement failed ({type(err).__name__}: {err}); "
                                  "every layer's bias stays corrected", stacklevel=2)
            memo[key] = {**coarse, **measured}, report, bias
        wide, self.coarse, self.bias = memo[key]
        return whole_groups(wide, getattr(self.ranges, "steps", [])), self.bias.get("uncorrected_layers", [])

    def _traced_values(self, ctx: LoweringContext, func: relax.Function, env: dict) -> list[relax.Expr]:
        names, exprs = {}, []
        self.traced = []

        def add(name, requant, value):
            if isinstance(value, ChannelQuantized):
                scale, axis, dtype = np.asarray(value.scale, np.float64), value.axis, value.dtype
            elif isinstance(value, Quantized):
                scale, axis, dtype = np.asarray(value.scale, np.float64), None, value.dtype
            else:
                scale, axis, dtype = np.asarray(value.scale, np.float64), value.axis, "int32"
            self.traced.append(TracedValue(name, requant, scale, axis, dtype, getattr(value, "offset", 0.0)))
            exprs.append(value.expr)

        for b in _bindings(func):
            value = env.get(b.var)
            if isinstance(value, (Quantized, Accumulator)) and str(getattr(b.var.ty, "dtype", "")).startswith("float"):
                names.setdefault(id(value), b.var.name)
                add(b.var.name, "", value)
        for (value, how), q in ctx.materialized_items():
            if id(value) in names and q is not value:
                add(names[id(value)], q.dtype + ("-smooth" if how == "smooth" else ""), q)
        return exprs

    def _lower_binding(self, ctx: LoweringContext, value: relax.Expr, env: dict):
        """Lower one binding; any failure of its lowering runs it in float instead and is recorded
        (with allow_float it stays so; without, every recorded node is refused at once at the end)."""
        if ctx.var in self.exact.roles:  # on the integers of an exact float input
            return lower_exact(ctx, self.exact.roles[ctx.var], value, env)
        op = value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else None
        if op is not None and op not in LOWERINGS and not is_integer_op(value, [_arg(a, env) for a in value.args]):
            reason = "no integer lowering"
        else:
            try:
                return self._lower(ctx, value, env)
            except Exception as err:  # noqa: BLE001  (a float node or a refusal naming it, never a crash)
                if op is None:
                    raise
                text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                reason = getattr(err, "reason", None) or (
                    text if isinstance(err, CompileError) else f"{type(err).__name__}: {text}")
        args = [_arg(a, env) for a in value.args]
        args = [[ctx.without_offset(v) for v in a] if isinstance(a, list) else ctx.without_offset(a) for a in args]
        try:
            result = float_fallback(ctx, value, args)
        except Exception as err:  # noqa: BLE001
            raise UnsupportedModelError(f"{_named(ctx.func, ctx.var.name)} ({op}) has no integer lowering ({reason}) and "
                                        f"cannot run in float either: {type(err).__name__}: {err}") from None
        self.float_nodes.append({"node": ctx.var.name, "op": op, "reason": reason,
                                 **({"onnx": ctx.origin} if ctx.origin else {})})
        return result

    @staticmethod
    def _lower(ctx: LoweringContext, value: relax.Expr, env: dict):
        if isinstance(value, relax.Var):
            return env[value]
        if isinstance(value, (tvm.ir.GenericConst, relax.Tuple)):
            return _arg(value, env)
        if isinstance(value, relax.TupleGetItem):
            item = _arg(value.tuple_value, env)[value.index]
            if isinstance(item, FloatTensor) and item.range is None and ctx.var.name in ctx.ranges:
                return FloatTensor(item.expr, tuple(ctx.out_range()))  # a float fallback's tuple field
            return item
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
            ctx.fail(f"unsupported expression {type(value).__name__}")
        args = [_to_integer(ctx, _arg(a, env)) for a in value.args]
        if value.op.name not in OFFSET_AWARE:  # GELU outputs' offsets reach only layout ops and matmuls
            args = [[ctx.without_offset(v) for v in a] if isinstance(a, list) else ctx.without_offset(a) for a in args]
        if value.op.name not in MASK_CONSUMERS:
            args = [[_unmasked(ctx, v) for v in a] if isinstance(a, list) else _unmasked(ctx, a) for a in args]
        if is_integer_op(value, args):
            return lower_integer_op(ctx, value, args)
        return LOWERINGS.get(value.op.name, float_fallback)(ctx, value, args)

    @staticmethod
    def _output(ctx: LoweringContext, value) -> tuple[relax.Expr, dict]:
        if isinstance(value, np.ndarray):  # a constant output (EyeLike, a shape): exact integers, else int16
            if value.dtype.kind in "biu" or (np.all(np.round(value) == value) and np.abs(value).max(initial=0) < 2**31):
                return relax.const(value.astype("int32")), {"dtype": "int32", "scale": [1.0], "axis": None}
            scale = float(np.abs(value).max(initial=0)) / 32767 or 1.0
            q = np.clip(np.round(value.astype(np.float64) / scale), -32768, 32767).astype("int16")
            return relax.const(q), {"dtype": "int16", "scale": [scale], "axis": None}
        if isinstance(value, (IntTensor, FloatTensor)):  # exact integers, or a float fallback's float result
            dtype = str(value.expr.ty.dtype)
            return value.expr, {"dtype": dtype, "scale": [1.0], "axis": None}
        if isinstance(value, MaskPenalty) and value.bias is None and value.fill is not None and math.isfinite(value.fill):
            # an additive mask handed to what runs after the artifact (--allow-float's tail: an attention op
            # it takes as its bias): 0 or -1 at scale |fill|, which dequantizes to 0 or the fill exactly
            keep = ctx.emit(relax.op.where(value.keep, relax.const(0, "int8"), relax.const(-1, "int8")))
            return keep, {"dtype": "int8", "scale": [abs(value.fill)], "axis": None}
        value = ctx.without_offset(value)
        if isinstance(value, Accumulator) and value.clamp == (-math.inf, math.inf):
            # Unclamped accumulators leave at full int32 precision (e.g. logits).
            scale = np.asarray(value.scale, np.float64)
            return value.expr, {"dtype": "int32", "scale": scale.reshape(-1).tolist(), "axis": value.axis}
        q = ctx.materialize(value)
        return q.expr, {"dtype": q.dtype, "scale": [q.scale], "axis": None}


def _to_integer(ctx: LoweringContext, value):
    """Float results of fallbacks quantized for an integer lowering (memoized per value)."""
    if isinstance(value, list):
        return [_to_integer(ctx, v) for v in value]
    if not isinstance(value, FloatTensor):
        return value
    memo = ctx.__dict__.setdefault("_float_quantized", {})
    if value not in memo:
        memo[value] = quantize_float(ctx, value)
    return memo[value]


MASK_CONSUMERS = ("relax.nn.softmax", "relax.nn.log_softmax")  # take masked logits as they are


def _unmasked(ctx: LoweringContext, value):
    """Masked logits that reach anything but a softmax (a where(cond, -inf, x) guard that only looks
    like a mask, e.g. TVM's isnan guard of a tensor-valued Clip bound): the masked positions at the
    lowest value of the logits' integer range, which is what -inf saturates to."""
    if not isinstance(value, MaskedLogits):
        return value
    logits = value.logits
    low = INT_RANGE[str(logits.expr.ty.dtype)][0]
    expr = ctx.emit(relax.op.where(value.keep, logits.expr, relax.const(low, str(logits.expr.ty.dtype))))
    return replace(logits, expr=expr)


def _arg(arg: relax.Expr, env: dict):
    if isinstance(arg, relax.Var):
        return env[arg]
    if isinstance(arg, tvm.ir.GenericConst):
        return constant_arrays.array(arg)
    if isinstance(arg, relax.Tuple):
        return [_arg(a, env) for a in arg.fields]
    return arg  # shapes, prim values: used from the call itself
