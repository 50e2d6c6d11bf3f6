"""Runtime: compile models into artifacts, load and run them, measure latency."""

from .compiler import compile_model
from .model import Model, load

__all__ = ["Model", "compile_model", "load"]
