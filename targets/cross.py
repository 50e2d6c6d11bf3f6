"""Cross toolchains: which compiler links an artifact for a target triple, which Debian
package provides it, and what `platform.machine()` reports where the artifact runs."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from frontends.errors import CompileError, ToolchainError


@dataclass(frozen=True)
class Toolchain:
    machine: str  # platform.machine() on the board
    compiler: str | None  # None: the host's own compiler
    package: str | None  # Debian package providing `compiler`
    link_options: tuple[str, ...] = ()
    libc_package: str | None = None  # Debian package with the C library it links against


_BY_ARCH = {
    "x86_64": Toolchain("x86_64", None, None),
    "aarch64": Toolchain("aarch64", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu",
                         libc_package="libc6-dev-arm64-cross"),
    "armv7": Toolchain("armv7l", "arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf",
                       libc_package="libc6-dev-armhf-cross"),
    # TVM's generated code calls __atomic helpers that live in libatomic on riscv64.
    "riscv64": Toolchain("riscv64", "riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu", ("-latomic",),
                         libc_package="libc6-dev-riscv64-cross"),
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
    """Raise CompileError naming the Debian package if the cross compiler is missing or
    cannot link a shared library (its C library is a separate package)."""
    if not toolchain.compiler:
        return
    path = shutil.which(toolchain.compiler)
    if path is None:
        raise ToolchainError(f"target {target_name!r} needs the cross compiler {toolchain.compiler}, which is not "
                           f"installed: apt-get install {toolchain.package} (or run targets/install_toolchains.sh)")
    error = _link_error(path, toolchain.link_options)
    if error:
        raise ToolchainError(f"target {target_name!r}: the cross compiler {toolchain.compiler} cannot link a shared "
                           f"library ({error}): apt-get install {toolchain.libc_package or toolchain.package} "
                           "(or run targets/install_toolchains.sh)")


def first_error_line(text: str) -> str:
    """The first line of compiler/linker output that reports an error (else the first line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower() or "cannot find" in line), lines[0] if lines else "")


@functools.lru_cache(maxsize=None)
def _link_error(compiler: str, options: tuple[str, ...]) -> str | None:
    """None if `compiler` links a tiny shared library, else its first error line."""
    with tempfile.TemporaryDirectory(prefix="intq-link-") as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int intq_probe(int x) { return x + 1; }\n")
        result = subprocess.run([compiler, "-shared", "-fPIC", str(src), "-o", str(Path(tmp) / "probe.so"), *options],
                                capture_output=True, text=True)
    return None if result.returncode == 0 else first_error_line(result.stderr + result.stdout) or "exit status " + str(
        result.returncode)
