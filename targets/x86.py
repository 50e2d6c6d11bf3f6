"""x86-64 host target with the CPU's features read from /proc/cpuinfo.

TVM 0.27 rejects `mcpu: native`, and naming a CPU model is unsafe (`sapphirerapids` makes
LLVM emit AVX512-FP16/AMX that an AMD EPYC dies on with SIGILL). So the target is the
highest x86-64 micro-architecture level the flags allow, plus the extra ISA features
(VNNI, BF16, VBMI, AMX) the flags list, and nothing else.
"""

from __future__ import annotations

from frontends.errors import CompileError
from frontends.host_cpu import EXTRAS, LEVEL_ORDER, cpu_flags, host_features, missing_features

from .spec import TargetSpec

__all__ = ["cpu_flags", "fleet_target", "host_features", "host_target", "missing_features"]  # (frontends/host_cpu.py)


def fleet_target(cpu: str) -> TargetSpec:
    """A target for a fleet of CPUs, `LEVEL[+feature...]`, e.g. `x86-64-v3` (AVX2 machines) or
    `x86-64-v4+avx512vnni`: the artifact uses nothing beyond what it names."""
    level, *extras = cpu.split("+")
    known = sorted(f.lstrip("+") for f in EXTRAS.values())
    if level not in LEVEL_ORDER or any(e not in known for e in extras):
        raise CompileError(f"--cpu {cpu!r}: expected LEVEL[+feature...], LEVEL one of {', '.join(LEVEL_ORDER)}, "
                           f"features from {', '.join(known)} (e.g. x86-64-v3, x86-64-v4+avx512vnni)")
    return _spec(level, sorted(f"+{e}" for e in set(extras)))


def host_target(flags: set[str] | None = None) -> TargetSpec:
    """The best safe LLVM target for this (or the given flags') x86-64 CPU."""
    mcpu, *mattr = host_features(flags)
    return _spec(mcpu, mattr)


def _spec(mcpu: str, mattr: list[str]) -> TargetSpec:
    tvm_target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    if mattr:
        tvm_target["mattr"] = mattr
    return TargetSpec("x86", tvm_target, features=tuple([mcpu] + mattr), sample_library=True)
