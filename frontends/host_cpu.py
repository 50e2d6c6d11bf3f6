"""This CPU's features: x86-64's read from /proc/cpuinfo, the AMX tile state Linux grants, and an
ARM board's from the hardware capabilities Linux hands every process (getauxval: also what qemu-user
emulates for its CPU model).

The runtime checks an artifact's features against them before loading it (a missing one would be
SIGILL), also on a machine with only the TVM runtime (TVM_USE_RUNTIME_LIB=1), where the compiler's
`targets` package does not import; `targets.x86` builds the host target from the same functions. It
lives at the head of the data flow, as `errors.py` does, so that both import it without one reaching
into the other.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from .errors import InputError

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
_KNOWN = set(EXTRAS.values())


HOST_CPU = "INTQ_HOST_CPU"  # `LEVEL[+feature...]`, as --cpu: this machine taken for one with no more than that


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (or of the given text). With INTQ_HOST_CPU set
    (e.g. `x86-64-v3`), /proc/cpuinfo's flags lose what that CPU lacks: an AVX-512 machine then
    compiles, checks and runs its host artifacts as an AVX2-only one would (`python -m pytest` so
    runs the suite on the AVX2 kernels)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        flags = cpu_flags(path.read_text() if path.exists() else "")
        return limited_to(flags, os.environ[HOST_CPU]) if os.environ.get(HOST_CPU) else flags
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def limited_to(flags: set[str], cpu: str) -> set[str]:
    """`flags` without the levels above LEVEL and the extras not named in `cpu` (`LEVEL[+feature...]`)."""
    level, *extras = cpu.split("+")
    if level not in LEVEL_ORDER:
        raise InputError(f"{HOST_CPU}={cpu!r}: expected LEVEL[+feature...], LEVEL one of {', '.join(LEVEL_ORDER)}")
    kept = LEVEL_ORDER[:LEVEL_ORDER.index(level) + 1]
    above = set().union(*(need for name, need in LEVELS if name not in kept))
    below = set().union(*(need for name, need in LEVELS if name in kept))
    extra = {flag for flag, feature in EXTRAS.items() if feature.lstrip("+") not in extras}
    return flags - (above - below) - extra


def host_features(flags: set[str] | None = None) -> tuple[str, ...]:
    """(micro-architecture level, +extra LLVM features...) of this (or the given flags') CPU."""
    flags = cpu_flags() if flags is None else flags
    mcpu = next((level for level, need in LEVELS if need <= flags), "x86-64")
    return (mcpu, *sorted(feature for flag, feature in EXTRAS.items() if flag in flags))


def missing_features(features, flags: set[str] | None = None) -> list[str]:
    """The features of an artifact (`TargetSpec.features`: a level, then +extras) that this
    (or the given flags') CPU lacks: a level is met by any level at or above it. Entries that are no
    x86 feature known here (a CUDA artifact's `sm_80`, a CPU name of a JSON target) are not judged:
    every CUDA artifact was refused as lacking `sm_80`, on a GPU machine too."""
    flags = cpu_flags() if flags is None else flags
    have = host_features(flags)
    missing = []
    for feature in features:
        if feature in LEVEL_ORDER:
            if LEVEL_ORDER.index(feature) > LEVEL_ORDER.index(have[0]):
                missing.append(feature)
        elif feature in _KNOWN and feature not in have or _lacks_vector_isa(feature, flags):
            missing.append(feature)
    return missing


FLAG_NAMES = {"+sse3": "pni", "+avxvnniint8": "avx_vnni_int8", "+avxvnniint16": "avx_vnni_int16",
              "+avxneconvert": "avx_ne_convert"}  # cpuinfo names no rule gives
VECTOR_ISA = re.compile(r"\+(avx|amx|sse|fma|f16c)")  # extensions whose instructions the kernels emit


def _lacks_vector_isa(feature: str, flags: set[str]) -> bool:
    """An x86 vector extension outside EXTRAS (a JSON target's `+avx512fp16`, `+amx-fp16`) that no cpuinfo
    flag of its name reports: such artifacts were not judged and died with SIGILL where the CPU lacks it."""
    if feature in _KNOWN or not VECTOR_ISA.match(feature):
        return False
    base = FLAG_NAMES.get(feature, feature[1:].replace("-", "_").replace(".", "_"))
    return not {base, re.sub(r"^(avx512|avx|amx)(?!_)", r"\1_", base)} & flags


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


AT_HWCAP, AT_HWCAP2 = 16, 26
# LLVM feature -> (auxv entry, bit) that Linux sets where the CPU has it (arch/*/include/uapi/asm/hwcap.h);
# a feature missing here is not checked (an artifact's other features: its CPU name, tuning flags, crypto
# instructions no kernel uses: LLVM's cortex-a72 has AES, which a Raspberry Pi 4's lacks)
HWCAPS = {
    "aarch64": {"+neon": (AT_HWCAP, 1 << 1), "+fullfp16": (AT_HWCAP, 1 << 9), "+rdm": (AT_HWCAP, 1 << 12),
                "+dotprod": (AT_HWCAP, 1 << 20), "+sve": (AT_HWCAP, 1 << 22), "+sve2": (AT_HWCAP2, 1 << 1),
                "+i8mm": (AT_HWCAP2, 1 << 13), "+bf16": (AT_HWCAP2, 1 << 14)},
    "armv7l": {"+neon": (AT_HWCAP, 1 << 12), "+vfp4": (AT_HWCAP, 1 << 16), "+idiv": (AT_HWCAP, 1 << 17)},
}


def hwcaps() -> dict[int, int]:
    """{AT_HWCAP: bits, AT_HWCAP2: bits} of this process ({} where getauxval is missing: not Linux)."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return {}
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return {entry: int(getauxval(entry)) for entry in (AT_HWCAP, AT_HWCAP2)}


def missing_hwcaps(features, machine: str, caps: dict[int, int] | None = None) -> list[str]:
    """The features of an artifact for an ARM `machine` ("aarch64", "armv7l") that this CPU (or `caps`,
    `hwcaps()`'s form) lacks, as far as Linux reports them; [] where it reports none (not Linux)."""
    table = HWCAPS.get(machine, {})
    caps = hwcaps() if caps is None else caps
    if not caps:
        return []
    return [f for f in features if f in table and not caps.get(table[f][0], 0) & table[f][1]]
