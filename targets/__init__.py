"""Targets: one small module per target family, each producing a `TargetSpec`.

`get_target` accepts a family name, any TVM target tag, or a raw JSON target dict.
"""

from __future__ import annotations

from frontends.errors import CompileError

from . import arm, cuda, generic, riscv, script_frames, x86
from .spec import TargetSpec

script_frames.install()

_FAMILIES = {
    "x86": x86.host_target,
    "arm": arm.arm_target,
    "arm32": arm.arm32_target,
    "riscv": riscv.riscv_target,
    "riscv-novector": lambda: riscv.riscv_target(vector=False),
    "cuda": cuda.cuda_target,
}
# the machines' own names (`uname -m`, the manifest's `arch`), which users give as targets: the family to name
_ARCH_NAMES = {"aarch64": "arm", "arm64": "arm", "armv7l": "arm32", "armv7": "arm32", "armhf": "arm32",
               "riscv64": "riscv", "rv64": "riscv", "x86_64": "x86", "amd64": "x86", "x64": "x86", "gpu": "cuda"}
_EXAMPLE_TAGS = ("raspberry-pi/4b-aarch64", "nvidia/jetson-orin-nano", "riscv/licheepi3a")


def target_names() -> list[str]:
    return list(_FAMILIES)


def get_target(name: str, cuda_arch: str | None = None, cpu: str | None = None) -> TargetSpec:
    """The target spec for a family name, a TVM target tag or a JSON dict; unknown names
    list the valid ones. `cpu` (x86 only) builds for a fleet instead of this CPU."""
    if cuda_arch and name != "cuda":
        raise CompileError(f"--cuda-arch applies to the cuda target, not {name!r}")
    if cpu:
        if name != "x86":
            raise CompileError(f"--cpu applies to the x86 target, not {name!r} (name the CPU in a JSON target)")
        return x86.fleet_target(cpu)
    if name == "cuda":
        return cuda.cuda_target(cuda_arch or cuda.DEFAULT_ARCH)
    if name in _FAMILIES:
        return _FAMILIES[name]()
    if name.lstrip().startswith("{"):
        return generic.from_json(name)
    if name in generic.tag_names():
        return generic.from_target(name, name)
    meant = _ARCH_NAMES.get(name.strip().lower())
    hint = f" (did you mean --target {meant}, which builds for {name.strip()}?)" if meant else ""
    raise CompileError(f"unknown target {name!r}{hint}; valid targets: {', '.join(_FAMILIES)}, any TVM target tag "
                       f"({len(generic.tag_names())} exist, e.g. {', '.join(_EXAMPLE_TAGS)}), or a JSON target "
                       "dict such as '{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\"}'")


__all__ = ["TargetSpec", "get_target", "target_names"]
