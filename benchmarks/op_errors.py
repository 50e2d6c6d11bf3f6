"""Per-op error of an integer model against its float model, on the same inputs.

    python -m benchmarks.op_errors model.onnx --calib calib.npz --inputs eval.npz [--count 2]

Calibrates and lowers the model as `runtime.compile` does, but traced
(`QuantizeToInteger(trace=True)`): the integer module also returns the integers standing for
every float binding, and every 8/16-bit requantization of one that a consumer made. Both
modules run on each input; every traced value is dequantized with its known scale and
compared with the float binding of the same name:

- `cos`, `rel`: cosine and relative L2 error (||int - float|| / ||float||) of the integer
  model's value, i.e. the error accumulated up to this op;
- `grid`: relative error of the *float* value rounded and clipped onto the same grid, i.e.
  what this representation alone costs (scale choice, clipping, bits), whatever came before;
- `clip`: the fraction of float elements outside the grid's range.

Rows are in graph order; a jump of `rel` from one op's inputs to its output is that op's own loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

INT_MAX = {"int8": 127, "uint8": 255, "int16": 32767, "int32": 2**31 - 1}


def lower_traced(onnx_path, samples, input_shapes=None, observer: str = "minmax", config=None,
                 ranges: dict | None = None):
    """(float module, integer module with traced outputs, traced list, ranges)."""
    from frontends import load_onnx
    from passes import QuantConfig, QuantizeToInteger, bind_weights, calibrate
    from runtime.compiler import _host_build, has_normalization

    imported = load_onnx(onnx_path, input_shapes)
    float_mod = bind_weights(imported.mod, imported.params)
    config = config or QuantConfig()
    if has_normalization(float_mod):
        config = replace(config, residual_bits=16)
    # calibrated with the compiler's float build, so the sensitivity search picks the same 16-bit tensors
    ranges = ranges or calibrate(float_mod, samples, observer=observer, progress=False, **_host_build())
    lower = QuantizeToInteger(ranges, config, trace=True)
    return float_mod, lower(float_mod), lower.traced, ranges


def _build(mod, project_pipeline: bool):
    import tvm
    from tvm import relax

    if project_pipeline:
        from targets import get_target

        spec = get_target("x86")
        target = spec.target()
        try:
            with target:
                return relax.VirtualMachine(
                    tvm.compile(mod, target=target, relax_pipeline=spec.relax_pipeline(target)), tvm.cpu())
        except Exception as err:  # the traced module has unusual outputs; plain loops still run it
            print(f"[op_errors] project CPU pipeline failed ({type(err).__name__}: {err}); "
                  "using TVM's default pipeline", file=sys.stderr)
    return relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())


def _scale(t, ndim: int) -> np.ndarray:
    scale = np.asarray(t.scale, np.float64)
    if t.axis is not None and scale.ndim:
        shape = [1] * ndim
        shape[t.axis] = scale.size
        return scale.reshape(shape)
    return scale.reshape(())


def _dequantize(q: np.ndarray, t) -> np.ndarray:
    return q.astype(np.float64) * _scale(t, q.ndim) - t.offset


def _grid_error(f: np.ndarray, t) -> tuple[float, float]:
    if t.dtype == "int32":
        return 0.0, 0.0
    scale, shifted = _scale(t, f.ndim), f + t.offset
    lo = 0 if t.dtype == "uint8" else -INT_MAX[t.dtype] - 1
    q = np.clip(np.round(shifted / scale), lo, INT_MAX[t.dtype]) * scale
    outside = np.mean((shifted < lo * scale) | (shifted > INT_MAX[t.dtype] * scale))
    return float(np.linalg.norm(q - shifted) / max(np.linalg.norm(f), 1e-30)), float(outside)


def measure(onnx_path, calib_samples, eval_samples, input_shapes=None, observer: str = "minmax", config=None,
            ranges=None) -> list[dict]:
    """One row per traced value: name, op, dtype, mean cos / rel / grid / clip over `eval_samples`."""
    import tvm

    from passes.float_taps import TappedModel

    float_mod, int_mod, traced, ranges = lower_traced(onnx_path, calib_samples, input_shapes, observer, config,
                                                      ranges)
    float_model = TappedModel(float_mod)  # default TVM pipeline (not the project's schedules)
    ops = {b.var.name: (b.value.op.name.removeprefix("relax.") if hasattr(b.value, "op") else type(b.value).__name__)
           for block in float_mod["main"].body.blocks for b in block.bindings}
    int_vm = _build(int_mod, project_pipeline=True)
    boundary = json.loads(str(int_mod["main"].attrs["intq.boundary"]))
    n_out = len(boundary["outputs"])
    stats = [[] for _ in traced]
    for sample in eval_samples:
        floats = {}
        float_model.run(sample, lambda i, v: floats.__setitem__(float_model.names[i], v.astype(np.float64)))
        args = []
        for meta in boundary["inputs"]:
            x = sample[meta["name"]]
            if meta["scale"] is not None:
                x = np.clip(np.round(x / meta["scale"]), -INT_MAX[meta["dtype"]] - 1, INT_MAX[meta["dtype"]])
            args.append(tvm.runtime.tensor(np.require(x.astype(meta["dtype"]), requirements="C")))
        i_outs = int_vm["main"](*args)
        i_outs = [i_outs] if not isinstance(i_outs, (list, tuple)) and not hasattr(i_outs, "__len__") else i_outs
        for k, t in enumerate(traced):
            f = floats[t.name]
            d = _dequantize(i_outs[n_out + k].numpy(), t).reshape(f.shape)
            cos = float(d.ravel() @ f.ravel() / max(np.linalg.norm(d) * np.linalg.norm(f), 1e-30))
            rel = float(np.linalg.norm(d - f) / max(np.linalg.norm(f), 1e-30))
            stats[k].append((cos, rel, *_grid_error(f, t)))
    rows = []
    for t, s in zip(traced, stats):
        s = np.asarray(s)
        rows.append({"name": t.name + (f"@{t.requant}" if t.requant else ""), "op": ops.get(t.name, "input"),
                     "dtype": t.dtype, "cos": s[:, 0].mean(), "rel": s[:, 1].mean(), "grid": s[:, 2].mean(),
                     "clip": s[:, 3].mean()})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'value':<16} {'op':<14} {'dtype':<6} {'cos':>8} {'rel':>8} {'grid':>8} {'clip':>8}"]
    for r in rows:
        lines.append(f"{r['name']:<16} {r['op']:<14} {r['dtype']:<6} {r['cos']:8.5f} {r['rel']:8.4f} "
                     f"{r['grid']:8.4f} {r['clip']:8.1e}")
    return "\n".join(lines)


def summarize(rows: list[dict]) -> str:
    """A markdown table: per (op, representation), how many values, the mean and worst cost of
    that representation alone (`grid`), and the mean error accumulated up to it (`rel`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        rep = r["name"].split("@", 1)[1] if "@" in r["name"] else r["dtype"]
        groups.setdefault((r["op"], rep), []).append(r)
    lines = ["| op | representation | values | grid error mean | grid error max | accumulated rel error |",
             "|---|---|---|---|---|---|"]
    for (op, rep), rs in sorted(groups.items(), key=lambda kv: -max(r["grid"] for r in kv[1])):
        lines.append(f"| {op} | {rep} | {len(rs)} | {np.mean([r['grid'] for r in rs]):.4f} | "
                     f"{max(r['grid'] for r in rs):.4f} | {np.mean([r['rel'] for r in rs]):.4f} |")
    return "\n".join(lines)


def _samples(path: str, count: int | None) -> list[dict]:
    data = dict(np.load(path))
    n = len(next(iter(data.values())))
    return [{k: v[i] for k, v in data.items()} for i in range(min(n, count or n))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--calib", required=True, help=".npz of calibration inputs (first axis: samples)")
    p.add_argument("--inputs", required=True, help=".npz of evaluation inputs (first axis: samples)")
    p.add_argument("--count", type=int, default=2, help="evaluation inputs to use")
    p.add_argument("--input-shape", action="append", default=[], help="NAME:1x3x224x224")
    p.add_argument("--observer", default="minmax")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    from frontends import parse_input_shape

    shapes = dict(parse_input_shape(s) for s in args.input_shape) if args.input_shape else None
    rows = measure(args.model, _samples(args.calib, None), _samples(args.inputs, args.count), shapes, args.observer)
    print(format_rows(rows))
    print("\n" + summarize(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
