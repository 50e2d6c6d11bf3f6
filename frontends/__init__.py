"""Frontends: model files -> float Relax modules."""

from .errors import CompileError, UnsupportedModelError
from .onnx_import import INTEGER_PATH_OPS, ImportedModel, TensorSpec, load_onnx, parse_input_shape

__all__ = ["CompileError", "UnsupportedModelError", "INTEGER_PATH_OPS", "ImportedModel", "TensorSpec",
           "load_onnx", "parse_input_shape"]
