"""User-facing errors.

`CompileError` lives at the head of the data flow so that every later stage
(passes, targets, runtime) can raise it without importing downstream.
"""


class CompileError(Exception):
    """A user mistake or an unsupported model: the CLI prints it and exits with code 2."""


class UnsupportedModelError(CompileError):
    """The model uses ops or forms the integer-only path cannot compile."""


class ArtifactError(CompileError):
    """An artifact that is missing, corrupted, tampered with, or built for another machine."""


class InputError(CompileError, ValueError):
    """Run-time or calibration inputs whose names, shapes or dtypes do not match the model (a ValueError too:
    what a script's `except ValueError` around `Model.run` expects of a bad argument)."""


class ToolchainError(CompileError):
    """A compiler, linker or C library that the target needs is missing or fails (names the package)."""
