"""RISC-V targets: rv64gc with the vector extension (RVV 1.0: `vsetvli`, `vwmacc`) or without."""

from __future__ import annotations

import tvm

from .cross import toolchain_for
from .spec import TargetSpec

_BASE = ["+m", "+a", "+f", "+d", "+c"]


def riscv_target(vector: bool = True) -> TargetSpec:
    """rv64gc (+v unless `vector` is False), lp64d ABI."""
    mattr = _BASE + (["+v"] if vector else [])
    tvm_target = {"kind": "llvm", "mtriple": "riscv64-linux-gnu", "mcpu": "generic-rv64", "mabi": "lp64d",
                  "mattr": mattr}
    return TargetSpec("riscv" if vector else "riscv-novector", tvm_target,
                      toolchain=toolchain_for("riscv64-linux-gnu"), features=tuple(mattr),
                      build_env=_rvv_build if vector else None)


def _rvv_build():
    """TVM 0.27's StorageRewrite drops buffer allocations of vectorized chunked kernels for RVV
    targets (MakePackedAPI then fails: "variables ... are used, but are not passed in as API
    arguments"; all-MiniLM-L6-v2's requantizations): build without it (per-chunk buffers)."""
    return tvm.transform.PassContext(config={"tirx.disable_storage_rewrite": True})
