"""`python -m runtime.compile MODEL.onnx --target x86 [-o ARTIFACT] ...`"""

from __future__ import annotations

import argparse
import sys

from frontends import parse_input_shape
from passes import OBSERVERS
from targets import target_names

from .cli import guarded

EXAMPLES = """examples:
  python -m runtime.compile model.onnx --target x86 --calib calib.npz
  python -m runtime.compile model.onnx --target cuda --cuda-arch sm_90 --calib calib.npz
  python -m runtime.compile model.onnx --target arm --calib calib.npz          # aarch64, NEON + sdot
  python -m runtime.compile model.onnx --target raspberry-pi/4b-aarch64 --calib calib.npz
  python -m runtime.compile model.onnx --target '{"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mattr": ["+m", "+a", "+f", "+d", "+c", "+v"]}'
  python -m runtime.compile bert.onnx --input-shape input_ids:1x128 --input-shape attention_mask:1x128 \\
      --calib text.npz -o bert.artifact
  python -m runtime.run model.x86.artifact --input x.npz -o y.npz

exit codes: 0 success, 1 internal error, 2 user error (bad file, flag or unsupported model)
"""


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("-o", "--output", help="artifact directory to write (default MODEL.TARGET.artifact)")
    p.add_argument("--calib", metavar="FILE.npz",
                   help="calibration inputs: keys are the model's input names, the first axis indexes "
                        "samples. Without it, synthetic inputs are used and accuracy will suffer.")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0xD1x...",
                   help="fix the dimensions of an input (needed for dynamic dims; repeatable)")
    p.add_argument("--observer", default="minmax", choices=sorted(OBSERVERS),
                   help="calibration range observer (default minmax)")
    p.add_argument("--allow-float", action="store_true",
                   help="keep ops without an integer lowering in float; the artifact is then marked "
                        "integer_only: false instead of being refused")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def action():
        from .compiler import compile_model

        shapes = dict(parse_input_shape(s) for s in args.input_shape)
        print(compile_model(args.model, target=args.target, output=args.output, calib=args.calib,
                            input_shapes=shapes, observer=args.observer, allow_float=args.allow_float,
                            progress=not args.quiet, cuda_arch=args.cuda_arch))

    return guarded(action, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
