"""Plan form of an artifact, for boards without a TVM runtime (armv7, riscv64: no wheels).

The integer module is legalized, fused and scheduled as for the Relax VM, then flattened into what a
40-line C loop can run: the kernels (one shared library exported through the tvm-ffi C
ABI), a plan listing every buffer and every kernel call in order, and the constants.

    plan.txt       buffers <n>
                   <id> <dlpack code> <bits> <ndim> <dims...> <weights byte offset | -1>
                   steps <m>
                   <kernel> <nargs> <buffer ids...>
                   inputs <k> <ids...>
                   outputs <l> <ids...>
    weights.bin    the constants, each 64-byte aligned
    kernels.so     the kernels; `__tvm_ffi_<kernel>` symbols
    intq_exec      the executor (runtime/executor/intq_exec.c) built for the board
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from frontends.errors import ArtifactError, CompileError, InputError

_DL_CODE = {"int": 0, "uint": 1, "float": 2, "bool": 6}  # DLPack type codes (kDLBool = 6)
_NUMPY = {0: "i", 1: "u", 2: "f"}
EXECUTOR_SOURCE = Path(__file__).parent / "executor" / "intq_exec.c"
FILES = {"plan": "plan.txt", "weights": "weights.bin", "kernels": "kernels.so", "executor": "intq_exec"}


def _dtype(dtype: str) -> tuple[int, int]:
    if dtype == "bool":
        return _DL_CODE["bool"], 8
    base = dtype.rstrip("0123456789")
    return _DL_CODE[base], int(dtype[len(base):])


def export_plan(int_mod, spec, out_dir: Path, executor: bool = True) -> dict:
    """Write plan.txt, weights.bin, kernels.so and (with `executor`) intq_exec for `spec` into `out_dir`."""
    import tvm
    from tvm import relax

    from targets import parallel_build
    from targets.cpu_pipeline import cpu_lowering_passes

    out_dir.mkdir(parents=True, exist_ok=True)
    target = spec.target()
    with target:
        lowered = tvm.transform.Sequential(cpu_lowering_passes(target, merge_steps=False))(int_mod)
    buffers, steps, weights = [], [], bytearray()
    ids: dict = {}

    def buffer(ty, data: np.ndarray | None = None) -> int:
        offset = -1
        if data is not None:
            weights.extend(b"\0" * (-len(weights) % 64))
            offset = len(weights)
            weights.extend(np.ascontiguousarray(data).tobytes())
        code, bits = _dtype(str(ty.dtype))
        buffers.append((code, bits, [int(d) for d in ty.shape], offset))
        return len(buffers) - 1

    def ref(expr) -> int:
        if isinstance(expr, relax.Var):
            return ids[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return buffer(expr.ty, expr.value.numpy())
        raise CompileError(f"plan export: unsupported argument {type(expr).__name__}")

    func = lowered["main"]
    for p in func.params:
        ids[p] = buffer(p.ty)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for block in func.body.blocks:
        for b in block.bindings:
            value = b.value
            if isinstance(value, relax.Call) and value.op == call_tir:
                args = [ref(a) for a in value.args[1].fields]
                if not isinstance(b.var.ty, relax.TensorType):
                    raise CompileError("plan export: kernels with several outputs are not supported")
                ids[b.var] = buffer(b.var.ty)
                steps.append((value.args[0].name_hint, args + [ids[b.var]]))
            elif isinstance(value, (relax.Var, relax.Tuple)):
                ids[b.var] = ref(value) if isinstance(value, relax.Var) else [ref(f) for f in value.fields]
            elif isinstance(value, relax.TupleGetItem):
                ids[b.var] = ids[value.tuple_value][value.index]
            else:
                raise CompileError(f"plan export: unsupported binding {b.var.name} = {type(value).__name__}")
    outputs = ids[func.body.body] if isinstance(func.body.body, relax.Var) else [ref(f) for f in func.body.body.fields]
    outputs = outputs if isinstance(outputs, list) else [outputs]
    lines = [f"buffers {len(buffers)}"]
    lines += [f"{i} {c} {bits} {len(shape)} {' '.join(map(str, shape))} {off}".replace("  ", " ")
              for i, (c, bits, shape, off) in enumerate(buffers)]
    lines += [f"steps {len(steps)}"] + [f"{name} {len(args)} {' '.join(map(str, args))}" for name, args in steps]
    lines += [f"inputs {len(func.params)} {' '.join(str(ids[p]) for p in func.params)}",
              f"outputs {len(outputs)} {' '.join(map(str, outputs))}"]
    (out_dir / FILES["plan"]).write_text("\n".join(lines) + "\n")
    (out_dir / FILES["weights"]).write_bytes(bytes(weights))
    kernels = tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint)
                            for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)})
    with spec.build_context():
        parallel_build.export(kernels, target, None, out_dir / FILES["kernels"], **spec.export_kwargs())
    if not executor:
        return {k: v for k, v in FILES.items() if k != "executor"}
    _build_executor(spec, out_dir / FILES["executor"])
    return dict(FILES)


def _build_executor(spec, dest: Path) -> None:
    import tvm_ffi

    include = Path(tvm_ffi.__file__).parent / "include"
    cc = spec.toolchain.compiler or "gcc"
    length = vector_length(spec.features)  # the executor refuses a CPU with shorter vectors
    cmd = [cc, "-O2", "-rdynamic", f"-I{include}", *([f"-DINTQ_MIN_VLEN={length}"] if length else []),
           str(EXECUTOR_SOURCE), "-o", str(dest), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompileError(f"building the plan executor with {cc} failed:\n{done.stderr[-2000:]}")


def _read_plan(path: Path):
    tokens = path.read_text().split()
    pos = 2
    buffers = []
    for _ in range(int(tokens[1])):
        code, bits, ndim = (int(t) for t in tokens[pos + 1:pos + 4])
        shape = [int(t) for t in tokens[pos + 4:pos + 4 + ndim]]
        buffers.append((np.dtype(bool) if code == _DL_CODE["bool"] else np.dtype(f"{_NUMPY[code]}{bits // 8}"), shape))
        pos += 5 + ndim
    nsteps = int(tokens[pos + 1])
    pos += 2
    for _ in range(nsteps):
        pos += 2 + int(tokens[pos + 1])
    nin = int(tokens[pos + 1])
    inputs = [int(t) for t in tokens[pos + 2:pos + 2 + nin]]
    pos += 2 + nin
    outputs = [int(t) for t in tokens[pos + 2:pos + 2 + int(tokens[pos + 1])]]
    return buffers, inputs, outputs


def vector_length(features) -> int | None:
    """The vector register length in bits that a RISC-V artifact's kernels assume (its `+zvl<N>b` feature, at
    least 128 with `+v`: RVV 1.0's minimum), None without the vector unit."""
    if "+v" not in features:
        return None
    return max([128] + [int(f[4:-1]) for f in features if f.startswith("+zvl") and f[4:-1].isdigit()])


