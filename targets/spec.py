"""A compilation target as data: the TVM target dict plus how to export for it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TargetSpec:
    """What `tvm.compile` and `export_library` need for one target."""

    name: str  # the user's name for it, e.g. "x86"
    tvm_target: dict  # TVM 0.27 target JSON dict
    arch: str  # machine the artifact runs on, as `platform.machine()` spells it
    cross_compiler: str | None = None  # None: the host's compiler
    features: tuple[str, ...] = field(default=())  # detected CPU features, for the manifest

    def target(self):
        import tvm

        return tvm.target.Target(self.tvm_target)
