"""The Relax compilation pipeline for CPU (LLVM) targets: TVM's default CPU pipeline plus
the project's default schedules (`cpu_schedules.py`). On x86 with AVX512-VNNI, AVX-VNNI or
AVX2 (`kernel_family.py`), int8 matmuls and pointwise convs become dot-product kernels first
(`vnni_rewrite.py`), and so do 4-bit ones (`vnni_int4.py`); other pointwise convs are turned
into matmuls so that they get the matmul schedule. Requantizations multiply 32 x 32 -> 64 bits
(`requant.py`), and so do the other int64 chains wherever their ranges allow (`narrow_int64.py`)."""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_defaults


def cpu_lowering_passes(target, tune_trials: int = 0, merge_steps: bool = True) -> list:
    """Everything up to scheduled, fused kernels (also what the plan exporter flattens, with `merge_steps`
    off: it runs kernels of one output); with `tune_trials`, MetaSchedule tunes what the default schedules
    leave (`tuning.py`)."""
    from passes.conv1x1_as_matmul import conv1x1_as_matmul
    from passes.conv_as_pointwise import conv_as_pointwise
    from passes.conv_transpose_as_conv import conv_transpose_as_conv
    from passes.grouped_conv_as_convs import grouped_conv_as_convs
    from passes.patch_conv_as_matmul import patch_conv_as_matmul

    from .concat_tree import concat_tree
    from .cpu_schedules import schedule_int_matmul_cpu
    from .depthwise import flat_depthwise
    from .share_kernels import dedupe_kernels, lift_scalar_constants
    from .kernel_family import is_x86, kernel_family
    from .merge_step_kernels import merge_step_kernels
    from .narrow_int64 import narrow_int64
    from .requant import windowed_requant
    from .reshape_after_elementwise import reshape_after_elementwise
    from .resize_taps import resize_taps
    from passes.legalize_once import legalize_ops_once
    from .cut_requant_chains import cut_requant_chains
    from .split_dataflow import split_dataflow_blocks
    from .strided_pool import strided_max_pool
    from .vnni_int4 import schedule_int4_dot_kernels, use_int4_dot_kernels
    from .vnni_rewrite import use_dot_kernels

    from .exp2_cubic import exp2_cubic_pass, has_avx512
    from .table_lookups import table_lookups

    family = kernel_family(target)
    lookups = [exp2_cubic_pass, table_lookups(target)] if has_avx512(target) else []  # tables as vector code
    dots = [use_dot_kernels(family), use_int4_dot_kernels(family)] if family.dots else []
    # spatial convs no kernel took, as pointwise convs over patches, which then take the dot kernels:
    # on x86 only (on aarch64 LLVM makes sdot/udot of the default conv loops' channel reduction)
    patches = [conv_as_pointwise] + dots[:1] if is_x86(target) else []
    pools = [strided_max_pool] if is_x86(target) else []  # shuffles of 512-bit loads
    tune = []
    if tune_trials:
        from .tuning import tune_pass

        tune = [tune_pass(target, tune_trials)]
    return ([reshape_after_elementwise] + lookups + [windowed_requant, narrow_int64, patch_conv_as_matmul, conv_transpose_as_conv, grouped_conv_as_convs, flat_depthwise] + dots + patches + pools + [conv1x1_as_matmul, resize_taps, concat_tree] + cpu_defaults.library_dispatch_passes(target)
            + [lift_scalar_constants] + _adapted(cpu_defaults.legalize_passes(target), legalize_ops_once,
                                                  [split_dataflow_blocks, cut_requant_chains])
            + [schedule_int4_dot_kernels, schedule_int_matmul_cpu] + ([merge_step_kernels] if merge_steps else [])
            + [dedupe_kernels] + tune)


def _adapted(passes: list, legalize, split: list) -> list:
    """TVM's legalization passes with LegalizeOps replaced by `legalize` and the `split` passes run before FuseOps."""
    out = []
    for p in passes:
        out += [legalize] if p.info.name == "LegalizeOps" else split + [p] if p.info.name == "FuseOps" else [p]
    return out


def _after_planning(passes: list) -> list:
    """TVM's finalization passes with `forward_tuple_items` and `reuse_tensor_views` right after the memory plan."""
    from .merge_step_kernels import forward_tuple_items
    from .reuse_tensor_views import reuse_tensor_views

    out = []
    for p in passes:
        out += [p, forward_tuple_items, reuse_tensor_views] if p.info.name == "StaticPlanBlockMemory" else [p]
    return out


def cpu_pipeline(target: tvm.target.Target, tune_trials: int = 0):
    """A module pass that lowers an integer Relax module for `target` (kind llvm)."""

    @tvm.transform.module_pass(opt_level=0, name="IntqCpuPipeline")
    def pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(cpu_lowering_passes(target, tune_trials)
                                            + cpu_defaults.dataflow_lower_passes(target)
                                            + _after_planning(cpu_defaults.finalize_passes(target)))(mod)

    return pipeline
