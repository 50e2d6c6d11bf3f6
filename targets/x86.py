"""x86-64 host target with the CPU's features read from /proc/cpuinfo.

TVM 0.27 rejects `mcpu: native`, and naming a CPU model is unsafe (`sapphirerapids` makes
LLVM emit AVX512-FP16/AMX that an AMD EPYC dies on with SIGILL). So the target is the
highest x86-64 micro-architecture level the flags allow, plus the extra ISA features
(VNNI, BF16, VBMI, AMX) the flags list, and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from frontends.errors import CompileError

from .spec import TargetSpec

# x86-64 micro-architecture levels (psABI), highest first, with the cpuinfo flags each needs.
_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"}),
    ("x86-64-v3", {"avx2", "fma", "bmi1", "bmi2", "movbe", "f16c"}),
    ("x86-64-v2", {"sse4_2", "popcnt", "ssse3"}),
)
_LEVEL_ORDER = ["x86-64"] + [level for level, _ in reversed(_LEVELS)]  # lowest first
# cpuinfo flag -> LLVM feature, added on top of the level.
_EXTRAS = {
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
    mcpu = next((level for level, need in _LEVELS if need <= flags), "x86-64")
    return (mcpu, *sorted(feature for flag, feature in _EXTRAS.items() if flag in flags))


def missing_features(features, flags: set[str] | None = None) -> list[str]:
    """The features of an artifact (`TargetSpec.features`: a level, then +extras) that this
    (or the given flags') CPU lacks: a level is met by any level at or above it."""
    have = host_features(flags)
    missing = []
    for feature in features:
        if feature in _LEVEL_ORDER:
            if _LEVEL_ORDER.index(feature) > _LEVEL_ORDER.index(have[0]):
                missing.append(feature)
        elif feature not in have:
            missing.append(feature)
    return missing


def fleet_target(cpu: str) -> TargetSpec:
    """A target for a fleet of CPUs, `LEVEL[+feature...]`, e.g. `x86-64-v3` (AVX2 machines) or
    `x86-64-v4+avx512vnni`: the artifact uses nothing beyond what it names."""
    level, *extras = cpu.split("+")
    known = sorted(f.lstrip("+") for f in _EXTRAS.values())
    if level not in _LEVEL_ORDER or any(e not in known for e in extras):
        raise CompileError(f"--cpu {cpu!r}: expected LEVEL[+feature...], LEVEL one of {', '.join(_LEVEL_ORDER)}, "
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
