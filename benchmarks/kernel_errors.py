"""Approximation error of each integer transformer kernel against its float function,
computed with the NumPy references (which the compiled kernels equal bit for bit).

    python -m benchmarks.kernel_errors      # prints a Markdown table
"""

from __future__ import annotations

import math

import numpy as np

from passes.reference import dyadic
from passes.reference import transformer as ref


def _erf_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def rows() -> list[tuple[str, str, float, float]]:
    rng = np.random.default_rng(0)
    out = []
    for length, spread in ((128, 3.0), (257, 6.0)):
        xi = np.round(rng.normal(0, spread, (512, length)) / 2.0**-6).astype(np.int64)
        xr = xi * 2.0**-6
        want = np.exp(xr - xr.max(-1, keepdims=True))
        want /= want.sum(-1, keepdims=True)
        got = ref.shiftmax(xi, ref.exp_params(2.0**-6), 15) / 256.0
        err = np.abs(got - want)
        out.append(("Shiftmax (uint8 out, 2^-8)", f"rows of {length}, logits N(0, {spread}) on 2^-6", err.max(),
                     err.mean()))
    for bits, limit in ((8, 8.0), (16, 8.0)):
        qmax = 2 ** (bits - 1) - 1
        scale = limit / qmax
        xi = np.arange(-qmax - 1, qmax + 1, max(1, qmax // 4000))
        x0 = ref.exp_params(1.702 * scale)
        got = ref.shift_gelu(xi, x0, ref.gelu_n(x0)) * scale / 128
        err = np.abs(got - _erf_gelu(xi * scale))
        out.append(("ShiftGELU vs erf GELU", f"int{bits} input over [-{limit:g}, {limit:g}]", err.max(), err.mean()))
    for channels in (384, 768):
        x = rng.normal(2, 3, (256, channels))
        xi = np.round(x / (np.abs(x).max() / 32767)).astype(np.int64)
        m, s = dyadic(1.0 / channels)
        got = ref.layernorm_core(xi, int(m), int(s)) * math.sqrt(channels) / 2.0**30
        want = (xi - xi.mean(-1, keepdims=True)) / xi.std(-1, keepdims=True)
        err = np.abs(got - want)
        out.append(("I-LayerNorm (normalised, before gamma/beta)", f"int16 input, C = {channels}", err.max(),
                    err.mean()))
    return out


def main() -> int:
    print("| kernel | input | max abs error | mean abs error |")
    print("|---|---|---|---|")
    for name, what, worst, mean in rows():
        print(f"| {name} | {what} | {worst:.2e} | {mean:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
