"""The artifact: a directory holding the compiled library, `manifest.json` and the
integer Relax module as text. Written atomically; read back with its hash checked.

    NAME/
      manifest.json     format version, target, tools, inputs/outputs and their
                        quantization, layers, verifier verdict, sha256 of the library
      model.so          the compiled library (Relax VM executable)
      model.seqL.so     with a free length: the library of each smaller bucket L (runtime/buckets.py)
      model.sample.so   x86 with a free batch: the batch-1 library (model.seqL.sample.so per bucket),
                        which calls of one sample run (its kernels take static rows)
      model.relax.py    the integer Relax module (TVMScript), for inspection
      model.cu          GPU targets: the generated device code (CUDA C), for inspection;
                        the library embeds it compiled (fatbin)
      tail.onnx         with --allow-float, what no static compile takes (a detector's NMS and
                        what follows it), run by onnxruntime on the library's outputs
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from frontends.errors import ArtifactError, CompileError

from .cli import raise_if_interrupted

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
RELAX_TEXT = "model.relax.py"
DEVICE_TEXT = "model.cu"
TAIL = "tail.onnx"
REST = "rest.artifact"  # the part compiled after the tail's first nodes (frontends/onnx_tail.py)


def load_library(path: Path, sha: str, load: Callable[[str], object]):
    """`load(name)` of the library at `path` under a name unique to its content, for dlopen: the
    loader hands back the library it already holds under the same path name, so an artifact
    rebuilt in place and loaded again in the same process would run its old code with its new
    manifest (the scales of one model on the kernels of another). The name is a hard link (a copy
    across file systems) in a folder of its own, removed as soon as the library is loaded: a
    process killed later (a deployment watchdog) leaves nothing behind; one killed while loading leaves the
    folder, which the next load removes (`_remove_orphans`). (Loading the same file again is the same
    inode, which the loader recognizes and hands back.)"""
    _remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=f"intq-lib-{os.getpid()}-"))
    try:
        target = folder / f"{sha[:32]}{path.suffix}"
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        return load(str(target))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans() -> None:
    """Remove the folders of `load_library` whose process died while loading (a pool terminated while its
    workers loaded a model: SIGTERM runs no `finally`, and each left the library's link, or its copy in a
    tmpfs, 38 MB for MiniLM): the process id is in the folder's name."""
    for folder in Path(tempfile.gettempdir()).glob("intq-lib-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_destination(dest: str | os.PathLike) -> Path:
    """`dest` as a Path, after checking that an artifact can be written there (also checked before a
    compile starts, so that a mistyped folder costs no calibration)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise CompileError(f"{dest}: the output directory {dest.parent} does not exist")
    if dest.exists() and not (dest / MANIFEST).is_file():
        raise CompileError(f"{dest}: exists and is not an artifact; refusing to overwrite it")
    check_writable(dest, CompileError)
    return dest


def check_writable(dest: Path, error: type[CompileError]) -> None:
    """`error` unless a file can be made in `dest`'s folder: tried, since root passes every permission check
    (os.access) and a read-only mount does not show in the mode bits."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{dest.name}.check-", dir=dest.parent))
    except OSError as err:
        raise error(f"{dest}: cannot write in the output directory {dest.parent} ({err.strerror or err})") from None


def write_artifact(dest: str | os.PathLike, fill: Callable[[Path], dict]) -> Path:
    """Create the artifact at `dest` atomically.

    `fill(tmpdir)` writes the library and texts into `tmpdir` and returns the manifest;
    the library hash and format version are added here. If anything fails, nothing is
    left at `dest` (an existing artifact there stays untouched).
    """
    dest = check_destination(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; an artifact is an ordinary directory
    try:
        manifest = fill(tmp)
        manifest = {"format_version": FORMAT_VERSION, **manifest,  # library None: onnxruntime runs it all
                    "library": None if "library" in manifest and manifest["library"] is None else
                    {"file": LIBRARY, "sha256": sha256(tmp / LIBRARY), **manifest.get("library", {})}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        raise_if_interrupted()  # never an artifact from a compile the user stopped
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _move_into_place(tmp: Path, dest: Path, attempts: int = 50) -> None:
    """Rename `tmp` to `dest`, moving an artifact there aside first. Another process writing the same
    artifact may put one there or move it away in between (two compiles into one folder: one failed with
    'Directory not empty' and left the moved-aside copy): the last one to finish wins, whole."""
    for attempt in range(attempts):
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        try:
            if dest.exists():
                os.rename(dest, old / "artifact")
            os.rename(tmp, dest)
            return
        except OSError as err:  # ENOENT: moved away by the other; EEXIST / ENOTEMPTY: put there by it
            if err.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY) or attempt == attempts - 1:
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: str | os.PathLike, check_library: bool = True) -> dict:
    """The manifest of the artifact at `path`, after checking its format and library hash."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"{path}: not an artifact (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path / MANIFEST}: corrupted manifest ({err})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {version!r}; this runtime reads version "
                            f"{FORMAT_VERSION}. Recompile the model with this version.")
    _check_fields(path, manifest)
    if check_library:
        libraries = [*([manifest["library"]] if manifest["library"] else []),
                     *(manifest.get("buckets") or {}).get("libraries", {}).values()]
        libraries += [lib["sample"] for lib in libraries if "sample" in lib]  # the batch-1 libraries
        libraries += [manifest["tail"]] if manifest.get("tail") else []
        libraries += [manifest["boundary_library"]] if manifest.get("boundary_library") else []
        for library in libraries:
            lib = path / library["file"]
            if not lib.is_file():
                raise ArtifactError(f"{path}: library {lib.name} is missing")
            if sha256(lib) != library["sha256"]:
                raise ArtifactError(f"{lib}: sha256 does not match the manifest; the artifact is corrupted or was "
                                    "modified. Recompile it.")
        for name, digest in ((manifest.get("executor") or {}).get("sha256") or {}).items():  # a plan's files
            file = path / name
            if not file.is_file():
                raise ArtifactError(f"{path}: {name}, which its executor reads, is missing")
            if sha256(file) != digest:
                raise ArtifactError(f"{file}: sha256 does not match the manifest; the artifact is corrupted or was "
                                    "modified. Recompile it.")
    return manifest


# the fields every reader of a manifest takes for granted, and what each entry of a list must hold
_FIELDS = {"target": (dict, ("arch", "name")), "library": ((dict, type(None)), ("file", "sha256")),
           "inputs": (list, ("name", "shape", "dtype", "quant")), "outputs": (list, ("name", "shape", "quant"))}


def _check_fields(path: Path, manifest: dict) -> None:
    """ArtifactError naming the first field the manifest lacks (a KeyError deep in the runtime before)."""
    for field, (kinds, keys) in _FIELDS.items():
        value = manifest.get(field, KeyError)
        entries = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
        bad = (f"{field!r}" if not isinstance(value, kinds) else
               next((f"{field}: {key!r}" for entry in entries for key in keys
                     if not isinstance(entry, dict) or key not in entry), None))
        if bad:
            raise ArtifactError(f"{path / MANIFEST}: lacks {bad} (or it is malformed); the artifact was modified or "
                                "written by another tool. Recompile it.")


def batch_axes(manifest: dict) -> list[int]:
    """Each output's batch axis: where its shape names the inputs' batch in a per-sample artifact
    (a batch-1 module run once per sample), else 0."""
    if manifest.get("batch") != "per-sample":
        return [0] * len(manifest["outputs"])
    name = next(i["shape"][0] for i in manifest["inputs"] if i["shape"] and isinstance(i["shape"][0], str))
    return [o["shape"].index(name) for o in manifest["outputs"]]
