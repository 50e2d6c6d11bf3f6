"""User-facing errors.

`CompileError` lives at the head of the data flow so that every later stage
(passes, targets, runtime) can raise it without importing downstream.
"""


class CompileError(Exception):
    """A user mistake or an unsupported model: the CLI prints it and exits with code 2."""


class UnsupportedModelError(CompileError):
    """The model uses ops or forms the integer-only path cannot compile."""
