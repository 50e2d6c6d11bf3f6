"""Targets: one small module per target family, each producing a `TargetSpec`."""

from __future__ import annotations

from frontends.errors import CompileError

from . import cuda, x86
from .spec import TargetSpec

_FAMILIES = {"x86": x86.host_target, "cuda": cuda.cuda_target}


def get_target(name: str, cuda_arch: str | None = None) -> TargetSpec:
    """The target spec for a user-facing name; unknown names list the valid ones."""
    if name not in _FAMILIES:
        raise CompileError(f"unknown target {name!r}; valid targets: {', '.join(sorted(_FAMILIES))}")
    if name == "cuda":
        return cuda.cuda_target(cuda_arch or cuda.DEFAULT_ARCH)
    if cuda_arch:
        raise CompileError(f"--cuda-arch applies to the cuda target, not {name!r}")
    return _FAMILIES[name]()


def target_names() -> list[str]:
    return sorted(_FAMILIES)


__all__ = ["TargetSpec", "get_target", "target_names"]
