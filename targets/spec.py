"""A compilation target as data: the TVM target dict plus how to build and export for it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager


@dataclass(frozen=True)
class TargetSpec:
    """What `tvm.compile` and `export_library` need for one target."""

    name: str  # the user's name for it, e.g. "x86"
    tvm_target: dict  # TVM 0.27 target JSON dict
    arch: str  # host machine the artifact runs on, as `platform.machine()` spells it
    device: str = "cpu"  # TVM device the model runs on: "cpu" or "cuda"
    cross_compiler: str | None = None  # None: the host's compiler
    features: tuple[str, ...] = field(default=())  # detected or chosen ISA features, for the manifest
    build_env: Callable[[], ContextManager] | None = None  # prepares toolchains for the build
    pipeline: Callable | None = None  # target -> Relax pipeline; None: relax.get_default_pipeline

    def target(self):
        import tvm

        return tvm.target.Target(self.tvm_target)

    def relax_pipeline(self, target):
        from tvm import relax

        return self.pipeline(target) if self.pipeline else relax.get_default_pipeline(target)

    def build_context(self) -> ContextManager:
        """Enter around `tvm.compile` and `export_library`."""
        return self.build_env() if self.build_env else contextlib.nullcontext()
