"""Targets given as a TVM target tag (`raspberry-pi/4b-aarch64`, `nvidia/jetson-orin-nano`,
`riscv/licheepi3a`, ...) or as a raw JSON target dict."""

from __future__ import annotations

import json
import re

from frontends.errors import CompileError

from .cross import toolchain_for
from .spec import TargetSpec


def tag_names() -> list[str]:
    import tvm

    return sorted(tvm.target.list_tags())


def _plain(value):
    """A TVM export (Maps, Arrays, tuples) as plain JSON-able Python."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def from_target(name: str, tvm_target) -> TargetSpec:
    """A spec for any llvm or cuda target (tag name or dict); others are refused."""
    import tvm

    try:
        target = tvm.target.Target(tvm_target)
    except Exception as err:
        raise CompileError(f"target {name!r} is not a valid TVM target: {str(err).strip().splitlines()[-1]}") \
            from None
    exported = _plain(target.export())
    kind = exported["kind"]
    if kind not in ("llvm", "cuda"):
        raise CompileError(f"target {name!r} is of kind {kind!r}; supported kinds: llvm (CPUs), cuda")
    if kind == "cuda":
        from .cuda import cuda_spec

        host = exported.get("host") or {}
        host_machine = toolchain_for(host.get("mtriple")).machine
        host_features = (*(x for x in (host.get("mcpu"),) if x), *host.get("mattr", ()),
                         *(_implied(target.host, host_machine) if target.host is not None else ()))
        return cuda_spec(name, tvm_target, exported.get("arch", "sm_80"), host.get("mtriple"),
                         tuple(dict.fromkeys(host_features)))
    mattr = tuple(exported.get("mattr", ()))
    toolchain = toolchain_for(exported.get("mtriple"))
    implied = tuple(f for f in _implied(target, toolchain.machine) if f not in mattr)
    return TargetSpec(name, tvm_target, toolchain=toolchain,
                      features=tuple(x for x in (exported.get("mcpu"),) if x) + mattr + implied)


def _implied(target, machine: str) -> list[str]:
    """The features that the target's CPU name brings (LLVM's list) and that the runtime acts on: an ARM
    board's capabilities that Linux reports (`frontends.host_cpu.HWCAPS`), x86's extensions (AMX, VNNI; an
    x86 JSON target naming its CPU was refused at load everywhere, as lacking that name), RISC-V's vector unit and its
    minimum length (`+zvl256b`: the kernels assume it, and on shorter vectors compute wrong integers).
    `riscv/licheepi3a` recorded only `spacemit-x60`: `--emulate` ran it without a vector unit (SIGILL)."""
    from tvm.target import codegen

    from frontends.host_cpu import EXTRAS, HWCAPS

    try:
        have = {f"+{f}" for f in codegen.llvm_get_cpu_features(target)}
    except Exception:  # an LLVM without this backend: nothing implied is known
        return []
    wanted = set(HWCAPS.get(machine, ()))
    if machine == "x86_64":  # the extensions beyond a micro-architecture level that the x86 check knows
        wanted |= set(EXTRAS.values())
    if machine == "riscv64":
        lengths = [int(f[4:-1]) for f in have if re.fullmatch(r"\+zvl\d+b", f)]
        wanted |= {"+v", *([f"+zvl{max(lengths)}b"] if lengths else [])}
    return sorted(have & wanted) + (_x86_level(have) if machine == "x86_64" else [])


_LLVM_NAMES = {"bmi1": "bmi", "sse4_2": "sse4.2"}  # cpuinfo flag -> LLVM feature, where the names differ


def _x86_level(have: set[str]) -> list[str]:
    """The micro-architecture level that LLVM's features of the CPU reach (`x86-64-v4` for skylake-avx512), which
    the runtime judges: a JSON target naming an AVX-512 CPU recorded only its name, and its artifact was loaded
    on an AVX2 machine, to die there with SIGILL."""
    from frontends.host_cpu import LEVELS

    return next(([level] for level, need in LEVELS if {f"+{_LLVM_NAMES.get(f, f)}" for f in need} <= have), [])


def from_json(text: str) -> TargetSpec:
    try:
        tvm_target = json.loads(text)
    except json.JSONDecodeError as err:
        raise CompileError(f"--target {text!r}: not valid JSON ({err})") from None
    if not isinstance(tvm_target, dict) or "kind" not in tvm_target:
        raise CompileError(f"--target {text!r}: a JSON target must be an object with a \"kind\"")
    if tvm_target.get("mcpu") == "native":  # LLVM logged an 'Error:' and built for generic x86-64 (no AVX2)
        raise CompileError(f"--target {text!r}: TVM's LLVM takes no \"mcpu\": \"native\" (it builds for a generic "
                           "CPU instead); --target x86 builds for this CPU's features, or name the CPU "
                           "(\"mcpu\": \"sapphirerapids\")")
    return from_target(text, tvm_target)
