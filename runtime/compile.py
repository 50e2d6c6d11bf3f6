"""`python -m runtime.compile MODEL.onnx --target x86 [-o ARTIFACT] ...`"""

from __future__ import annotations

import argparse
import shutil
import time
import sys

from frontends import CompileError, InputError

from .cli import guarded

EXAMPLES = """examples:
  python -m runtime.compile model.onnx --target x86 --calib calib.npz
  python -m runtime.compile model.onnx --target cuda --cuda-arch sm_90 --calib calib.npz
  python -m runtime.compile model.onnx --target x86 --cpu x86-64-v3 --calib calib.npz   # any AVX2 machine
  python -m runtime.compile model.onnx --target arm --calib calib.npz          # aarch64, NEON + sdot
  python -m runtime.compile model.onnx --target raspberry-pi/4b-aarch64 --calib calib.npz
  python -m runtime.compile model.onnx --target '{"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mattr": ["+m", "+a", "+f", "+d", "+c", "+v"]}'
  python -m runtime.compile bert.onnx --input-shape input_ids:1x128 --input-shape attention_mask:1x128 \\
      --calib text.npz -o bert.artifact
  python -m runtime.compile ocr_cls.onnx --input-shape x:1x3x48x192 --allow-float   # -1 dims bound; float where needed
  python -m runtime.compile model.onnx --calib calib.npz --bits 4                # 4-bit weights, packed
  python -m runtime.compile model.onnx --calib calib.npz --bits mixed --max-size 3.5   # ILP: 4/8 bits per layer
  python -m runtime.compile model.onnx --calib calib.npz --bits mixed --max-latency 20 --max-bops 150
  python -m runtime.compile model.onnx --input-shape input:1..32x3x224x224 --calib calib.npz  # batches 1..32
  python -m runtime.compile bert.onnx --input-shape input_ids:Nx1..256 --input-shape attention_mask:Nx1..256 \
      --calib text.npz                           # any batch, lengths 1..256 (buckets 16, 32, ..., 256)
  python -m runtime.run model.x86.artifact --input x.npz -o y.npz

exit codes: 0 success, 1 internal error, 2 user error (bad file, flag or unsupported model)
"""


