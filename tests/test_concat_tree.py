"""targets/concat_tree.py: a concatenation of many tensors (an unrolled recurrence's outputs)
builds as a tree of small kernels and gives the same values."""

from __future__ import annotations

import numpy as np
import tvm
from conftest import relax_main, run_relax
from tvm import relax

from targets import get_target
from targets.concat_tree import FANIN
from targets.cpu_pipeline import cpu_lowering_passes

STEPS = 100


def _steps():
    rng = np.random.default_rng(3)
    return [rng.integers(-1000, 1000, (1, 2, 3), dtype=np.int32) for _ in range(STEPS)]


def _build(*xs):  # each input has a producer of its own, as the requantized h_t of an LSTM
    return relax.op.concat([relax.op.add(x, x) for x in xs], axis=1)


def test_the_values_are_those_of_one_concatenation():
    xs = _steps()
    np.testing.assert_array_equal(run_relax(_build, xs), np.concatenate([2 * x for x in xs], axis=1))


def test_no_kernel_reads_more_than_fanin_tensors():
    """FuseOps would fuse every producer into one 100-input kernel (a 50-step LSTM's took 45 s to
    build); the tree's inner nodes are opaque, so each kernel reads at most FANIN tensors."""
    target = get_target("x86").target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target))(relax_main(_build, _steps()))
    reads = [len(f.params) - 1 for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert max(reads) <= FANIN and sum(1 for _ in reads) > 1
