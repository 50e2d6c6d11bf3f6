"""Where bias correction stays: measured on the float model with the weights' rounding error.

    uncorrected, report = uncorrected_layers(probe, weight_errors, mod)

Bias correction (Nagel et al. 2019, `QuantConfig.bias_correction`) moves each output channel's
bias by the mean error that its rounded weights make over the calibration data's positions. Where
the positions that matter downstream are not typical of that mean, it does harm: phylodeep's tree
CNN reads zero-padded encodings, whose tail positions give float exactly the bias, and its first
conv's large-weight channel lands deep in the Elu's flat part everywhere else; the mean error of
the other positions, subtracted at the tail, is what the model then reads (class agreement with
float 30/32 uncorrected, 8/32 corrected). On EfficientNet-Lite0 the correction is worth logit
cosine 0.9946 -> 0.9990.

So the probe (`SensitivityProbe.measure`, two calibration samples) runs the float model with each
recorded layer's output plus its weights' error on that run's input (conv2d(x, W_q - W), or
x @ (W_q - W)), corrected or not, and compares the outputs with float: with the correction
everywhere, and nowhere. Where it helps (the usual case) that is all: two measured runs per sample.
Otherwise the layers to leave uncorrected are searched by halving (graph order): a part is kept
uncorrected when that brings the outputs closer to float than the best so far, down to single
layers, within MAX_SETS measured sets; the result is never worse than leaving every layer
uncorrected.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .float_convs import TORCH, conv_closure
from .lowering.context import WeightError
from .sensitivity import MAX_MACS, SensitivityProbe, release

MAX_SETS = 16  # measured sets of the search, at most (each one model run per sample)
BETTER = 0.9  # a set counts as closer to float below this fraction of the best error so far (what two
# samples tell apart: on a name-origin LSTM the correction everywhere or nowhere measured 0.0066 and 0.0064)


def _calls(mod: tvm.IRModule) -> dict[str, relax.Call]:
    return {b.var.name: b.value for block in mod["main"].body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call)}


def _error_term(record: WeightError, call: relax.Call):
    """x -> what the layer's rounded weights add to its float output on input x, or None where this
    probe cannot compute it."""
    if record.op == "conv2d" and TORCH and call.op.name == "relax.nn.conv2d" and call.attrs.data_layout == "NCHW" \
            and call.attrs.kernel_layout == "OIHW" and call.attrs.out_layout == "NCHW":
        return conv_closure(call, record.error)
    if record.op == "matmul" and call.op.name == "relax.matmul":
        error = record.error.astype(np.float32)
        scale = None if record.per_input is None else (1.0 / record.per_input).astype(np.float32)

        def matmul(x: np.ndarray) -> np.ndarray:
            x = x + np.float32(record.offset) if record.offset else x
            return (x * scale if scale is not None else x) @ error

        return matmul
    return None


def _replacement(record: WeightError, term, corrected: bool):
    shift = record.shift.astype(np.float32)

    def replace(y: np.ndarray, kept: dict) -> np.ndarray:
        d = term(release(kept, record.input))
        if corrected:
            d = d - (shift[:, None, None] if record.op == "conv2d" else shift)
        return (y + d.reshape(y.shape)).astype(y.dtype)

    return replace


def uncorrected_layers(probe: SensitivityProbe, records: dict[str, WeightError],
                       mod: tvm.IRModule) -> tuple[list[str], dict]:
    """The layers (bindings) whose bias to leave uncorrected, and a report {"layers", "corrected",
    "uncorrected", "chosen"} of the measured output errors (relative L2): with the correction
    everywhere, nowhere, and as chosen."""
    calls = _calls(mod)
    terms = {}
    for name, record in records.items():
        call = calls.get(name)
        term = _error_term(record, call) if call is not None else None
        if term is not None and record.input in probe.model.names and name in probe.model.names:
            terms[name] = term
    layers = [n for n in records if n in terms]  # graph order: the lowering's
    report = {"layers": len(layers), "corrected": None, "uncorrected": None, "chosen": None}
    # the run's work: a float run, plus about as much again for the error terms, per sample and set
    if not layers or 4 * probe.run_macs * len(probe.samples) * 2 > MAX_MACS:
        return [], report

    def error(off: frozenset) -> float:
        readers: dict[str, int] = {}
        for n in layers:
            readers[records[n].input] = readers.get(records[n].input, 0) + 1
        return probe.measure(("bias", off), {n: _replacement(records[n], terms[n], n not in off) for n in layers},
                             readers) ** 0.5

    on, off_all = error(frozenset()), error(frozenset(layers))
    report.update(corrected=on, uncorrected=off_all, chosen=on)
    if off_all >= on * BETTER:
        return [], report
    best, off, sets = on, frozenset(), 2
    queue = [layers[:len(layers) // 2], layers[len(layers) // 2:]] if len(layers) > 1 else []
    while queue and sets < MAX_SETS:
        part = queue.pop(0)
        trial = off | frozenset(part)
        err = error(trial)
        sets += 1
        if err >= best * BETTER:
            continue
        if len(part) == 1:
            best, off = err, trial
        else:
            queue += [part[:len(part) // 2], part[len(part) // 2:]]
    if off_all < best:
        best, off = off_all, frozenset(layers)
    report["chosen"] = best
    return [n for n in layers if n in off], report
