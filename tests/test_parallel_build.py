"""targets/parallel_build.py: a module's kernels split over threads give the library (and the
in-process executable) that `tvm.compile` gives, bit for bit, on x86 and on a cross target."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te

from targets import get_target, parallel_build

KERNELS = 13  # distinct kernels: with 3 jobs, the first one and 3 parts of 4


def _module() -> tvm.IRModule:
    """KERNELS distinct integer kernels side by side (a chain would fuse into one)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 37), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            ys = [bb.emit_te(lambda t, i=i: te.compute((37, 4), lambda a, b: (t[b, a] * (i + 3)) >> (i % 5) ^ i,
                                                       name=f"k{i}"), x, primfunc_name_hint=f"kernel{i:02d}")
                  for i in range(KERNELS)]
            out = bb.emit_output(relax.Tuple(ys))
        bb.emit_func_output(out)
    return bb.get()


def _run(executable, x: np.ndarray) -> np.ndarray:
    return np.stack([y.numpy() for y in relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))])


@pytest.fixture
def three_jobs(monkeypatch):
    monkeypatch.setattr(parallel_build, "jobs", lambda: 3)


def test_split_build_equals_tvm_compile(tmp_path, three_jobs):
    spec = get_target("x86")
    target = spec.target()
    x = np.random.default_rng(0).integers(-2 ** 20, 2 ** 20, size=(4, 37)).astype("int32")
    expected = _run(tvm.compile(_module(), target=target, relax_pipeline=spec.relax_pipeline(target)), x)

    in_process = parallel_build.executable(_module(), target, spec.relax_pipeline(target))
    assert len(in_process.mod.imports[0].imports) == 3  # the first kernel's module imports the 3 parts
    np.testing.assert_array_equal(_run(in_process, x), expected)

    parallel_build.export(_module(), target, spec.relax_pipeline(target), tmp_path / "m.so")
    np.testing.assert_array_equal(_run(tvm.runtime.load_module(str(tmp_path / "m.so")), x), expected)


def test_kernels_only_module_for_a_cross_target(tmp_path, three_jobs):
    """A module of kernels only (what a plan ships), linked for riscv64 from split objects."""
    from frontends import ToolchainError
    from targets.cross import check_toolchain

    spec = get_target("riscv")
    try:
        check_toolchain(spec.toolchain, spec.name)
    except ToolchainError as err:
        pytest.skip(str(err))
    target = spec.target()
    with target:
        lowered = relax.get_pipeline("default")(_module())
    kernels = tvm.IRModule({gv: f.with_attr("global_symbol", gv.name_hint)
                            for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)})
    with spec.build_context():
        lib = parallel_build.export(kernels, target, None, tmp_path / "k.so", **spec.export_kwargs())
    assert len(lib.imports) == 3
    symbols = (tmp_path / "k.so").read_bytes()
    assert all(f"kernel{i:02d}".encode() in symbols for i in range(KERNELS))
