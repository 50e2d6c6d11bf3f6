"""Sequence-length buckets: one artifact for every length up to a bound.

    --input-shape input_ids:1x1..512 --input-shape attention_mask:1x1..512
    -> libraries for lengths 16, 32, 64, 128, 256, 512 in one artifact; a 20-token input runs
       the 32 library, padded with zeros, and its outputs are cut back to 20 tokens.

Why buckets and not a symbolic length: every integer kernel (VNNI tiles, Shiftmax rows,
the row schedules) and every shape-dependent constant the importer folds (position ids,
mask broadcasts) is specialised to static shapes; a symbolic batch only multiplies rows
(passes/generalize_batch.py), a symbolic length would change the kernels. A bucket is the
same integer model at another length, lowered with the same calibration ranges (they are
keyed by tensor name, which does not depend on the length), so a bucket costs one more
lowering and compile, and runs at its own length's cost.

Exact padding: with an attention-mask input (an input named `*mask*` that has the length
dim), padded positions get mask 0, the mask's integer penalty drives their Shiftmax terms
to exactly 0, so attention, pooling and every per-token op give each real token the very
integers it gets in any other bucket: outputs are bit-identical across buckets. Without such
an input, padding would change the result (a convolution sees the zeros), so only the
compiled lengths themselves are accepted; so too where float onnxruntime finds that the model
reads the padding despite its mask (frontends/padding.py: a GRU that runs over the pads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BUCKET = 16


def default_sizes(lo: int, hi: int) -> list[int]:
    """Powers of two from max(16, lo) up to `hi`, and `hi` itself."""
    sizes, size = [], MIN_BUCKET
    while size < lo:
        size *= 2
    while size < hi:
        sizes.append(size)
        size *= 2
    return sizes + [hi]


def is_mask(name: str) -> bool:
    return "mask" in name.lower()


@dataclass(frozen=True)
class Buckets:
    """The manifest's `buckets`: which dim, the compiled lengths, whether padding is exact, and
    where the length sits in each input and output (axis or None; an output may hold it in several
    axes, a list: an attention map [.., L, L])."""

    dim: str
    sizes: list[int]
    padded: bool  # an attention mask makes zero padding exact
    input_axes: list[int | None]
    output_axes: list[int | list[int] | None]

    @classmethod
    def from_manifest(cls, manifest: dict) -> Buckets | None:
        b = manifest.get("buckets")
        return None if b is None else cls(b["dim"], b["sizes"], b["padded"], b["input_axes"], b["output_axes"])

    def manifest(self, libraries: dict[int, dict]) -> dict:
        return {"dim": self.dim, "sizes": self.sizes, "padded": self.padded, "input_axes": self.input_axes,
                "output_axes": self.output_axes, "libraries": {str(k): v for k, v in libraries.items()}}

    def length(self, arrays: list[np.ndarray]) -> int:
        return next(a.shape[ax] for a, ax in zip(arrays, self.input_axes) if ax is not None)

    def choose(self, length: int) -> int | None:
        """The bucket a `length` runs in (None: none fits)."""
        if self.padded:
            return next((s for s in self.sizes if s >= length), None)
        return length if length in self.sizes else None

    def pad(self, arrays: list[np.ndarray], size: int) -> list[np.ndarray]:
        """Inputs zero-padded along the length axis to `size`."""
        out = []
        for a, ax in zip(arrays, self.input_axes):
            if ax is not None and a.shape[ax] < size:
                widths = [(0, 0)] * a.ndim
                widths[ax] = (0, size - a.shape[ax])
                a = np.pad(a, widths)
            out.append(a)
        return out

    def cut(self, arrays: list[np.ndarray], length: int) -> list[np.ndarray]:
        """Outputs cut back from the bucket's length to the input's (unpadded: each runs its own)."""
        if not self.padded:
            return arrays
        out = []
        for a, axes in zip(arrays, self.output_axes):
            for ax in length_axes(axes):
                a = np.take(a, np.arange(length), axis=ax)
            out.append(a)
        return out


def length_axes(entry: int | list[int] | None) -> tuple[int, ...]:
    """The axes an `output_axes` entry names (older manifests: one axis or None)."""
    return () if entry is None else (entry,) if isinstance(entry, int) else tuple(entry)
