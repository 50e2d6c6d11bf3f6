"""Frontends: model files -> float Relax modules. (Attributes load lazily: `frontends.errors`
imports without onnx or TVM, as the runtime on a board needs.)"""

from importlib import import_module

from .errors import ArtifactError, CompileError, InputError, ToolchainError, UnsupportedModelError

_LAZY = {"INTEGER_PATH_OPS", "ImportedModel", "TensorSpec", "load_onnx", "parse_input_shape"}
__all__ = ["ArtifactError", "CompileError", "InputError", "ToolchainError", "UnsupportedModelError", *sorted(_LAZY)]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'frontends' has no attribute {name!r}")
    return getattr(import_module(".onnx_import", __name__), name)
