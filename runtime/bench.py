"""`python -m runtime.bench ARTIFACT [--threads K] [--repeat N] [--rpc HOST:PORT [--key KEY]]`"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from frontends.errors import CompileError

from .cli import emulated, guarded, read_inputs

EXAMPLES = """examples:
  python -m runtime.bench model.x86.artifact --threads 1 --repeat 100
  python -m runtime.bench model.arm.artifact --rpc 192.168.1.20:9090          # board's RPC server
  python -m runtime.bench model.arm.artifact --rpc tracker:9190 --key rasp4b   # through a tracker
  python -m runtime.bench model.x86.artifact --json
  python -m runtime.bench model.x86.artifact --threads 1 --kernels 15          # where the time goes
  python -m runtime.bench bert.x86.artifact --shape seq=32 --shape n=8           # free dims by name
"""


def benchmark(model, threads: int | None = None, repeat: int = 50, warmup: int = 3, inputs=None,
              batch: int = 1, sizes: dict[str, int] | None = None) -> dict:
    """p50/p90/p99/mean latency (ms) and throughput (samples/s) of `model` on random (or given)
    inputs; `batch` samples per run for a symbolic-batch artifact, `sizes` other free dims by
    name (a sequence length; default its upper bound). `threads`: the CPU threads used in all
    (a batch's workers too: `model.batch_workers` is set to it)."""
    from .model import PlanModel, config_threads

    if isinstance(model, PlanModel):  # armv7 / riscv64: the plan executor, one thread
        if threads not in (None, 1):
            raise CompileError(f"--threads {threads}: this artifact's plan executor runs on one thread")
        threads = 1
    elif threads and model.remote:
        model.remote.get_function("runtime.config_threadpool")(0, threads)
    elif threads:
        config_threads(threads)
        # a batch's samples run side by side on batch workers, one per CPU by default: --threads 1 --batch 4
        # ran on 2 threads; `threads` workers take one TVM thread each (as benchmarks/shapes.py times them)
        model.batch_workers = threads
    if inputs is None:
        inputs = random_inputs(model, batch, sizes)
    whole = bool(model.manifest.get("tail"))  # onnxruntime runs part of it: time what a call costs
    ms = (model.time_run(inputs, repeat=repeat, warmup=warmup) if whole else
          model.time(model.quantize_inputs(inputs), repeat=repeat, warmup=warmup))
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    padded = _padded_to(model, inputs)
    return {"artifact": str(model.path), "target": model.manifest["target"]["name"],
            "where": "rpc" if model.remote else "local", "threads": threads or "default", "repeat": repeat,
            "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "mean_ms": round(float(ms.mean()), 4), "batch": batch,
            "timed": "whole run (onnxruntime's part included)" if whole else "compiled model",
            "shapes": {k: list(v.shape) for k, v in inputs.items()}, **padded,
            "throughput_per_s": round(1e3 * batch / float(ms.mean()), 2)}


def _padded_to(model, inputs) -> dict:
    """{"padded_to": {dim: bucket}} where a length bucket larger than the inputs' ran (`--shape seq=20` timed
    the 32-token bucket while the report named only [1, 20]), else {}."""
    buckets = getattr(model, "buckets", None)
    if buckets is None or model.manifest.get("tail"):
        return {}
    qinputs = model.quantize_inputs(inputs)
    length = buckets.length(qinputs)
    size = buckets.choose(length)
    return {"padded_to": {buckets.dim: size}} if size is not None and size != length else {}


def kernel_table(model, threads: int | None, inputs, batch: int, sizes, top: int) -> list[dict]:
    """The `top` slowest kernels of one run (ms per run, calls, share of all calls' time)."""
    if inputs is None:
        inputs = random_inputs(model, batch, sizes)
    times = model.kernel_times([] if model.onnxruntime_only else model.quantize_inputs(inputs))  # (refused if so)
    total = sum(ms for ms, _ in times.values()) or 1.0
    return [{"kernel": name, "ms": round(ms, 4), "calls": calls, "share": round(ms / total, 4)}
            for name, (ms, calls) in list(times.items())[:top]]


def random_inputs(model, batch: int = 1, sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for timing: floats normal within each input's (and feature's) calibrated range (a third of it
    as the standard deviation, clipped at its end: N(0, 1) past a small range drew the warning that
    asks users to recalibrate, about the bench's own inputs); integers (token ids, masks, float ids
    the graph casts) as ones."""
    from .boundary import grid_edge
    from .model import example_shape

    rng, inputs = np.random.default_rng(0), {}
    for k, spec in enumerate(model.inputs):
        shape = example_shape(spec, batch, sizes)
        if np.dtype(spec["dtype"]).kind == "f" and spec["quant"]["scale"] is not None:
            edge = grid_edge(model._scale(k, len(shape), "inputs"), spec["quant"]["dtype"])
            if spec.get("feature_amax") is not None:  # and each feature within its calibrated values
                edge = np.minimum(edge, np.asarray(spec["feature_amax"]))
            inputs[spec["name"]] = np.clip(rng.standard_normal(shape) * edge / 3, -edge, edge).astype(spec["dtype"])
        else:
            inputs[spec["name"]] = np.ones(shape, spec["dtype"])
    tail_only = [s for s in (model.manifest.get("tail") or {}).get("inputs", []) if s["name"] not in inputs]
    for spec in tail_only:  # read by onnxruntime's part alone: not calibrated, N(0, 1)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
        kind = np.dtype(spec["dtype"]).kind
        inputs[spec["name"]] = (rng.standard_normal(shape) if kind == "f" else np.ones(shape)).astype(spec["dtype"])
    return inputs


def parse_sizes(items: list[str]) -> dict[str, int]:
    """`--shape seq=32 --shape n=8` -> {"seq": 32, "n": 8}."""
    sizes = {}
    for item in items:
        name, _, value = item.partition("=")
        if name and value.isdigit() and int(value) < 1:  # an empty batch or sequence: nothing to time
            raise CompileError(f"--shape {item!r}: a size is at least 1")
        if not name or not value.isdigit():
            raise CompileError(f"--shape {item!r}: expected DIM=SIZE, e.g. seq=32 or n=8")
        sizes[name] = int(value)
    return sizes


def _check_sizes(args, inputs, sizes: dict[str, int], lead: str) -> None:
    """CompileError where --batch / --shape contradict each other or --input's arrays, which give the shapes
    timed: `--input x2.npz --shape n=8` timed 2 samples and reported the throughput of 8 (4x), and --shape
    seq=32 beside --input ran the file's 128 tokens."""
    if inputs is not None and (sizes or args.batch != 1):
        given = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
        raise CompileError(f"--batch / --shape: the arrays of --input {args.input} give the shapes timed ({given}); "
                           "drop them, or drop --input to time random inputs of those sizes")
    if lead in sizes and args.batch != 1 and sizes[lead] != args.batch:
        raise CompileError(f"--batch {args.batch} and --shape {lead}={sizes[lead]} disagree (both set the batch)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.bench", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Measure an artifact's latency (timed on the device: locally or on a "
                                            "board through TVM RPC) after warm-up runs.")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, help="CPU threads in all, a batch's side-by-side samples included "
                                               "(default: one per CPU)")
    p.add_argument("--repeat", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--input", metavar="FILE.npz", help="inputs to time with (default: random)")
    p.add_argument("--batch", type=int, default=1,
                   help="samples per run of random inputs, for an artifact compiled with a free batch (default 1)")
    p.add_argument("--shape", action="append", default=[], metavar="DIM=SIZE",
                   help="a free dim of the artifact by name (its manifest shape), e.g. seq=32 or n=8 (repeatable)")
    p.add_argument("--emulate", action="store_true",
                   help="run an armv7 / riscv64 artifact here under qemu-user (its plan executor; emulated speed)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="run on the board behind this RPC server or tracker")
    p.add_argument("--key", help="device key, when --rpc names a tracker")
    p.add_argument("--kernels", type=int, default=0, metavar="N",
                   help="also time each kernel (the virtual machine's instrument) and list the N slowest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    args = p.parse_args(argv)

    def action():
        if args.repeat < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
            raise CompileError("--repeat must be >= 1, --warmup >= 0 and --threads >= 1")
        if args.batch < 1 or args.kernels < 0:
            raise CompileError(f"--batch must be >= 1 and --kernels >= 0 (got {args.batch} and {args.kernels})")
        if args.key and not args.rpc:
            raise CompileError("--key needs --rpc naming the tracker")
        from .model import load
        from .remote import connect

        session = connect(args.rpc, args.key) if args.rpc else None
        model = load(args.artifact, remote=session, launcher=emulated(args.artifact) if args.emulate else ())
        inputs = read_inputs(args.input) if args.input else None
        free = any(isinstance(d, str) for i in model.inputs for d in i["shape"])  # a symbolic batch
        if args.batch != 1 and not free:  # it ran batch 1 and reported the throughput of `batch` samples a run
            raise CompileError(f"--batch {args.batch}: {args.artifact} was compiled for fixed shapes "
                               f"({', '.join(str(i['name']) + ' ' + str(i['shape']) for i in model.inputs)}); compile it with a "
                               "free batch (--input-shape NAME:1..32x...) to time other batches")
        batch = next(iter(inputs.values())).shape[0] if inputs and free else args.batch
        sizes = parse_sizes(args.shape)
        names = {d for i in model.inputs for d in i["shape"] if isinstance(d, str)}
        if set(sizes) - names:
            raise CompileError(f"--shape {', '.join(sorted(set(sizes) - names))}: the artifact's free dims are "
                               f"{sorted(names) or 'none'}")
        lead = next((i["shape"][0] for i in model.inputs  # 0-d inputs (a sample rate) have no batch
                     if i["shape"] and isinstance(i["shape"][0], str)), "")
        _check_sizes(args, inputs, sizes, lead)
        batch = sizes.get(lead, batch)
        result = benchmark(model, args.threads, args.repeat, args.warmup, inputs, batch, sizes)
        if args.kernels:
            result["kernels"] = kernel_table(model, args.threads, inputs, batch, sizes, args.kernels)
        if args.json:
            print(json.dumps(result))
        else:
            kernels = result.pop("kernels", None)
            width = max(len(k) for k in result)
            print("\n".join(f"{k:<{width}}  {v}" for k, v in result.items()))
            if kernels:
                print("\n| kernel | ms per run | calls per run | share |\n|---|---|---|---|")
                print("\n".join(f"| {r['kernel']} | {r['ms']:.3f} | {r['calls']:g} | {r['share']:.1%} |" for r in kernels))

    return guarded(action, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
