"""A compilation target as data: the TVM target plus how to build and export for it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from .cross import Toolchain, check_toolchain, toolchain_for


@dataclass(frozen=True)
class TargetSpec:
    """What `tvm.compile` and `export_library` need for one target."""

    name: str  # the user's name for it, e.g. "x86", "arm", a tag or a JSON dict
    tvm_target: dict | str  # TVM 0.27 target JSON dict or tag name
    toolchain: Toolchain = field(default_factory=lambda: toolchain_for(None))  # links the library
    device: str = "cpu"  # TVM device the model runs on: "cpu" or "cuda"
    features: tuple[str, ...] = ()  # detected or chosen ISA features, for the manifest
    build_env: Callable[[], ContextManager] | None = None  # prepares toolchains for the build
    pipeline: Callable | None = None  # target -> Relax pipeline; None: the project's CPU pipeline
    # a free batch also ships the batch-1 library, which one-sample calls run: kernels that take
    # static rows only (x86's AMX tiles, tile convs, attention's VNNI matmuls) are faster there
    sample_library: bool = False

    @property
    def arch(self) -> str:
        """`platform.machine()` of the machine the artifact runs on."""
        return self.toolchain.machine

    def target(self):
        import tvm

        return tvm.target.Target(self.tvm_target)

    def check(self) -> None:
        """Fail early, naming the Debian package, if the cross compiler is missing."""
        check_toolchain(self.toolchain, self.name)

    def export_kwargs(self) -> dict:
        if self.toolchain.compiler is None:
            return {}
        from tvm.support import cc

        return {"fcompile": cc.cross_compiler(self.toolchain.compiler, options=list(self.toolchain.link_options))}

    def relax_pipeline(self, target, tune_trials: int = 0):
        """The Relax pipeline; `tune_trials` > 0 tunes on this machine (LLVM targets only)."""
        from .cpu_pipeline import cpu_pipeline

        if self.pipeline is not None:
            return self.pipeline(target)
        return cpu_pipeline(target, tune_trials)

    def build_context(self) -> ContextManager:
        """Enter around `tvm.compile` and `export_library`."""
        return self.build_env() if self.build_env else contextlib.nullcontext()
