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


def test_long_dataflow_blocks_are_cut_before_fusion(monkeypatch):
    """FuseOps costs the square of a block's length: blocks are cut at MAX_BINDINGS (here 16), the
    values read across a cut become block outputs, and the results are the same."""
    from targets import split_dataflow

    xs = _steps()[:12]

    def chain(*xs):  # 12 x 3 bindings, each step reading the previous one (values cross every cut)
        acc = xs[0]
        for x in xs[1:]:
            acc = relax.op.subtract(relax.op.add(acc, x), relax.op.multiply(x, relax.const(2, "int32")))
        return acc

    want = run_relax(chain, xs)
    monkeypatch.setattr(split_dataflow, "MAX_BINDINGS", 16)
    mod = tvm.relax.transform.Normalize()(relax_main(chain, xs))
    cut = split_dataflow.split_dataflow_blocks(mod)
    flows = [b for b in cut["main"].body.blocks if isinstance(b, relax.DataflowBlock)]
    assert len(flows) == -(-len(mod["main"].body.blocks[0].bindings) // 16) > 1
    assert max(len(b.bindings) for b in flows) <= 16
    np.testing.assert_array_equal(run_relax(chain, xs), want)
    np.testing.assert_array_equal(want, xs[0] - sum(xs[1:]))
