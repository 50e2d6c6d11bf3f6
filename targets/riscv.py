"""RISC-V targets: rv64gc with the vector extension (RVV 1.0: `vsetvli`, `vwmacc`) or without."""

from __future__ import annotations

from .cross import toolchain_for
from .spec import TargetSpec

_BASE = ["+m", "+a", "+f", "+d", "+c"]


def riscv_target(vector: bool = True) -> TargetSpec:
    """rv64gc (+v unless `vector` is False), lp64d ABI."""
    mattr = _BASE + (["+v"] if vector else [])
    tvm_target = {"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mcpu": "generic-rv64", "mabi": "lp64d",
                  "mattr": mattr}
    return TargetSpec("riscv" if vector else "riscv-novector", tvm_target,
                      toolchain=toolchain_for("riscv64-linux-gnu"), features=tuple(mattr))
