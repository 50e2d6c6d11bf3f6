"""Registry of per-op lowerings: `@lowers("relax.nn.conv2d")` maps a float Relax op to a
function `(ctx, call, args) -> Value` that emits its integer replacement."""

from __future__ import annotations

from typing import Callable

LOWERINGS: dict[str, Callable] = {}


def lowers(*op_names: str):
    """Register the decorated function as the integer lowering of `op_names`."""

    def register(fn):
        for name in op_names:
            assert name not in LOWERINGS, f"two lowerings for {name}"
            LOWERINGS[name] = fn
        return fn

    return register