def qemu_prefix(arch: str, vector: bool | int = True) -> tuple[str, ...]:
    """The qemu-user command prefix that runs a plan executor built for `arch` ("riscv64", "armv7l")
    on another machine, with Debian's cross sysroots; riscv64 with an RVV 1.0 CPU unless `vector` is False
    (an int: its vector length in bits, 128 for True)."""
    if arch == "riscv64":
        vlen = 128 if vector is True else int(vector)
        cpu = f"rv64,v=true,vlen={vlen},elen=64,vext_spec=v1.0" if vector else "rv64,v=false"
        return ("qemu-riscv64", "-cpu", cpu, "-L", "/usr/riscv64-linux-gnu")
    if arch == "armv7l":
        return ("qemu-arm", "-L", "/usr/arm-linux-gnueabihf")
    raise ValueError(f"no qemu prefix for {arch!r}")


def emulator(manifest: dict) -> tuple[str, ...]:
    """`qemu_prefix` for this plan artifact (its vector unit as its features say), after checking that
    qemu-user is installed (`targets/install_toolchains.sh`): what `--emulate` runs it with."""
    import shutil

    arch = manifest["target"]["arch"]
    if arch not in ("riscv64", "armv7l"):
        raise InputError(f"--emulate runs armv7l and riscv64 artifacts (their plan executor) under qemu-user; this "
                         f"one is built for {arch}")
    launcher = qemu_prefix(arch, vector_length(manifest["target"].get("features", [])) or False)
    if shutil.which(launcher[0]) is None:
        raise InputError(f"--emulate needs {launcher[0]} (Debian's qemu-user: bash targets/install_toolchains.sh)")
    return launcher


