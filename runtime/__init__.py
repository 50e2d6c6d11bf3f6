"""Runtime: compile models into artifacts, load and run them, measure latency.

`runtime.load` needs only numpy and the TVM runtime (works with TVM_USE_RUNTIME_LIB=1 on
a board); `runtime.compile_model` needs the whole compiler and is imported on first use.
"""

from .model import Model, load

__all__ = ["Model", "compile_model", "load"]


def __getattr__(name):
    if name == "compile_model":
        from .compiler import compile_model

        return compile_model
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
