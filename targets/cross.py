"""Cross toolchains: which compiler links an artifact for a target triple, which Debian
package provides it, and what `platform.machine()` reports where the artifact runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from frontends.errors import CompileError


@dataclass(frozen=True)
class Toolchain:
    machine: str  # platform.machine() on the board
    compiler: str | None  # None: the host's own compiler
    package: str | None  # Debian package providing `compiler`
    link_options: tuple[str, ...] = ()


_BY_ARCH = {
    "x86_64": Toolchain("x86_64", None, None),
    "aarch64": Toolchain("aarch64", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    "armv7": Toolchain("armv7l", "arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
    # TVM's generated code calls __atomic helpers that live in libatomic on riscv64.
    "riscv64": Toolchain("riscv64", "riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu", ("-latomic",)),
}


def toolchain_for(triple: str | None) -> Toolchain:
    """The toolchain for an LLVM target triple (None: this x86-64 host)."""
    arch = (triple or "x86_64").split("-")[0]
    if arch.startswith("armv7") or arch == "arm":
        arch = "armv7"
    if arch not in _BY_ARCH:
        raise CompileError(f"no cross toolchain known for target triple {triple!r}; supported: "
                           "x86_64, aarch64, armv7 (arm-linux-gnueabihf), riscv64")
    return _BY_ARCH[arch]


def check_toolchain(toolchain: Toolchain, target_name: str) -> None:
    """Raise CompileError naming the Debian package if the cross compiler is missing."""
    if toolchain.compiler and shutil.which(toolchain.compiler) is None:
        raise CompileError(f"target {target_name!r} needs the cross compiler {toolchain.compiler}, which is not "
                           f"installed: apt-get install {toolchain.package} (or run targets/install_toolchains.sh)")
