"""Optional MetaSchedule tuning of the kernels the default schedules leave alone.

`--tune-trials N` tunes every PrimFunc of the lowered module that no default schedule
covered (depthwise and spatial convs, pooling, ...) with up to N measured trials in all,
on this machine. Records go to a JSON database per target under
`~/.cache/intq/tuning/<target hash>/`, keyed by the kernel's structural hash: a later
compile of any model with the same kernels reuses them without tuning again.

DESIGN.md section 3: MetaSchedule imports `tvm.s_tir.tensor_intrin` in the tuning process and
in every builder worker, and that package registers the intrinsics of every target: 25 s on a
Xeon, 84 s on a Zen 1 (55 s of it CUDA's), three times per tuning run. Tuning only ever measures
on this CPU, so `_host_intrinsics_only` registers just this architecture's intrinsics first and
MetaSchedule's own import then finds the package loaded (the builder keeps a long timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import tvm

CACHE = Path(os.environ.get("INTQ_CACHE", Path.home() / ".cache" / "intq")) / "tuning"


_HOST_INTRINSICS = {"x86_64": "x86", "AMD64": "x86", "aarch64": "arm_cpu", "arm64": "arm_cpu",
                    "riscv64": "riscv_cpu"}


def _host_intrinsics_only() -> None:
    """Register only this machine's tensor intrinsics under `tvm.s_tir.tensor_intrin` (see the
    module docstring); the whole package where the architecture is not one of ours."""
    import importlib
    import importlib.util
    import platform
    import types

    name = "tvm.s_tir.tensor_intrin"
    arch = _HOST_INTRINSICS.get(platform.machine())
    if name in sys.modules or arch is None:
        importlib.import_module(name)
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name)
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules[name] = package
    try:
        importlib.import_module(f"{name}.{arch}")
    except Exception:
        del sys.modules[name]
        importlib.import_module(name)


def _init_worker() -> None:
    _host_intrinsics_only()


def database_dir(target: tvm.target.Target) -> Path:
    key = hashlib.sha256(json.dumps(str(target.export()), sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / key


def _untuned(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: func for gv, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and "tirx.is_scheduled" in func.attrs)}


def _task(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """The workload as MetaSchedule's tasks and queries see it."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def tune_pass(target: tvm.target.Target, trials: int, log=None):
    """A module pass: tune the unscheduled kernels (new ones only), then apply the best
    schedule the database holds for each of them."""
    from tvm.s_tir import meta_schedule as ms

    log = log or (lambda message: print(message, file=sys.stderr))
    # MetaSchedule needs the core count in the target; records are keyed by this target
    target = tvm.target.Target({**{k: v for k, v in target.export().items()}, "num-cores": os.cpu_count() or 1})

    @tvm.transform.module_pass(opt_level=0, name="IntqTuneUnscheduled")
    def tune(mod, _ctx):
        _host_intrinsics_only()
        work = database_dir(target)
        work.mkdir(parents=True, exist_ok=True)
        database = ms.database.JSONDatabase(work_dir=str(work))
        todo = {name: func for name, func in _untuned(mod).items()
                if not database.has_workload(_task(func))}
        if todo and trials > 0:
            log(f"[intq] tuning {len(todo)} kernel(s) with MetaSchedule, {trials} trials in all "
                f"(database {work})")
            ms.tune_tir(tvm.IRModule(todo),
                        target, str(work), max_trials_global=trials,
                        num_trials_per_iter=min(64, max(trials // max(len(todo), 1), 8)),
                        builder=ms.builder.LocalBuilder(timeout_sec=120, initializer=_init_worker),
                        runner=ms.runner.LocalRunner(timeout_sec=60), database=database, cost_model="random",
                        num_tuning_cores=os.cpu_count() or 1)
        applied = 0
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
                continue
            sch = ms.tir_integration.compile_tir(database, func, target)
            if sch is not None:
                mod[gv] = sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                applied += 1
        log(f"[intq] tuned schedules applied to {applied} kernel(s)")
        return mod

    return tune

