"""Run cross-compiled artifacts on this x86-64 machine under qemu-user.

riscv64 and armv7 artifacts carry a plan and the project's own executor (runtime/plan.py):
`plan_launcher(arch)` gives the qemu prefix to run it with `runtime.plan.run_plan`.
For aarch64 the artifact's Relax VM library runs in an emulated Python:

A Debian arm64 sysroot (python3.11, libstdc++) is unpacked from .debs with an isolated apt
state (no chroot, no binfmt, host dpkg untouched) and the official aarch64 apache-tvm /
apache-tvm-ffi / numpy wheels are installed beside it; the project's own runtime then loads
the artifact with TVM_USE_RUNTIME_LIB=1 inside the emulated Python. Everything is cached
under ~/.cache/intq/emulation. Needs qemu-user (targets/install_toolchains.sh).

    python -m benchmarks.emulation ARTIFACT --input x.npz   # prints the outputs' summary
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from runtime.plan import qemu_prefix

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "intq" / "emulation"
REPO = Path(__file__).resolve().parents[1]
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy<2.5", "ml_dtypes", "typing_extensions")
# The RPC server as a board runs it, but in-process: `python -m tvm.exec.rpc_server` starts its
# server in a child Python, which qemu-user cannot exec without binfmt.
_RPC_SERVER = """
import sys, time
from tvm.rpc.server import PopenRPCServerState
PopenRPCServerState("127.0.0.1", int(sys.argv[1]), int(sys.argv[1]) + 1, False, None, "", None)
print("listening", flush=True)
while True:
    time.sleep(3600)
"""
_RUNNER = """
import sys, numpy as np, runtime
model = runtime.load(sys.argv[1])
q = np.load(sys.argv[2])
outs = model.run_integer([q[f"q{i}"] for i in range(len(model.inputs))])
np.savez(sys.argv[3], **{f"y{i}": y for i, y in enumerate(outs)})
"""


def _run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _sysroot(arch: str = "arm64") -> Path:
    root = CACHE / f"sysroot-{arch}"
    if (root / "usr/bin/python3.11").exists():
        return root
    state = CACHE / f"apt-{arch}"
    for sub in ("lists/partial", "cache/archives/partial", "sources"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    shutil.copy("/etc/apt/sources.list.d/debian.sources", state / "sources" / "debian.sources")
    opts = [f"-oAPT::Architecture={arch}", f"-oAPT::Architectures={arch}", f"-oDir::State={state}",
            f"-oDir::State::Lists={state}/lists", f"-oDir::State::status={state}/status", f"-oDir::Cache={state}/cache",
            "-oDir::Etc::SourceList=/dev/null", f"-oDir::Etc::SourceParts={state}/sources", "-oDebug::NoLocking=1",
            "-oAPT::Install-Recommends=0"]
    _run(["apt-get", *opts, "update", "-q"])
    _run(["apt-get", *opts, "install", "-y", "-q", "--download-only", "python3.11", "libstdc++6"])
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    for deb in sorted((state / "cache" / "archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
    for link in ("lib", "bin", "sbin"):  # usrmerge links that maintainer scripts would make
        if not (tmp / link).exists():
            (tmp / link).symlink_to(f"usr/{link}")
    os.replace(tmp, root)
    return root


def _site(platform_tag: str = "manylinux_2_28_aarch64") -> Path:
    site = CACHE / "site-aarch64"
    if (site / "tvm").is_dir():
        return site
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tmp), "--platform", platform_tag,
          "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *WHEELS])
    (tmp / "tvm" / "lib" / "libtvm_compiler.so").unlink(missing_ok=True)  # runtime-only: 250 MB saved
    os.replace(tmp, site)
    return site


plan_launcher = qemu_prefix  # the qemu-user prefix that runs a plan executor here (runtime/plan.py)


class Aarch64Emulator:
    """Runs artifacts in an emulated aarch64 Python; `cpu` picks qemu's CPU model."""

    def __init__(self, cpu: str = "max"):
        if shutil.which("qemu-aarch64") is None:
            raise RuntimeError("qemu-aarch64 not found: apt-get install qemu-user (targets/install_toolchains.sh)")
        CACHE.mkdir(parents=True, exist_ok=True)
        self.sysroot, self.site, self.cpu = _sysroot(), _site(), cpu

    def _env(self) -> dict:
        return {**os.environ, "PYTHONPATH": f"{self.site}{os.pathsep}{REPO}", "TVM_USE_RUNTIME_LIB": "1"}

    def _python(self) -> list[str]:
        return ["qemu-aarch64", "-cpu", self.cpu, "-L", str(self.sysroot), str(self.sysroot / "usr/bin/python3.11")]

    @contextlib.contextmanager
    def rpc_server(self, port: int):
        """A TVM RPC server on 127.0.0.1:`port` inside the emulated aarch64 board."""
        proc = subprocess.Popen([*self._python(), "-c", _RPC_SERVER, str(port)], env=self._env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            if proc.stdout.readline().strip() != "listening":
                raise RuntimeError("the emulated RPC server did not start")
            yield f"127.0.0.1:{port}"
        finally:
            os.killpg(proc.pid, 9)  # the server and the session processes it forked
            proc.wait()

    def run_integer(self, artifact, qinputs: list[np.ndarray], timeout: float = 900) -> list[np.ndarray]:
        """Run the artifact on integer inputs; raises CalledProcessError (e.g. SIGILL) on failure."""
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(f"{tmp}/q.npz", **{f"q{i}": q for i, q in enumerate(qinputs)})
            subprocess.run([*self._python(), "-c", _RUNNER, str(artifact), f"{tmp}/q.npz", f"{tmp}/y.npz"],
                           check=True, capture_output=True, text=True, env=self._env(), timeout=timeout)
            out = np.load(f"{tmp}/y.npz")
            return [out[f"y{i}"] for i in range(len(out.files))]


def main(argv=None) -> int:
    import argparse

    import runtime.artifact

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact")
    p.add_argument("--input", required=True, help=".npz of float inputs (keys: input names)")
    p.add_argument("--cpu", default="max", help="qemu CPU model (cortex-a72 lacks dotprod)")
    args = p.parse_args(argv)
    from runtime.boundary import quantize, scale_array, to_integer

    manifest = runtime.artifact.read_manifest(args.artifact)
    data = np.load(args.input)
    q = [quantize(data[i["name"]], scale_array(i["quant"], data[i["name"]].ndim), i["quant"]["dtype"])
         if i["quant"]["scale"] is not None
         else to_integer(data[i["name"]], i["quant"]["dtype"]) if data[i["name"]].dtype.kind == "f"
         else data[i["name"]] for i in manifest["inputs"]]  # exact integer inputs: ids, masks, float ids
    for spec, y in zip(manifest["outputs"], Aarch64Emulator(args.cpu).run_integer(args.artifact, q)):
        print(f"{spec['name']}: {y.dtype}{list(y.shape)} argmax {int(np.argmax(y))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
