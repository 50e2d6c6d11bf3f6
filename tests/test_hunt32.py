"""Hunt 32 (real models people bring: face and line detectors, OCR, docs/hunts.md "A thirty-second hunt"): each fix
for its family, on small graphs built here."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import assert_flat_patches_equal

from passes import reference as ref

rng = np.random.default_rng(32)


class _Attrs:
    data_layout, kernel_layout, out_layout, groups = "NCHW", "OIHW", "NCHW", 1

    def __init__(self, padding, dilation):
        self.strides, self.padding, self.dilation = (1, 1), padding, dilation


def _kernels(lib) -> list[str]:
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
    return re.findall(r"<(\w+)>:\n", asm)


@pytest.mark.parametrize("n,c,h,w,k,dilation,dtype", [
    (1, 3, 12, 12, 3, (2, 2), "int8"),
    (1, 5, 9, 14, 3, (3, 1), "uint8"),  # dilated along one axis only, channels not a whole step
    (2, 4, 8, 8, 3, (6, 6), "int16"),  # a dilation past the image: taps that read only padding
    (1, 4, 1, 40, (1, 5), (1, 4), "int8"),  # a dilated Conv1d (WaveNet, SpliceAI)
    (1, 3, 10, 10, 3, (2, 2), "float32"),  # the float model calibration runs takes the same patches
])
def test_dilated_same_padding_patches_are_flat_copies(n, c, h, w, k, dilation, dtype):
    """A stride-1 dilated conv whose output is its input's size (ASPP branches, CRAFT's refiner, M-LSD) takes
    the flat-copy patches now (each row its channel shifted by (i dh - top) W + (j dw - left), the wrapped
    columns zeroed): equal to `patches_te`, which tests every element. Before, only undilated convs had them."""
    assert_flat_patches_equal(n, c, h, w, k, dtype, dilation)


def test_dilated_same_conv_reads_flat_patches_bit_exact(tmp_path):
    """The dot kernel with lanes over pixels took a dilated conv's patches from one gather kernel that tested
    every element against the image and divided its flat index (CRAFT's refiner: 4 ASPP branches, 20-25 ms
    each of its 158 ms; onnxruntime int8 ran the whole model in 49 ms). A `same` dilated conv's flat-copy
    patches, interleaved, take it now: a 3x3 conv at dilation 6 over 64 x 160 x 160, 60 -> 4.3 ms of patches
    (compiled here, AMX machine, load ~1.5). The integers are the reference conv's. Since session 45 rows wider
    than 16 pixels take the taps kernel instead (no patches: `test_conv_taps.py`); narrower ones keep these."""
    import tvm
    from tvm import relax

    from conftest import relax_main
    from passes.lowering import emit
    from targets import get_target

    x = rng.integers(-128, 128, (1, 16, 24, 16)).astype(np.int8)
    x.flat[:2] = -128, 127
    wt = rng.integers(-128, 128, (32, 16, 3, 3)).astype(np.int8)
    attrs = _Attrs((3, 3, 3, 3), (3, 3))
    spec = get_target("x86", cpu="x86-64-v4+avx512vnni")
    target = spec.target()
    ex = tvm.compile(relax_main(lambda a: emit.conv2d_acc(a, wt, attrs), [x]), target=target,
                     relax_pipeline=spec.relax_pipeline(target))
    lib = tmp_path / "lib.so"
    ex.export_library(str(lib))
    names = _kernels(lib)
    assert any("conv_patches" in n for n in names) and not any("packed_patches" in n for n in names), names
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  ref.conv2d_acc(x, wt, (1, 1), (3, 3, 3, 3), (3, 3)))


def test_probe_values_scale_with_the_tensors_not_their_product():
    """`SensitivityProbe.values` built `set(names)` once per tapped tensor: each call cost tensors x names
    even when every name was cached (khmer-ocr-ocm's CRNN, a 2-layer BiLSTM over 128 steps: 1018 matmuls,
    each asking for the ~1000 smoothed inputs among 18k taps, 89 ms a call, 44 s of a 236 s compile).
    The values are the same; 200 cached calls over 20k taps and 2k names take milliseconds now (2 s before)."""
    import time

    from passes.sensitivity import SensitivityProbe

    class Tapped:
        names = [f"t{i}" for i in range(20000)]

        def run(self, sample, capture):
            for i in range(0, 20000, 10):
                capture(i, np.full((2, 3), i, np.float32))

    probe = object.__new__(SensitivityProbe)
    probe.model, probe.samples, probe.runs, probe.seconds, probe._values = Tapped(), [{}], 0, 0.0, {}
    names = [f"t{i}" for i in range(0, 20000, 10)]
    first = probe.values(names, 8)
    assert probe.runs == 1 and sorted(first) == sorted(names) and float(first["t30"][0, 0]) == 30.0
    start = time.perf_counter()
    for _ in range(200):
        again = probe.values(names, 8)
    assert probe.runs == 1 and again.keys() == first.keys()
    assert time.perf_counter() - start < 1.0
