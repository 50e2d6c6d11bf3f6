"""The TIR pipeline of CPU (LLVM) targets: TVM's default one, then the project's rewrites of
lowered, vectorized kernels (`window_offset.py`, `even_odd_multiply.py`, `stack_scratch.py`). `tvm.compile` and
`tvm.tirx.build` take it by name (`parallel_build.py`)."""

from __future__ import annotations

import tvm

NAME = "intq_cpu"


def _pipeline():
    from tvm.tirx import compilation_pipeline

    from .even_odd_multiply import even_odd_multiply
    from .stack_scratch import stack_scratch
    from .window_offset import fold_window_offset

    lower, host, device = compilation_pipeline.get_tir_pipeline("default")
    passes = [lower, trust_merged_step_arguments, fold_window_offset, even_odd_multiply, stack_scratch]
    return tvm.transform.Sequential(passes, name="IntqCpuTir"), host, device


TRUSTED = "intq.trusted_arguments"  # a kernel only the VM calls, with tensors its memory plan made


@tvm.transform.module_pass(opt_level=0, name="TrustMergedStepArguments")
def trust_merged_step_arguments(mod, _ctx):
    """The argument checks (dtype, rank, shape, strides, alignment of every tensor) dropped from the kernels
    marked TRUSTED (`merge_step_kernels.py`): a merged recurrence step takes 40-70 tensors, most of them
    one-element constants, and checking them cost 40% of the kernel's time (GRU 32 wide). The VM checks
    the model's inputs; the tensors it passes these kernels are its own planned ones, of the shapes the
    kernels were compiled for."""
    trusted = {gv: f for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and TRUSTED in f.attrs}
    if not trusted:
        return mod
    skipped = tvm.tirx.transform.SkipAssert()(tvm.IRModule(trusted))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, f in skipped.functions_items():
        out[gv] = f
    return out


def register() -> str:
    """NAME, registered with TVM once per process."""
    from tvm.tirx import compilation_pipeline

    if NAME not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(NAME, _pipeline)
    return NAME