def run_plan(artifact, qinputs: list[np.ndarray], launcher: tuple[str, ...] = (), timeout: float = 900,
             manifest: dict | None = None, timed: tuple[int, int] | None = None):
    """Run the artifact's plan with its `intq_exec` (prefixed by `launcher`, e.g. a qemu
    command line) on integer inputs; returns the integer outputs. A plan for batch 1 takes any
    batch (the same for every input): intq_exec runs it per sample, outputs concatenated on axis 0.
    With a free length, the inputs run in the smallest bucket's plan that holds them, padded and
    cut back as `runtime.buckets` says (the same as the Relax VM runtime). With `timed` (N, W), the
    inputs (every sample) also run W + N more times and (outputs, the N runs' milliseconds) is returned."""
    import tempfile

    from .artifact import batch_axes, read_manifest
    from .buckets import Buckets

    artifact = Path(artifact)
    manifest = manifest or read_manifest(artifact)
    buckets, folder, length = Buckets.from_manifest(manifest), artifact, None
    if buckets is not None:
        length = buckets.length(qinputs)
        size = buckets.choose(length)
        if size is None:
            raise InputError(f"{buckets.dim} = {length}: this plan runs {buckets.dim} in {buckets.sizes} only")
        qinputs = buckets.pad(qinputs, size)
        if size != buckets.sizes[-1]:
            folder = artifact / plan_folder(buckets.dim, size)
    executable = artifact / FILES["executor"]
    if not os.access(executable, os.X_OK):  # it ran as "exit code 1" and nothing more under qemu
        raise ArtifactError(f"{executable}: not executable: the copy dropped its mode bits (a FAT stick, an archive "
                            f"or copy that keeps no permissions); chmod +x '{executable}'")
    buffers, inputs, outputs = _read_plan(folder / FILES["plan"])
    with tempfile.TemporaryDirectory() as tmp:
        ins, batches = [], set()
        for i, (q, bid) in enumerate(zip(qinputs, inputs)):
            dtype, shape = buffers[bid]
            batched = shape[:1] == [1] and q.ndim == len(shape) and list(q.shape[1:]) == shape[1:]
            if q.dtype != dtype or (list(q.shape) != shape and not batched):
                raise InputError(f"input {i}: {q.dtype}{list(q.shape)}, the plan expects {dtype}{shape}")
            batches.add(q.shape[0] if batched else 1)
            ins.append(f"{tmp}/in{i}.bin")
            np.ascontiguousarray(q).tofile(ins[-1])
        if len(batches) > 1:
            raise InputError(f"inputs with different batches {sorted(batches)}; a batch must be the same for all")
        outs = [f"{tmp}/out{i}.bin" for i in range(len(outputs))]
        cmd = [*launcher, str(artifact / FILES["executor"]), *(str(folder / FILES[k]) for k in
                                                                ("kernels", "plan", "weights")), *ins, "--", *outs,
               *(("--time", str(timed[0]), str(timed[1])) if timed else ())]
        try:
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
        except OSError as err:  # no such executable, or not for this machine (exec format error)
            raise ArtifactError(f"{artifact}: cannot start its executor {FILES['executor']} ({err.strerror})") from None
        except subprocess.CalledProcessError as err:
            why = ("an illegal instruction (SIGILL): this CPU lacks an instruction set the artifact was built for "
                   f"({' '.join(manifest['target'].get('features', []))})" if err.returncode == -4 else
                   f"signal {-err.returncode}" if err.returncode < 0 else f"exit code {err.returncode}")
            advice = (" Recompile with --target riscv, whose kernels take any vector length." if err.returncode == 3
                      else "")  # intq_exec's check_vector_length
            if err.returncode == -4 and launcher:  # the emulator's CPU, not the board's
                advice = (f" Under {' '.join(launcher[:3])}: the emulated CPU lacks it, or this qemu does not "
                          "implement an extension the target's CPU name implies (Debian 12's qemu 7.2 has no RISC-V "
                          "Zicond, whose czero instructions riscv/licheepi3a builds use); the board itself may run it.")
            raise ArtifactError(f"{artifact}: its executor failed with {why}: "
                                f"{(err.stderr or '').strip()[-500:]}{advice}") from None
        results = [_joined(np.fromfile(o, dtype=buffers[b][0]), buffers[b][1], axis)
                   for o, b, axis in zip(outs, outputs, batch_axes(manifest))]
    results = results if buckets is None else buckets.cut(results, length)
    return (results, np.array([float(t) for t in done.stdout.split()])) if timed else results


def _joined(flat: np.ndarray, shape: list[int], axis: int) -> np.ndarray:
    """intq_exec's outputs of every sample, one after the other, joined along the batch axis."""
    if not shape:
        return flat.reshape(())
    samples = flat.reshape(-1, *shape)
    return np.concatenate(list(samples), axis) if len(samples) > 1 else samples[0]


def plan_folder(dim: str, size: int) -> str:
    """The artifact's folder for the plan of a smaller bucket (the largest is the artifact's own plan)."""
    return f"plan.{dim}{size}"
