"""`python -m runtime.run ARTIFACT --input x.npz [-o out.npz]`"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from frontends import InputError

from .cli import emulated, guarded, read_inputs, writable_file

EXAMPLES = """examples:
  python -m runtime.run model.x86.artifact --input x.npz -o y.npz
  python -m runtime.run model.x86.artifact --input x.npz          # prints a summary of each output
  python -m runtime.run model.riscv.artifact --input x.npz --emulate   # a board's artifact under qemu-user
  python -m runtime.run model.x86.artifact --input x.npz --check-ranges  # which activations were clipped
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.run", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a compiled artifact on float inputs from an .npz file "
                                            "(keys: the model's input names).")
    p.add_argument("artifact", help="artifact directory written by runtime.compile")
    p.add_argument("--input", required=True, metavar="FILE.npz", help="inputs, one array per input name")
    p.add_argument("-o", "--output", metavar="FILE.npz", help="write the outputs here")
    p.add_argument("--emulate", action="store_true",
                   help="run an armv7 / riscv64 artifact here under qemu-user (its plan executor)")
    p.add_argument("--check-ranges", action="store_true",
                   help="also list the inputs and activations that reached the end of their calibrated range on "
                        "these inputs (clamped there: a plausible output from clipped values), one line each")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    args = p.parse_args(argv)

    def action():
        from .model import load

        output = writable_file(args.output) if args.output else None
        model = load(args.artifact, launcher=emulated(args.artifact) if args.emulate else ())
        inputs = read_inputs(args.input)
        outputs = model.run(inputs)
        ranges = model.check_ranges(inputs) if args.check_ranges else None  # refused before anything is written
        if output:
            try:
                np.savez(output, **outputs)
            except OSError as err:  # a full disk, a folder that went away
                raise InputError(f"{output}: cannot write the outputs ({err.strerror or err})") from None
        for name, value in outputs.items():
            print(summary(name, value))
        if ranges is not None:
            from .saturation import summary as ranges_summary

            print(ranges_summary(ranges))

    return guarded(action, args.verbose)


def summary(name: str, value: np.ndarray) -> str:
    """One output's line: shape, dtype, the largest element's index (in full beyond one dim: a batch of 2 x 1000
    logits printed the flat 1282 for sample 1's class 282), min and max; an empty output (a detector's boxes
    where it found none) says so (its min raised ValueError, exit 1)."""
    head = f"{name}: shape {list(value.shape)} {value.dtype}"
    if not value.size:
        return f"{head}, empty"
    at = np.argmax(value)
    at = int(at) if value.ndim < 2 else [int(i) for i in np.unravel_index(at, value.shape)]
    return f"{head}, argmax {at}, min {value.min():.4g}, max {value.max():.4g}"


if __name__ == "__main__":
    sys.exit(main())