def build_parser() -> argparse.ArgumentParser:
    from passes import OBSERVERS  # imports TVM (seconds): `main` calls this where Ctrl-C gives one line
    from targets import target_names

    p = argparse.ArgumentParser(
        prog="python -m runtime.compile", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Compile a float ONNX model into an integer-only artifact: calibrate, lower every op to "
                    "integer arithmetic with dyadic requantization, verify that no float op remains, and "
                    "compile with TVM.")
    p.add_argument("model", help="float ONNX model file")
    p.add_argument("--target", default="x86",
                   help=f"target: {', '.join(target_names())} (default x86: this CPU's features), any TVM target "
                        "tag (raspberry-pi/4b-aarch64, nvidia/jetson-orin-nano, riscv/licheepi3a, ...) or a JSON "
                        "target dict")
    p.add_argument("--cuda-arch", metavar="sm_XX", help="GPU architecture for --target cuda (default sm_80)")
    p.add_argument("--cpu", metavar="LEVEL[+FEATURE...]",
                   help="--target x86: build for a fleet instead of this CPU, e.g. x86-64-v3 (AVX2), x86-64-v4 "
                        "(AVX-512), x86-64-v4+avx512vnni; the runtime refuses it on a CPU that lacks a feature")
    p.add_argument("-o", "--output", help="artifact directory to write (default MODEL.TARGET.artifact)")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration inputs: keys are the model's input names, the first axis indexes "
                        "samples. Without it, synthetic inputs are used and accuracy will suffer.")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0xD1x...",
                   help="fix the dimensions of an input (needed for dynamic dims; repeatable); a leading dim "
                        "given as a name (N) or a range (1..32) stays free: one artifact for every batch size")
    p.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="calibration range observer (default minmax)")
    p.add_argument("--allow-float", action="store_true",
                   help="run in float every node that has no integer lowering or whose lowering refuses it "
                        "(listed with the reason on stderr and in the manifest's float_nodes); the artifact is "
                        "then marked integer_only: false instead of being refused. Control flow (If, Loop, Scan) "
                        "is refused all the same")
    p.add_argument("--activation-bits", type=int, default=8, choices=[8, 16],
                   help="16: every activation carried at 16 bits (int16 x int8 products, about half the speed "
                        "of 8), for models whose outputs 8-bit activations cannot resolve (heatmap detectors, "
                        "pose and landmark nets); default 8, with the tensors measured sensitive at 16")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="leave each conv's and matmul's bias as the model has it: by default it absorbs the mean "
                        "error that rounding the weights makes on the calibration data, which is wrong where "
                        "the inputs that matter are far from that mean (a zero-padded tail read through a "
                        "saturating activation); try it where the check warns")
    p.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune the kernels without a default schedule with MetaSchedule, N measured trials in "
                        "all (host CPU only; records are kept in ~/.cache/intq/tuning and reused)")
    bits = p.add_argument_group("weight bits (mixed precision: layers.md and pareto.png go into the artifact)")
    bits.add_argument("--bits", default="8", choices=["8", "4", "mixed"],
                      help="weights of conv/matmul layers: 8, 4 (stored packed two per byte) or mixed (4 or 8 "
                           "per layer, chosen by an ILP on Hessian sensitivities under the limits below)")
    bits.add_argument("--max-size", type=float, metavar="MB",
                      help="--bits mixed: limit on the conv/matmul weight bytes (MB = 1e6 bytes)")
    bits.add_argument("--max-bops", type=float, metavar="G", help="--bits mixed: limit on the layers' GBOPs")
    bits.add_argument("--max-latency", type=float, metavar="MS",
                      help="--bits mixed: limit on the summed conv/matmul kernel latency, from a per-layer table "
                           "measured on the target (cached in ~/.cache/intq/latency)")
    bits.add_argument("--pin-first", action=argparse.BooleanOptionalAction, default=True,
                      help="keep the first layer at 8 bits (default: yes)")
    bits.add_argument("--pin-last", action=argparse.BooleanOptionalAction, default=True,
                      help="keep the last layer at 8 bits (default: yes)")
    bits.add_argument("--sensitivity-samples", type=int, default=16, metavar="N",
                      help="--bits mixed: calibration samples the Hessian traces are estimated on (default 16; "
                           "cached by model, samples and settings in ~/.cache/intq/sensitivity)")
    bits.add_argument("--latency-rpc", metavar="HOST:PORT",
                      help="measure the latency table on the board behind this RPC server (or tracker)")
    bits.add_argument("--latency-key", help="device key, when --latency-rpc names a tracker")
    bits.add_argument("--latency-threads", type=int, metavar="K", help="runtime threads for the latency table")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the artifact's path (stdout), warnings and errors (stderr): no progress "
                        "bars, stages, times or the check's agreement lines (its warning below 0.99 stays)")
    p.add_argument("--buckets", metavar="L1,L2,...",
                   help="with a free length (--input-shape ids:1x1..512): the lengths compiled, the largest being "
                        "the range's upper bound (default: powers of two from 16)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the last two --calib samples (up to 16 where they take under a second) through the "
                        "artifact and float onnxruntime and print each output's cosine (warning below 0.99), "
                        "where the artifact runs on this machine (default: yes)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    return p


def _onnxruntime_refuses(model: str, sample) -> str | None:
    """onnxruntime's last error line running the float model on `sample`; None where it runs, or where it
    cannot be asked (the model does not load, the sample lacks an input)."""
    try:
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        types = {"tensor(float16)": np.float16, "tensor(double)": np.float64}
        feed = {i.name: np.asarray(sample[i.name]).astype(types.get(i.type, np.asarray(sample[i.name]).dtype))
                for i in session.get_inputs() if i.name in sample}
    except Exception:  # noqa: BLE001
        return None
    if len(feed) < len(session.get_inputs()):
        return None
    try:
        session.run(None, feed)
    except Exception as err:  # noqa: BLE001  (its message is the answer)
        text = str(err).strip()
        return text.splitlines()[-1][:400] if text else type(err).__name__
    return None


def _check(args, path) -> None:
    """The artifact against float onnxruntime on the last calibration samples (runtime/check.py)."""
    from . import check
    from .compiler import log, warn
    from .model import load

    def last_line(err):
        return f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"

    try:
        artifact = load(path)
        samples = check.calibration_samples(args.calib, artifact.manifest["inputs"]
                                            + (artifact.manifest.get("tail") or {}).get("inputs", []),
                                            count=check.MAX_SAMPLES)
    except Exception as err:  # noqa: BLE001  (a check that cannot run says why; the artifact stands)
        log(f"check skipped: {last_line(err)}")
        return
    running = None  # the sample being run, for the message if it fails
    try:
        start = time.perf_counter()
        outputs = []
        for running in samples[-check.SAMPLES:]:
            outputs.append(artifact.run(running))
        each = (time.perf_counter() - start) / max(len(outputs), 1)
        # earlier samples too, as many as run within the budget (an HMM step went wrong on its first sample only)
        extra = samples[:-check.SAMPLES]
        earlier = extra[len(extra) - min(len(extra), int(check.BUDGET_S / each) if each > 0 else len(extra)):]
        samples = earlier + samples[-check.SAMPLES:]
        first = []
        for running in earlier:
            first.append(artifact.run(running))
        outputs = first + outputs
    except InputError as err:  # the sample itself (NaN, a shape outside the range): nothing to check with
        log(f"check skipped: {err}")
        return
    except Exception as err:  # the artifact cannot run: never leave it behind as if it worked
        shutil.rmtree(path, ignore_errors=True)
        refused = _onnxruntime_refuses(args.model, running)
        if refused:  # the sample does not fit the model (a KV cache whose lengths disagree with its mask)
            raise InputError(f"{args.calib}: onnxruntime cannot run {args.model} on a calibration sample either "
                             f"({refused}); the calibration data does not fit the model. The artifact was "
                             "removed") from None
        raise RuntimeError(f"the compiled artifact failed on a calibration sample ({last_line(err)}); "
                           f"it was removed. This is a bug in intq: please report it with the model") from err
    try:
        reports = [check.report(check.float_agreement(model, artifact, samples, outputs), label, warn=i == 0,
                                samples=len(samples),
                                bits=(artifact.manifest.get("quantization") or {}).get("bits", "8"))
                   for i, (label, model) in enumerate(check.references(args.model))]
    except Exception as err:  # noqa: BLE001  (onnxruntime could not run the reference: the artifact stands)
        log(f"check skipped: {last_line(err)}")
        return
    for line in "\n".join(r for r in reports if r).splitlines():
        (warn if line.startswith("WARNING") else log)(line)


def main(argv: list[str] | None = None) -> int:
    args = None

    def action():
        nonlocal args
        args = build_parser().parse_args(argv)  # Ctrl-C in the 3 s of imports: `guarded`'s one line, not a traceback
        from frontends import parse_input_shape
        from passes import QuantConfig

        from .compiler import compile_model, only_warnings
        from .mixed import Precision

        if args.tune_trials < 0:
            raise CompileError(f"--tune-trials must be >= 0, got {args.tune_trials}")
        precision = Precision(args.bits, args.max_size, args.max_bops, args.max_latency, args.pin_first,
                              args.pin_last, args.sensitivity_samples, args.latency_rpc, args.latency_key,
                              args.latency_threads)
        shapes = dict(parse_input_shape(s) for s in args.input_shape)
        try:
            buckets = [int(b) for b in args.buckets.split(",")] if args.buckets else None
        except ValueError:
            raise CompileError(f"--buckets {args.buckets!r}: expected lengths like 16,32,64") from None
        with only_warnings(args.quiet):
            path = compile_model(args.model, target=args.target, output=args.output, calib=args.calib,
                                 input_shapes=shapes, observer=args.observer, allow_float=args.allow_float,
                                 progress=not args.quiet, cuda_arch=args.cuda_arch, cpu=args.cpu,
                                 tune_trials=args.tune_trials, precision=precision, buckets=buckets,
                                 config=QuantConfig(activation_bits=args.activation_bits,
                                                    bias_correction=not args.no_bias_correction)
                                 if args.activation_bits != 8 or args.no_bias_correction else None)
            if args.check and args.calib and args.target in ("x86", "llvm"):  # --cpu: where this CPU runs it
                _check(args, path)
        print(path)

    return guarded(action, lambda: args is not None and args.verbose)


if __name__ == "__main__":
    sys.exit(main())
