"""Per-layer latency table for mixed precision: each quantizable layer (conv2d / matmul with
its shapes, as the lowering records it in `ctx.layers`) compiled alone at each bit-width
for the chosen target and timed on the device (locally with TVM's time evaluator, or on a
board through `runtime.remote`).

    table = latency_table(rows, get_target("x86"))              # {binding name: {8: ms, 4: ms}}

What is timed: the layer's kernel alone (int8/uint8 input -> int32 accumulator, random
weights of the right range; 4-bit layers with their packed weights), not the fused
requantization or the other ops. All missing (workload, bits) pairs are compiled into one
Relax module (one function each), so a table costs one build. Results are cached as JSON
under `~/.cache/intq/latency/`, one file per entry, keyed by the target JSON, the device
(local or the RPC address / key), the thread count, the workload and the bits.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from frontends.errors import CompileError
from targets import parallel_build

CACHE_DIR = Path.home() / ".cache" / "intq" / "latency"
CACHE_VERSION = 5  # bumped when kernels change speed (2: CPU schedules for 4-bit kernels; 3: x86 4-bit
# dot-product kernels, targets/vnni_int4.py; 4: x86 4-bit spatial convs on the taps kernels, targets/int4_taps.py;
# 5: 4-bit pointwise convs and many-row matmuls on AMX tiles)


@dataclass(frozen=True)
class Workload:
    """One layer's kernel: its op, input and weight shapes, and the conv geometry."""

    op: str  # "conv2d" or "matmul"
    input_shape: tuple[int, ...]
    input_dtype: str
    weight_shape: tuple[int, ...]
    strides: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @classmethod
    def from_row(cls, row: Mapping) -> Workload:
        """From a `ctx.layers` row (the manifest's `quantization.layers`)."""
        tup = lambda key: tuple(int(v) for v in row.get(key, ()))
        return cls(row["op"], tup("input_shape"), row["input_dtype"], tup("shape"), tup("strides"), tup("padding"),
                   tup("dilation"), int(row.get("groups", 1)))


class _ConvAttrs:
    def __init__(self, w: Workload):
        self.strides, self.padding, self.dilation, self.groups = w.strides, w.padding, w.dilation, w.groups
        self.data_layout, self.kernel_layout, self.out_layout = "NCHW", "OIHW", "NCHW"


def _kernel_function(bb, name: str, w: Workload, bits: int, rng: np.random.Generator) -> None:
    """Add `name(x) -> int32 accumulator` for workload `w` at `bits` to `bb`."""
    from tvm import relax

    from passes.lowering import emit, int4

    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    w_q = rng.integers(lo, hi + 1, w.weight_shape).astype(np.int8)
    x = relax.Var("x", relax.TensorType(list(w.input_shape), w.input_dtype))
    with bb.function(name, [x]):
        with bb.dataflow():
            if w.op == "conv2d":
                expr = int4.conv2d_int4(bb, x, w_q, _ConvAttrs(w)) if bits == 4 else \
                    emit.conv2d_acc(x, w_q, _ConvAttrs(w))
            else:
                expr = int4.matmul_int4(bb, x, w_q) if bits == 4 else emit.matmul_acc(x, w_q)
            out = bb.emit_output(expr)
        bb.emit_func_output(out)


