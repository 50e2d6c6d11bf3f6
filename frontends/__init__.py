"""Frontends: model files -> float Relax modules."""

from .errors import ArtifactError, CompileError, InputError, UnsupportedModelError
from .onnx_import import INTEGER_PATH_OPS, ImportedModel, TensorSpec, load_onnx, parse_input_shape

__all__ = ["ArtifactError", "CompileError", "InputError", "UnsupportedModelError", "INTEGER_PATH_OPS", "ImportedModel", "TensorSpec",
           "load_onnx", "parse_input_shape"]
