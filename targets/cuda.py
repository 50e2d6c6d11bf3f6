"""CUDA target: device code compiled by nvcc at build time and embedded in the library
(a fatbin: no NVRTC or nvcc where it runs), host code for this x86-64 CPU.

Building needs nvcc (looked up on PATH, then in /usr/local/cuda/bin) but no GPU: on a
GPU-less host, TVM's CUDA runtime library is loaded against a generated do-nothing
`libcuda.so.1`, so the build can register the CUDA module (DESIGN.md section 4).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

from frontends.errors import CompileError, ToolchainError

from . import x86
from .cross import toolchain_for
from .cuda_pipeline import cuda_pipeline
from .spec import TargetSpec

DEFAULT_ARCH = "sm_80"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "intq"


def cuda_target(arch: str = DEFAULT_ARCH) -> TargetSpec:
    """CUDA for compute capability `arch` (sm_XX), host code for this CPU."""
    if not re.fullmatch(r"sm_\d{2,3}a?", arch):
        raise CompileError(f"--cuda-arch {arch!r}: expected sm_XX, e.g. sm_80 (A100), sm_87 (Orin), sm_90 (H100)")
    return cuda_spec("cuda", {"kind": "cuda", "arch": arch, "host": x86.host_target().tvm_target}, arch, None)


def cuda_spec(name: str, tvm_target, arch: str, host_triple: str | None,
              host_features: tuple[str, ...] = ()) -> TargetSpec:
    """A CUDA spec for any CUDA target (ours, a tag such as nvidia/jetson-orin-nano, JSON); `host_features`:
    those of the CPU code, which the runtime checks where it loads the artifact."""
    return TargetSpec(name, tvm_target, toolchain=toolchain_for(host_triple), device="cuda",
                      features=(arch, *host_features), build_env=_build_env, pipeline=cuda_pipeline)


def _nvcc_dir() -> str:
    found = shutil.which("nvcc")
    if found:
        return str(Path(found).parent)
    if Path("/usr/local/cuda/bin/nvcc").is_file():
        return "/usr/local/cuda/bin"
    raise ToolchainError("the cuda target needs nvcc (the CUDA toolkit): not found on PATH or in "
                       "/usr/local/cuda/bin. Install the CUDA toolkit or put nvcc on PATH.")


def _ensure_cuda_runtime() -> None:
    """Make TVM's CUDA module available to the build, with a stub driver if there is none."""
    import tvm

    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is not None:
        return
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(_stub_driver(lib)), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def _stub_driver(runtime_lib: Path) -> Path:
    """A `libcuda.so.1` whose every entry point returns CUDA_ERROR_NO_DEVICE (100)."""
    out = CACHE / "cuda-stub" / "libcuda.so.1"
    if out.is_file():
        return out
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(runtime_lib)], capture_output=True, text=True,
                        check=True).stdout
    symbols = sorted({m.split("@")[0] for m in re.findall(r"\bcu[A-Z]\w*(?:@\S+)?", nm)})
    body = ["/* generated: no CUDA driver on this build host */"]
    for sym in symbols:
        if sym in ("cuGetErrorName", "cuGetErrorString"):
            body.append(f'int {sym}(int e, const char** p) {{ if (p) *p = "no CUDA driver"; return 0; }}')
        else:
            body.append(f"int {sym}(void) {{ return 100; }}")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".c")
    src.write_text("\n".join(body) + "\n")
    tmp = out.with_name(f".libcuda.{os.getpid()}.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)], check=True)
    os.replace(tmp, out)
    return out


def _compile_fatbin(code: str) -> bytes:
    """nvcc: SASS for the target's arch plus its PTX, which newer GPUs JIT-compile in the
    driver (an sm_80 artifact then also runs on an H100; no NVRTC needed there)."""
    import tvm
    from tvm.support import nvcc

    arch = tvm.target.Target.current().attrs["arch"]
    cc = arch[3:]
    gencode = ["-gencode", f"arch=compute_{cc},code=sm_{cc}", "-gencode", f"arch=compute_{cc},code=compute_{cc}"]
    return nvcc.compile_cuda(code, target_format="fatbin", arch=gencode, compiler="nvcc")


@contextlib.contextmanager
def _build_env():
    nvcc_dir = _nvcc_dir()
    _ensure_cuda_runtime()
    import tvm_ffi
    import tvm.support.nvcc  # noqa: F401  (defines the default callback we replace)

    default = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    saved_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{nvcc_dir}{os.pathsep}{saved_path}"
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile_fatbin, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", default, override=True)
        os.environ["PATH"] = saved_path
