"""Which tensors of one run reach the end of their calibrated range (`Model.check_ranges`).

Every activation is an integer on a grid its calibration fixed: a value past the range's end is clamped to
it, silently, and the output stays plausible (EfficientNet-Lite0 on photos scaled 1.4x: cosine 0.954 to
float, no warning). This runs the artifact's own library once with the virtual machine's instrument, which
sees each kernel's output after the call, and counts, in the output of every kernel that ends in a
requantization or a clip (the only places a value is clamped), the elements at the end of their dtype's
range: int8 -128 / 127, int16 -32768 / 32767, uint8 255 (a uint8 0 is a ReLU's floor, not a clamp). The
inputs' own clamping is counted too (`run` warns about it only past 1.5x the range).

The calibration data's own extremes map onto the range's end, so a few such elements are expected on
inputs like them; a share of a percent or more, or a tensor that had none on calibration-like inputs,
means the input leaves what the model was calibrated on. The kernels are named as compiled (fused:
`fused_vnni_conv_..._windowed_requant...`), in the order they run.
"""

from __future__ import annotations

import re

import numpy as np

from frontends.errors import InputError

CLAMPING = re.compile(r"requant|clip")  # kernels whose last step rounds onto a narrower grid and clamps there


def _at_end(values: np.ndarray) -> int:
    """How many of `values` (8- or 16-bit integers) sit at the end of their dtype's range."""
    info = np.iinfo(values.dtype)
    top = np.count_nonzero(values == info.max)
    return int(top + (np.count_nonzero(values == info.min) if info.min < 0 else 0))


def _row(tensor: str, call: int | None, values: np.ndarray) -> dict | None:
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2:
        return None  # int32 accumulators and outputs do not clamp
    count = _at_end(values)
    return None if not count else {"tensor": tensor, "call": call, "dtype": values.dtype.name,
                                   "shape": list(values.shape), "at_end": count, "size": int(values.size),
                                   "share": count / values.size}


def saturated(model, qinputs: list[np.ndarray]) -> list[dict]:
    """Rows, in the order the tensors are computed, of every input and clamping kernel output of one run on the
    integer inputs `qinputs` with elements at the end of its range: `tensor` (`input 'x'` or the kernel's name),
    `call` (the kernel call's index in the run), `dtype`, `shape`, `at_end` (how many), `size`, `share`."""
    if model.remote is not None:
        raise InputError("check_ranges runs the artifact on this machine; this one runs on a board (remote)")
    rows = [_row(f"input {spec['name']!r}", None, q) for spec, q in zip(model.inputs, qinputs)]
    size, _, qinputs = model._bucket(qinputs)
    vm = model._new_vm(model._libs[model._library(size, qinputs)], model._dev)
    calls = [0]

    def instrument(func, name, before, ret, *args):
        if before:
            return 0
        calls[0] += 1
        if args and CLAMPING.search(str(name)) and hasattr(args[-1], "numpy"):
            rows.append(_row(str(name), calls[0] - 1, args[-1].numpy()))
        return 0

    vm.set_instrument(instrument)
    vm["main"](*[model._device_tensor(q) for q in qinputs])
    return [row for row in rows if row is not None]


def summary(rows: list[dict]) -> str:
    """The rows as lines for a person (`runtime.run --check-ranges`)."""
    if not rows:
        return "ranges: no tensor reached the end of its calibrated range"
    lines = []
    for r in rows:
        where = r["tensor"] if r["call"] is None else f"call {r['call']} {r['tensor']}"
        lines.append(f"ranges: {where} ({r['dtype']}{r['shape']}): {r['at_end']} of {r['size']} values "
                     f"({r['share']:.2%}) at the end of the calibrated range")
    return "\n".join(lines)
