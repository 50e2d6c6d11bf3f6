"""ARM targets: 64-bit (aarch64, NEON + dot product: `sdot`/`udot`) and 32-bit (armv7-a NEON,
hard float), cross-compiled with Debian's gcc cross toolchains."""

from __future__ import annotations

from .cross import toolchain_for
from .spec import TargetSpec


def arm_target() -> TargetSpec:
    """aarch64 with NEON and the ARMv8.2 dot-product instructions (Cortex-A55/A76 and newer)."""
    tvm_target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
    return TargetSpec("arm", tvm_target, toolchain=toolchain_for("aarch64-linux-gnu"), features=("+neon", "+dotprod"))


def arm32_target() -> TargetSpec:
    """armv7-a with NEON and VFPv4, hard-float ABI (Raspberry Pi OS 32-bit and the like)."""
    tvm_target = {"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon", "+vfp4"],
                  "mfloat-abi": "hard"}
    return TargetSpec("arm32", tvm_target, toolchain=toolchain_for("armv7a-linux-gnueabihf"),
                      features=("+neon", "+vfp4"))
