"""Compile a module's kernels on every CPU: TVM's LLVM codegen runs one module on one thread.

    export(mod, target, pipeline, path, **export_kwargs)   # tvm.compile + export_library
    executable(mod, target, pipeline)                       # tvm.compile, ready to run in process

`tvm.compile` lowers every PrimFunc into one LLVM module, which LLVM then optimizes and emits
on one thread (EfficientNet-Lite0's integer model: 6 s to build, 9 s to write the object, of a
19 s compile on a 2-core Zen 1). The kernels are independent, so here they are split into one
LLVM module per CPU and each is built in a thread of its own (TVM's calls release the GIL):

- for a library, each part writes its object file in its thread and comes back as a static
  library, which `export_library` links as it is; one small part stays a plain LLVM module, from
  which export takes the target triple and packs the VM's constants as LLVM;
- in process (calibration's float model), each part is JIT-compiled in its thread.

The parts are imported into the first one, where the VM finds every kernel by name, as in one
module: the code is the same, and so are the results (bit for bit, tested). Targets with device
code (CUDA), one CPU, or few kernels take `tvm.compile` as it is.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import tvm
from tvm import relax

MIN_KERNELS_PER_PART = 4  # below this, a part's fixed cost (an LLVM context, a file) outweighs the split


def jobs() -> int:
    """Threads to compile with: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def export(mod: tvm.IRModule, target: tvm.target.Target, pipeline, path: str | os.PathLike, **export_kwargs):
    """`tvm.compile(mod, target, relax_pipeline=pipeline).export_library(path, **export_kwargs)`,
    the kernels built and written on every CPU; returns the executable (or the kernels' library)."""
    with tempfile.TemporaryDirectory(prefix="intq-objects-") as tmp:
        def to_object(index: int, lib, part: tvm.IRModule):
            obj = str(Path(tmp) / f"part{index}.o")
            lib.write_to_file(obj)
            return tvm.runtime.load_static_library(obj, [gv.name_hint for gv in part.functions])

        built = _build(mod, target, pipeline, to_object)
        built.export_library(str(path), **export_kwargs)
    return built


def executable(mod: tvm.IRModule, target: tvm.target.Target, pipeline):
    """`tvm.compile(mod, target, relax_pipeline=pipeline)`, every kernel JIT-compiled already, on
    every CPU."""
    def jit(_index: int, lib, part: tvm.IRModule):
        lib.get_function(next(iter(part.functions)).name_hint)  # compiles the whole module
        return lib

    return _build(mod, target, pipeline, jit)


def _build(mod: tvm.IRModule, target: tvm.target.Target, pipeline, finish):
    """The executable (or, for a module of kernels only, the library) of `mod`; `finish(i, lib, part)`
    runs in part i's thread and returns what is linked (parts 1.. only; part 0 stays LLVM)."""
    from tvm.relax.vm_build import _ffi_api, _filter_tir, _vmcodegen

    from . import tir_pipeline

    tir = tir_pipeline.register() if target.kind.name == "llvm" else "default"

    def plain():
        return tvm.compile(mod, target=target, relax_pipeline=pipeline, tir_pipeline=tir)

    if target.kind.name != "llvm" or jobs() == 1 or _external(mod):
        return plain()
    relax_funcs = any(isinstance(f, relax.Function) for f in mod.functions.values())
    builder = None
    if relax_funcs:
        with target:
            mod = relax.get_pipeline(pipeline)(mod) if isinstance(pipeline, str) else pipeline(mod)
        if _external(mod):
            return plain()
        builder = relax.ExecBuilder()
        mod = _vmcodegen(builder, mod, "bytecode")
        kernels = _filter_tir(mod)
    else:
        kernels = mod
    items = sorted(kernels.functions.items(), key=lambda kv: kv[0].name_hint) if kernels is not None else []
    count = min(jobs(), len(items) // MIN_KERNELS_PER_PART)

    def link(lib):
        return relax.VMExecutable(_ffi_api.VMLink(builder, target, lib, [], {})) if relax_funcs else lib

    if count < 2:
        return link(tvm.tirx.build(kernels, target=target, pipeline=tir) if kernels is not None else None)
    first, rest = items[:1], items[1:]  # sorted names: like kernels spread over the parts
    parts = [tvm.IRModule(dict(first), attrs=kernels.attrs)] + [
        tvm.IRModule(dict(rest[i::count]), attrs=kernels.attrs) for i in range(count)]
    libs, errors = [None] * len(parts), []
    context = tvm.transform.PassContext.current()  # thread-local: the workers enter it again

    def work(index: int) -> None:
        try:
            with context, target:
                lib = tvm.tirx.build(parts[index], target=target, pipeline=tir)
            libs[index] = lib if index == 0 else finish(index, lib, parts[index])
        except Exception as err:  # re-raised in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,), name=f"intq-build-{i}") for i in range(len(parts))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: the parts write into the caller's temporary folder, which must outlive them
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
    lib = libs[0]
    for other in libs[1:]:
        lib.import_module(other)
    return link(lib)


def _external(mod: tvm.IRModule) -> bool:
    """Whether `mod` carries external modules or constants (BYOC) that `relax.build` would link."""
    attrs = mod.attrs
    return attrs is not None and any(k in attrs for k in ("external_mods", "const_name_to_constant"))
