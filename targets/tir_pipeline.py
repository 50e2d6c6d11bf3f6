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
    return tvm.transform.Sequential([lower, fold_window_offset, even_odd_multiply, stack_scratch], name="IntqCpuTir"), host, device


def register() -> str:
    """NAME, registered with TVM once per process."""
    from tvm.tirx import compilation_pipeline

    if NAME not in compilation_pipeline.PIPELINE_MAP:
        compilation_pipeline.register_tir_pipeline(NAME, _pipeline)
    return NAME
