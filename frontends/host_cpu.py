"""This CPU's x86-64 features, read from /proc/cpuinfo, and the AMX tile state Linux grants.

The runtime checks an artifact's features against them before loading it (a missing one would be
SIGILL), also on a machine with only the TVM runtime (TVM_USE_RUNTIME_LIB=1), where the compiler's
`targets` package does not import; `targets.x86` builds the host target from the same functions. It
lives at the head of the data flow, as `errors.py` does, so that both import it without one reaching
into the other.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

# x86-64 micro-architecture levels (psABI), highest first, with the cpuinfo flags each needs.
LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"}),
    ("x86-64-v3", {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c"}),
    ("x86-64-v2", {"sse4_2", "popcnt", "ssse3"}),
)
LEVEL_ORDER = ["x86-64"] + [level for level, _ in reversed(LEVELS)]  # lowest first
# cpuinfo flag -> LLVM feature, added on top of the level.
EXTRAS = {
    "avx512_vnni": "+avx512vnni", "avx_vnni": "+avxvnni", "avx512_bf16": "+avx512bf16",
    "avx512vbmi": "+avx512vbmi", "amx_tile": "+amx-tile", "amx_int8": "+amx-int8",
}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (or of the given text)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_features(flags: set[str] | None = None) -> tuple[str, ...]:
    """(micro-architecture level, +extra LLVM features...) of this (or the given flags') CPU."""
    flags = cpu_flags() if flags is None else flags
    mcpu = next((level for level, need in LEVELS if need <= flags), "x86-64")
    return (mcpu, *sorted(feature for flag, feature in EXTRAS.items() if flag in flags))


def missing_features(features, flags: set[str] | None = None) -> list[str]:
    """The features of an artifact (`TargetSpec.features`: a level, then +extras) that this
    (or the given flags') CPU lacks: a level is met by any level at or above it."""
    have = host_features(flags)
    missing = []
    for feature in features:
        if feature in LEVEL_ORDER:
            if LEVEL_ORDER.index(feature) > LEVEL_ORDER.index(have[0]):
                missing.append(feature)
        elif feature not in have:
            missing.append(feature)
    return missing


ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1023, 18, 158
_amx_enabled: bool | None = None


def enable_amx() -> bool:
    """Ask Linux for this process's AMX tile state (once; the threads share it). Without it, the
    first tile instruction dies with SIGILL. False where the kernel refuses (or is not Linux)."""
    global _amx_enabled
    if _amx_enabled is None:
        try:
            _amx_enabled = ctypes.CDLL(None, use_errno=True).syscall(
                SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
        except (OSError, AttributeError):
            _amx_enabled = False
    return _amx_enabled