def _cache_key(spec, where: str, threads: int | None, workload: Workload, bits: int) -> str:
    data = {"target": spec.tvm_target, "features": list(spec.features), "where": where, "threads": threads,
            "workload": asdict(workload), "bits": bits, "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()


def _measure(spec, jobs: list[tuple[str, Workload, int]], session, threads: int | None, repeat: int,
             progress: bool) -> dict[str, float]:
    """{function name: median ms} for `jobs` (name, workload, bits), built as one module."""
    import tvm
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    for name, workload, bits in jobs:
        _kernel_function(bb, name, workload, bits, rng)
    target = spec.target()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="intq-latency-") as tmp, spec.build_context(), target:
        library = Path(tmp) / "layers.so"
        parallel_build.export(bb.get(), target, spec.relax_pipeline(target), library, **spec.export_kwargs())
        if progress:
            print(f"[intq] latency table: built {len(jobs)} kernels in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
        device_type = tvm.runtime.Device._DEVICE_NAME_TO_TYPE[spec.device]
        if session is None:
            if spec.arch != _host_arch():
                raise CompileError(f"a latency table for {spec.name} ({spec.arch}) must be measured on such a "
                                   f"machine: give its RPC server (--latency-rpc HOST:PORT)")
            lib, dev = tvm.runtime.load_module(str(library)), tvm.device(spec.device)
            from .model import config_threads

            config = lambda _mode, count: config_threads(count)  # noqa: E731
        else:
            session.upload(str(library), library.name)
            lib, dev = session.load_module(library.name), session.device(device_type, 0)
            config = session.get_function("runtime.config_threadpool")
        if not dev.exist:
            raise CompileError(f"a latency table for {spec.name} needs a {spec.device} device; none is present")
        if threads:
            config(0, threads)
        vm = VirtualMachine(lib, dev)
        results = {}
        for i, (name, workload, _bits) in enumerate(jobs):
            x = rng.integers(0 if workload.input_dtype == "uint8" else -128, 128, workload.input_shape)
            arg = tvm.runtime.tensor(x.astype(workload.input_dtype), dev)
            vm[name](arg)  # warm-up
            timer = vm.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=5)
            results[name] = float(np.median(timer(arg).results)) * 1e3
            if progress and (i + 1) % 10 == 0:
                print(f"[intq] latency table: timed {i + 1}/{len(jobs)}", file=sys.stderr, flush=True)
    return results


def _host_arch() -> str:
    import platform

    return platform.machine()


def latency_table(rows: Sequence[Mapping], spec, bits: Sequence[int] = (4, 8), session=None,
                  where: str = "local", threads: int | None = None, repeat: int = 10,
                  cache_dir: str | Path | None = CACHE_DIR, progress: bool = True) -> dict[str, dict[int, float]]:
    """{layer name: {bits: median ms}} for the `ctx.layers` rows `rows` on target `spec`.

    `session` (from `runtime.remote.connect`) times on a board; `where` names it in the
    cache key (e.g. the RPC address or tracker key); `threads` sets the runtime's threads."""
    if session is None and where != "local":
        raise CompileError("latency_table: `where` names a remote device, but no RPC session was given")
    cache = Path(cache_dir) if cache_dir is not None else None
    table: dict[str, dict[int, float]] = {}
    missing: dict[str, tuple[Workload, int, Path | None]] = {}
    keys: dict[tuple[Workload, int], str] = {}
    for row in rows:
        workload = Workload.from_row(row)
        table[row["name"]] = {}
        for b in bits:
            key = _cache_key(spec, where, threads, workload, b)
            path = cache / f"{key}.json" if cache is not None else None
            if path is not None and path.is_file():
                table[row["name"]][b] = json.loads(path.read_text())["ms"]
            elif (workload, b) not in keys:
                keys[(workload, b)] = f"k{len(keys)}_b{b}"
                missing[keys[(workload, b)]] = (workload, b, path)
    if missing:
        if progress:
            print(f"[intq] latency table: measuring {len(missing)} kernel(s) on {where} "
                  f"({len(rows) * len(bits) - len(missing)} cached or shared)", file=sys.stderr, flush=True)
        measured = _measure(spec, [(n, w, b) for n, (w, b, _) in missing.items()], session, threads, repeat,
                            progress)
        for name, (workload, b, path) in missing.items():
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"ms": measured[name], "bits": b, "workload": asdict(workload),
                                           "target": spec.name, "where": where, "threads": threads}))
                tmp.replace(path)
        for row in rows:
            workload = Workload.from_row(row)
            for b in bits:
                if b not in table[row["name"]]:
                    table[row["name"]][b] = measured[keys[(workload, b)]]
    return table
