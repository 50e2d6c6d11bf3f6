"""Range observers with a two-method contract: `update(x)` per batch, `range()` at the end.

MinMax keeps the running extremes. Percentile and MSE keep a histogram of |x| whose range
doubles (merging bin pairs exactly) as larger values arrive, then pick a symmetric clip.
"""

from __future__ import annotations

import numpy as np

from frontends.errors import CompileError


class Finite:
    """A tensor's finite values with their min and max, found once for all the observers of it (each
    pass over a 1024x1024 segmenter's tensors costs; calibration ran ten of them per tensor)."""

    def __init__(self, x: np.ndarray):
        self.nonfinite = False
        if x.size and x.dtype.kind == "f":
            lo, hi = x.min(), x.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                self.nonfinite, x = True, x[np.isfinite(x)]
                lo, hi = (x.min(), x.max()) if x.size else (np.inf, -np.inf)
        else:
            lo, hi = (x.min(), x.max()) if x.size else (np.inf, -np.inf)
        self.x, self.lo, self.hi = x, float(lo), float(hi)


class MinMaxObserver:
    """Running min and max of the finite values."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def update(self, x: np.ndarray | Finite) -> None:
        f = x if isinstance(x, Finite) else Finite(x)
        if f.x.size:
            self.lo, self.hi = min(self.lo, f.lo), max(self.hi, f.hi)

    def range(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.lo > self.hi else (self.lo, self.hi)


class _HistogramObserver(MinMaxObserver):
    BINS = 2048

    def __init__(self):
        super().__init__()
        self.hist = np.zeros(self.BINS, np.int64)
        self.top = 0.0  # histogram covers [0, top]

    def update(self, x: np.ndarray | Finite) -> None:
        f = x if isinstance(x, Finite) else Finite(x)
        super().update(f)
        a = np.abs(f.x.astype(np.float64).ravel())
        amax = float(a.max()) if a.size else 0.0
        if amax == 0.0:
            self.hist[0] += a.size
            return
        if self.top == 0.0:
            self.top = amax
        while amax > self.top:  # double the range: merge neighbouring bins
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(1), np.zeros(self.BINS // 2, np.int64)])
            self.top *= 2
        self.hist += np.histogram(a, bins=self.BINS, range=(0.0, self.top))[0]

    def _clip(self) -> float:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        lo, hi = super().range()
        if self.top == 0.0:
            return lo, hi
        t = self._clip()
        return max(lo, -t), min(hi, t)


class PercentileObserver(_HistogramObserver):
    """Clip |x| at the given percentile of its distribution."""

    def __init__(self, percentile: float = 99.999):
        if not 50.0 < percentile <= 100.0:
            raise CompileError(f"percentile={percentile}: allowed (50, 100]")
        super().__init__()
        self.percentile = percentile

    def _clip(self) -> float:
        cdf = np.cumsum(self.hist) / self.hist.sum()
        idx = int(np.searchsorted(cdf, self.percentile / 100.0))
        return (min(idx, self.BINS - 1) + 1) * self.top / self.BINS


class MSEObserver(_HistogramObserver):
    """Clip |x| where the expected squared 8-bit quantization error is smallest."""

    def __init__(self, levels: int = 127):
        super().__init__()
        self.levels = levels

    def _clip(self) -> float:
        width = self.top / self.BINS
        centers = (np.arange(self.BINS) + 0.5) * width
        best, best_err = self.top, np.inf
        for k in range(self.BINS // 16, self.BINS + 1, 8):
            t = k * width
            step = t / self.levels
            inside = centers <= t
            err = np.sum(self.hist[inside]) * step**2 / 12 + np.sum(self.hist[~inside] * (centers[~inside] - t) ** 2)
            if err < best_err:
                best, best_err = t, err
        return best


class ChannelAbsMaxObserver:
    """Running max |x| per channel of the last axis (for per-channel outlier smoothing)."""

    def __init__(self):
        self.amax: np.ndarray | None = None
        self.rows = 0  # how many values each channel's maximum was taken over

    def update(self, x: np.ndarray) -> None:
        if x.ndim == 0 or x.size == 0:
            return
        rows = x.reshape(-1, x.shape[-1])
        a = np.abs(rows).max(axis=0).astype(np.float64)
        if not np.all(np.isfinite(a)):  # a channel's infinities saturate, as in `Finite`
            a = np.where(np.isfinite(rows), np.abs(rows), 0).max(axis=0).astype(np.float64)
        self.amax = a if self.amax is None or self.amax.shape != a.shape else np.maximum(self.amax, a)
        self.rows += len(rows)

    def range(self) -> np.ndarray | None:
        return self.amax


class ChannelMeanObserver:
    """Running mean per channel along `axis` of the finite values (a conv's or matmul's input: what
    the lowering's bias correction multiplies the weights' rounding error by)."""

    def __init__(self, axis: int):
        self.axis, self.sums, self.count = axis, None, 0

    def update(self, x: np.ndarray, nonfinite: bool = True) -> None:
        """Add `x`'s sums; `nonfinite=False` (known from `Finite`) skips the search for infinities."""
        if x.size == 0 or x.dtype.kind != "f" or not -x.ndim <= self.axis < x.ndim:
            return
        axis = self.axis % x.ndim
        if nonfinite:
            x = np.where(np.isfinite(x), x, 0)
        sums = np.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis), dtype=np.float64)
        if self.sums is not None and self.sums.shape != sums.shape:
            return
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += x.size // x.shape[axis]

    def mean(self) -> np.ndarray | None:
        return None if self.sums is None else self.sums / self.count


