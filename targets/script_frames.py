"""TVMScript's decorators without `inspect.stack()`'s cost.

`T.prim_func`, `I.ir_module` and `R.function` take `inspect.stack()` of their caller, which finds every
frame's source file through `inspect.getmodule`: a walk over all of `sys.modules` (thousands of modules
once torch is loaded) per frame, 30-50 ms per decorated kernel deep in a compile, about 3 s of
EfficientNet-Lite0's (AMX tile intrinsics, depthwise quads, the boundary kernels, TVM's own scripts).
The parsers read the frames themselves and the line each one is at; `install` gives them a stack built
from the frames directly, each line from `linecache`, as `inspect.stack()` would give it.
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import sys

_PARSERS = ("tvm.tirx.script.parser.entry", "tvm.script.parser.ir.entry", "tvm.relax.script.parser.entry")


def stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack(context)` for context <= 1: the caller's frame and those above it, with their lines."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        code, lineno = frame.f_code, frame.f_lineno
        line = linecache.getline(code.co_filename, lineno) if context > 0 else ""
        frames.append(inspect.FrameInfo(frame, code.co_filename, lineno, code.co_name, [line] if line else None,
                                        0 if line else None))
        frame = frame.f_back
    return frames


class _Inspect:
    """The `inspect` module as the parsers see it: its own functions, `stack` above."""

    stack = staticmethod(stack)

    def __getattr__(self, name: str):
        return getattr(inspect, name)


def install() -> None:
    """Point the TVMScript parsers' `inspect` at `_Inspect` (once per process; parsers that are not there
    or do not use `inspect` are left alone)."""
    for name in _PARSERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "inspect", None) is inspect:
            module.inspect = _Inspect()
