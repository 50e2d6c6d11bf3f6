"""Runtime: compile models into artifacts, load and run them, measure latency.

`runtime.load` needs only numpy and the TVM runtime (works with TVM_USE_RUNTIME_LIB=1 on
a board); `runtime.compile_model` needs the whole compiler and is imported on first use.
"""

from frontends.errors import ArtifactError, CompileError, InputError

from .model import Model, load

# the errors a script catches: InputError (a ValueError) from `run`, ArtifactError from `load`, both CompileError
__all__ = ["ArtifactError", "CompileError", "InputError", "Model", "compile_model", "load"]


def __getattr__(name):
    if name == "compile_model":
        from .compiler import compile_model

        return compile_model
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