MOMENT_SAMPLE = 1 << 20  # values a large tensor's moments are estimated from
_RUN = 4099  # contiguous values per run of that sample (prime: its stride rarely follows a channel period)


def _spread_sample(x: np.ndarray) -> np.ndarray:
    """About MOMENT_SAMPLE values of flat `x` in evenly spread contiguous runs, or `x` itself where it
    is not larger: the moments are a typical value's size (`sensitivity.coarse_grids`), which a
    sample tells as well, and their two passes over a 3-D U-Net's 134 MB tensors took a fifth of
    its calibration."""
    if x.size <= 2 * MOMENT_SAMPLE:
        return x
    rows = x[: x.size // _RUN * _RUN].reshape(-1, _RUN)
    return rows[:: max(1, len(rows) * _RUN // MOMENT_SAMPLE)].ravel()


class MomentsObserver:
    """Sum of squares and count of the nonzero finite values: how coarse a grid is for the tensor's
    typical values (`sensitivity.coarse_grids`), which min/max alone cannot tell."""

    def __init__(self):
        self.squares, self.nonzero = 0.0, 0
        self.nonfinite = False  # infinities or NaN seen (a -inf mask, log(0))

    def update(self, x: np.ndarray | Finite) -> None:
        f = x if isinstance(x, Finite) else Finite(x)
        self.nonfinite |= f.nonfinite
        x = f.x.ravel()
        if x.size and x.dtype.kind == "f":
            part = _spread_sample(x)
            share = x.size / part.size
            # float64: float32 squares overflow past 1.8e19 (T5's residual stream reaches it); einsum
            # casts in blocks, without a float64 copy of the tensor. Not np.dot: BLAS threads spinning
            # beside TVM's thread pool made calibration 4x slower
            self.squares += float(np.einsum("i,i->", part, part, dtype=np.float64)) * share
            self.nonzero += int(round(np.count_nonzero(part) * share))

    def moments(self) -> tuple[float, int]:
        return self.squares, self.nonzero


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def make_observer(name: str):
    """Observer by name; raises CompileError naming the allowed ones."""
    if name not in OBSERVERS:
        raise CompileError(f"unknown observer {name!r}; allowed: {', '.join(OBSERVERS)}")
    return OBSERVERS[name]()
