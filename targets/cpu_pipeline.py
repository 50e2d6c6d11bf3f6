"""The Relax compilation pipeline for CPU (LLVM) targets: TVM's default CPU pipeline plus
the project's default schedules (`cpu_schedules.py`). With AVX512-VNNI, int8 matmuls and
pointwise convs become VNNI kernels first (`vnni_rewrite.py`); other pointwise convs are
turned into matmuls so that they get the matmul schedule."""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_defaults


def cpu_lowering_passes(target) -> list:
    """Everything up to scheduled, fused kernels (also what the plan exporter flattens)."""
    from passes.conv1x1_as_matmul import conv1x1_as_matmul

    from .cpu_schedules import schedule_int_matmul_cpu
    from .vnni import has_vnni
    from .vnni_rewrite import use_vnni_kernels

    vnni = [use_vnni_kernels] if has_vnni(target) else []
    return (vnni + [conv1x1_as_matmul] + cpu_defaults.library_dispatch_passes(target)
            + cpu_defaults.legalize_passes(target) + [schedule_int_matmul_cpu])


def cpu_pipeline(target: tvm.target.Target):
    """A module pass that lowers an integer Relax module for `target` (kind llvm)."""

    @tvm.transform.module_pass(opt_level=0, name="IntqCpuPipeline")
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(cpu_lowering_passes(target)
                                            + cpu_defaults.dataflow_lower_passes(target)
                                            + cpu_defaults.finalize_passes(target))(mod)

    return pipeline
