"""The op coverage table of the README, printed from the registries so that it cannot drift.

    python -m passes.coverage            # Markdown, between the README's coverage markers

Rows: every Relax op with an integer lowering (`passes.lowering.LOWERINGS`), the module and
function that lower it, and the first line of that function's docstring (else its module's);
then the ONNX ops the frontend lets through to the integer path, each with whether onnxruntime's
QDQ quantizer and TFLite's int8 specification cover it (`passes.other_quantizers`, sourced there).
"""

from __future__ import annotations

import inspect
import sys

START, END = "<!-- coverage:start (python -m passes.coverage) -->", "<!-- coverage:end -->"


def _summary(fn) -> str:
    doc = inspect.getdoc(fn) or inspect.getdoc(sys.modules[fn.__module__]) or ""
    return doc.strip().splitlines()[0].replace("|", "\\|") if doc.strip() else ""


def coverage_markdown() -> str:
    """The README block: a table of Relax ops and their lowerings, then the ONNX ops next to ORT's and TFLite's."""
    from .lowering import LOWERINGS

    rows = ["| Relax op | lowered by | how |", "|---|---|---|"]
    for op, fn in sorted(LOWERINGS.items()):
        where = f"`{fn.__module__.removeprefix('passes.')}.{fn.__name__}`"
        rows.append(f"| `{op.removeprefix('relax.')}` | {where} | {_summary(fn)} |")
    return "\n".join([START, "", *rows, "", *_onnx_table(), "", END])


def _onnx_table() -> list[str]:
    """ONNX ops on intq's integer path, next to onnxruntime's QDQ quantizer and TFLite's int8 spec."""
    from frontends.onnx_import import INTEGER_PATH_OPS

    from .other_quantizers import ORT_QDQ, ORT_VERSION, TFLITE_INT8

    ort = [op for op in sorted(INTEGER_PATH_OPS) if op in ORT_QDQ]
    tfl = [op for op in sorted(INTEGER_PATH_OPS) if op in TFLITE_INT8]
    rows = [f"ONNX ops accepted on intq's integer path ({len(INTEGER_PATH_OPS)}); of these, onnxruntime "
            f"{ORT_VERSION}'s `quantize_static` (QDQ) quantizes {len(ort)} and TFLite's 8-bit quantization spec "
            f"covers {len(tfl)} (sources: `passes/other_quantizers.py`). Ops onnxruntime quantizes that intq "
            f"does not accept: {', '.join(sorted(ORT_QDQ - INTEGER_PATH_OPS)) or 'none'}.", "",
            "| ONNX op | onnxruntime QDQ | TFLite int8 (spec op) |", "|---|---|---|"]
    rows += [f"| {op} | {'yes' if op in ORT_QDQ else '-'} | {TFLITE_INT8.get(op, '-')} |"
             for op in sorted(INTEGER_PATH_OPS)]
    return rows


if __name__ == "__main__":
    print(coverage_markdown())
