"""The Relax compilation pipeline for the cuda target.

TVM's default CUDA pipeline, except for the schedules: pointwise convs become matmuls
(`passes/conv1x1_as_matmul.py`) and int8 matmuls are hand-scheduled and tensorized to
`__dp4a` (`cuda_dp4a.py`), row kernels with a reduction or a long chain run one thread
per row (`cuda_rows.py`); the remaining kernels get dlight's reduction and fallback rules.
Long unrolled graphs are legalized once per distinct call and fused block by block, as on CPU
(`passes/legalize_once.py`, `split_dataflow.py`), and equal kernels are compiled once (`share_kernels.py`).
dlight's Matmul rule is left out: on int8 x int8 -> int32 it picks a tensor-core schedule
that TVM 0.27 fails to lower (InjectSoftwarePipeline: "fragment_info_" check).
Its GEMV rule is left out too: it asserts on a requantization epilogue fused with the
integer sum of a global average pool.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_defaults


def cuda_pipeline(target: tvm.target.Target):
    """A module pass that lowers an integer Relax module for `target` (kind cuda)."""
    from tvm.s_tir import dlight as dl

    from passes.conv1x1_as_matmul import conv1x1_as_matmul

    from .concat_tree import concat_tree
    from passes.legalize_once import legalize_ops_once
    from .split_dataflow import split_dataflow_blocks
    from .cuda_dp4a import schedule_int8_matmul_dp4a
    from .cuda_rows import schedule_row_kernels_cuda

    @tvm.transform.module_pass(opt_level=0, name="IntqCudaPipeline")
    def pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                [conv1x1_as_matmul, concat_tree]
                + cuda_defaults.library_dispatch_passes(target)
                + [legalize_ops_once, relax.transform.AnnotateTIROpPattern(),
                   relax.transform.FoldConstant(), split_dataflow_blocks, relax.transform.FuseOps(),
                   relax.transform.FuseTIR(),
                   schedule_int8_matmul_dp4a, schedule_row_kernels_cuda,
                   dl.ApplyDefaultSchedule(dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                           dl.gpu.Fallback())]
                + cuda_defaults.dataflow_lower_passes(target)
                + cuda_defaults.finalize_passes(target))
            return seq(mod)

    return pipeline
