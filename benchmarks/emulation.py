"""Run cross-compiled artifacts on this x86-64 machine under qemu-user.

riscv64 and armv7 artifacts carry a plan and the project's own executor (runtime/plan.py):
`plan_launcher(arch)` gives the qemu prefix to run it with `runtime.plan.run_plan`.
For aarch64 the artifact's Relax VM library runs in an emulated Python:

A Debian arm64 sysroot (python3.11, libstdc++) is unpacked from .debs with an isolated apt
state (no chroot, no binfmt, host dpkg untouched) and the official aarch64 apache-tvm /
apache-tvm-ffi / numpy wheels are installed beside it; the project's own runtime then loads
the artifact with TVM_USE_RUNTIME_LIB=1 inside the emulated Python. Everything is cached
under ~/.cache/intq/emulation. Needs qemu-user (targets/install_toolchains.sh).

    python -m benchmarks.emulation ARTIFACT --input x.npz [-o y.npz]   # each output's line, as runtime.run's
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
# `Model.run` as the board runs it: float inputs quantized, outputs dequantized (a tail run, where onnxruntime
# is installed); a refused input is one `error:` line and exit 2, as the CLIs give it
_FLOAT_RUNNER = """
import sys, numpy as np, runtime
try:
    with np.load(sys.argv[2]) as data:
        outs = runtime.load(sys.argv[1]).run(dict(data))
except runtime.CompileError as err:
    sys.exit(f"error: {err}")
np.savez(sys.argv[3], **{f"y{i}": y for i, y in enumerate(outs.values())}, names=np.array(list(outs)))
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

    def run(self, artifact, inputs: dict[str, np.ndarray], timeout: float = 900) -> dict[str, np.ndarray]:
        """`runtime.load(artifact).run(inputs)` in the emulated board's Python: float outputs by name. A refused
        input raises InputError with the runtime's message; another failure RuntimeError with its last line."""
        from frontends.errors import InputError

        with tempfile.TemporaryDirectory() as tmp:
            np.savez(f"{tmp}/x.npz", **inputs)
            done = subprocess.run([*self._python(), "-c", _FLOAT_RUNNER, str(artifact), f"{tmp}/x.npz", f"{tmp}/y.npz"],
                                  capture_output=True, text=True, env=self._env(), timeout=timeout)
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            if done.returncode == 1 and last.startswith("error: "):
                raise InputError(last.removeprefix("error: "))
            if done.returncode:
                raise RuntimeError(f"the emulated aarch64 run failed: {last}")
            with np.load(f"{tmp}/y.npz") as out:
                return {str(name): out[f"y{i}"] for i, name in enumerate(out["names"])}


def main(argv=None) -> int:
    """Run an aarch64 artifact here under qemu on float inputs and print each output as `runtime.run` does (it
    printed the raw integers' dtype and argmax: `y: int32[1, 10] argmax 6`)."""
    import argparse

    from runtime.cli import guarded, read_inputs, writable_file
    from runtime.run import summary

    p = argparse.ArgumentParser(prog="python -m benchmarks.emulation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", help="an aarch64 artifact (runtime.compile --target arm, or an aarch64 tag)")
    p.add_argument("--input", required=True, metavar="FILE.npz", help="float inputs, one array per input name")
    p.add_argument("-o", "--output", metavar="FILE.npz", help="write the float outputs here")
    p.add_argument("--cpu", default="max", help="qemu CPU model (cortex-a72 lacks dotprod)")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    args = p.parse_args(argv)

    def action():
        from frontends.errors import InputError
        from runtime.artifact import read_manifest

        output = writable_file(args.output) if args.output else None
        arch = read_manifest(args.artifact)["target"]["arch"]
        if arch != "aarch64":
            how = "python -m runtime.run ARTIFACT --input x.npz" + (" --emulate" if arch in ("armv7l", "riscv64")
                                                                    else "")
            raise InputError(f"{args.artifact}: built for {arch}, not aarch64; run it with {how}")
        outputs = Aarch64Emulator(args.cpu).run(args.artifact, read_inputs(args.input))
        if output:
            np.savez(output, **outputs)
        for name, value in outputs.items():
            print(summary(name, value))

    return guarded(action, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
