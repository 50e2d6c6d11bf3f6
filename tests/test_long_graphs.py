"""What keeps long graphs (unrolled recurrences: tens of thousands of bindings) cheap to build,
with the same values: a concatenation of many tensors as a tree of small kernels
(targets/concat_tree.py), long dataflow blocks cut before FuseOps (targets/split_dataflow.py),
equal calls legalized once (passes/legalize_once.py)."""

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


def test_equal_calls_are_legalized_once(monkeypatch):
    """Calls equal but for their variables share one kernel; a different constant, attribute, shape
    or operand pattern (add(x, x) against add(x, y)) gets its own; the values are those of NumPy."""
    from passes import legalize_once

    legalized, cached = [], legalize_once._cached  # which calls reach TVM's own legalization
    monkeypatch.setattr(legalize_once, "_cached", lambda default, cache: cached(
        lambda bb, call: (legalized.append(call.op.name), default(bb, call))[1], cache))

    xs = _steps()[:4] + [np.arange(6, dtype=np.int32).reshape(1, 6)]

    def build(a, b, c, d, e):
        two, three = relax.const(2, "int32"), relax.const(3, "int32")
        parts = [relax.op.multiply(a, two), relax.op.multiply(b, two), relax.op.multiply(c, three),
                 relax.op.add(a, b), relax.op.add(c, d), relax.op.add(d, d),
                 relax.op.reshape(relax.op.multiply(e, two), (1, 2, 3))]
        return relax.op.concat(parts, axis=1)

    mod = tvm.relax.transform.Normalize()(relax_main(build, xs))
    kernels = [f for f in legalize_once.legalize_ops_once(mod).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert legalized.count("relax.multiply") == 3 and legalized.count("relax.add") == 2  # b * 2, c + d reused
    # by 2, by 3, add (add(d, d) is legalized afresh, into the same PrimFunc), e by 2, reshape, concat
    assert len(kernels) == 6, len(kernels)
    a, b, c, d, e = xs
    want = np.concatenate([a * 2, b * 2, c * 3, a + b, c + d, d + d, (e * 2).reshape(1, 2, 3)], axis=1)
    np.testing.assert_array_equal(run_relax(build, xs), want)


def test_cuda_pipeline_legalizes_equal_steps_once(monkeypatch):
    """The cuda pipeline takes the same measures: 60 steps of matmul + add reach TVM's legalization
    once per distinct call, and fuse into one kernel."""
    from passes import legalize_once
    from targets.cuda_pipeline import cuda_pipeline

    legalized, cached = [], legalize_once._cached
    monkeypatch.setattr(legalize_once, "_cached", lambda default, cache: cached(
        lambda bb, call: (legalized.append(call.op.name), default(bb, call))[1], cache))
    rng = np.random.default_rng(5)
    weight = rng.integers(-3, 4, (8, 8), dtype=np.int32)
    xs = [rng.integers(-9, 9, (1, 8), dtype=np.int32) for _ in range(60)]

    def chain(*xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = relax.op.add(relax.op.matmul(acc, relax.const(weight)), x)
        return acc

    lowered = cuda_pipeline(get_target("cuda").target())(relax_main(chain, xs))
    assert sorted(legalized) == ["relax.add", "relax.matmul"], legalized
    assert len([f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]) == 1


def test_gathers_at_constant_steps_fold_without_compiling(monkeypatch):
    """ONNX Gather at a constant index imports with six calls on constants (the index's negative
    normalization, the axis extent from shape_of); TVM's FoldConstant compiles each call it folds (~20 ms),
    1,800 such gathers (an unrolled 300-step recurrence's per-step input) took 220 s to import. NumPy folds
    them (frontends/fold_constant_calls.py): none reaches FoldConstant, and each step reads its own row."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    from frontends import fold_constant_calls as fold

    steps = 40
    nodes = [helper.make_node("Gather", ["x", f"i{t}"], [f"y{t}"], axis=0) for t in range(steps)]
    nodes.append(helper.make_node("Concat", [f"y{t}" for t in range(steps)], ["y"], axis=0))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps * 3])],
                              [numpy_helper.from_array(np.array(steps - 1 - t, np.int64), f"i{t}") for t in range(steps)])
    mod = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), keep_params_in_input=False)
    reached = []
    real = fold._fold
    monkeypatch.setattr(fold, "_fold", lambda m, bound, bindings: (reached.extend(bindings), real(m, bound, bindings))[1])
    folded = fold.fold_constant_calls(mod)
    assert not reached
    ops = {b.value.op.name for blk in folded["main"].body.blocks for b in blk.bindings if isinstance(b.value, relax.Call)}
    assert ops <= {"relax.take", "relax.concat"}, ops
    x = np.random.default_rng(0).standard_normal((steps, 3)).astype(np.float32)
    exe = tvm.compile(folded, target="llvm")
    got = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, x[::-1].reshape(-1))
