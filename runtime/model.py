"""Load an artifact and run it: float arrays in, float arrays out.

The runtime quantizes inputs and dequantizes outputs at the graph boundary in NumPy
(`runtime.boundary`), so every target sees the same integers. Needs only numpy and the
TVM runtime (TVM_USE_RUNTIME_LIB=1 works), not the compiler.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
import threading
import time
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np

from frontends.errors import ArtifactError, InputError

from .artifact import batch_axes, load_library, read_manifest
from .boundary import dequantize, grid_edge, quantize, quantize_by, reciprocal, scale_array, to_integer
from .buckets import Buckets


def _let_tvm_use_every_cpu() -> None:
    """TVM sizes each thread's pool once, when the thread first needs it, at half the hardware
    threads on x86 (it assumes two hyperthreads per core) unless TVM_NUM_THREADS is set: on a
    2-CPU machine every kernel ran on one thread whatever `config_threadpool` asked for
    (EfficientNet-Lite0 51 ms at "2 threads", 27 ms with the pool at 2). So the variable is set,
    before any pool exists, to the CPUs this process may use; a user's own value stands."""
    if hasattr(os, "sched_getaffinity"):
        os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


_let_tvm_use_every_cpu()


class Model:
    """A loaded artifact: `.run(inputs)` with float arrays, `.manifest` with its metadata.

    With `remote` (an RPC session, see `runtime.remote.connect`) the library is uploaded to
    the board and runs there; inputs and outputs travel over the session.

    An artifact compiled with a free batch (`--input-shape x:1..32x...`) takes any batch in the
    manifest's range; each sample's integers are those it gets alone. One compiled with a free
    length (`--input-shape ids:1x1..512`) runs each input in the smallest bucket that holds it
    (runtime/buckets.py).

    Safe to share between threads: each calling thread runs its own virtual machine over the
    one loaded library (a VM's registers are its own; a single VM called from two threads
    crashed the process). Calls over one RPC session are serialized: the session is not.

    A batch of at least two samples (free batch) runs sample by sample on `batch_workers` threads
    (default: the CPUs this process may use, or TVM_NUM_THREADS) side by side, each with its share
    of the CPUs as TVM threads (one each when the batch has as many samples as workers): samples in
    parallel instead of every kernel split across threads, so each layer's working set stays one
    sample's. With one worker the samples run one after the other, through the batch-1 library
    where the artifact ships one. Set `batch_in_one_call = True` to run the batch as one call of
    the batch library instead (a CUDA model's default).
    """

    _boundary: dict = {}  # the float boundary's kernels, where the artifact ships them and runs here

    def __init__(self, path: str | os.PathLike, remote=None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.remote = remote
        arch = self.manifest["target"]["arch"]
        if remote is None and arch != platform.machine():
            raise ArtifactError(f"{self.path}: built for {arch} ({self.manifest['target']['name']}); this machine "
                                f"is {platform.machine()}. Copy it to the {arch} board and run it there, or drive the "
                                "board from here over TVM RPC (runtime.bench ARTIFACT --rpc HOST:PORT; in Python "
                                "runtime.load(path, remote=runtime.remote.connect('HOST:PORT')))"
                                + (". Or run it here under qemu-user: python -m benchmarks.emulation ARTIFACT --input "
                                   "x.npz" if arch == "aarch64" else "") + ".")
        if remote is None:
            _check_cpu_features(self.path, self.manifest["target"])
        import tvm
        from tvm.runtime.vm import VirtualMachine  # runtime-only: works without the compiler

        device = self.manifest["target"].get("device", "cpu")
        if device == "cuda" and remote is None:
            _load_cuda_runtime(tvm, self.path)
        self.buckets = Buckets.from_manifest(self.manifest)
        if self.onnxruntime_only and remote is not None:
            raise ArtifactError(f"{self.path}: onnxruntime runs this whole model (nothing was compiled: "
                                "manifest float_nodes); it runs on the machine that loads it, not over RPC")
        libraries = ({} if self.onnxruntime_only else {None: self.manifest["library"]} if self.buckets is None else
                     {int(k): v for k, v in self.manifest["buckets"]["libraries"].items()})
        # (bucket, one sample?) -> library: a free batch on x86 also ships the batch-1 library, whose
        # kernels take static rows, for the calls of one sample (all of them when samples run side by side)
        self._libs = {(key, one): self._load_library(tvm, entry, device) for key, lib in libraries.items()
                      for one, entry in ((False, lib), (True, lib.get("sample"))) if entry is not None}
        self._dev = remote.device(tvm.runtime.Device._DEVICE_NAME_TO_TYPE[device], 0) if remote else tvm.device(device)
        if not self._dev.exist:
            raise ArtifactError(f"{self.path}: built for a {device} device, and the machine running it has none")
        self._new_vm = VirtualMachine
        self._local = threading.local()
        self._rpc_lock = threading.Lock() if remote is not None else None
        for key in self._libs:  # load the constants now: a broken library fails at load, not at the first run
            self._vm(key)
        self._tensor = tvm.runtime.tensor
        # on this machine's CPU, inputs and outputs are shared with NumPy (DLPack) instead of copied:
        # a small model's run spent as long in those copies as in its kernels
        self._shared = device == "cpu" and remote is None
        if self._shared:  # the float boundary's kernels (targets/boundary_kernels.py), where the artifact ships them
            self._boundary = self._boundary_kernels(tvm)
        self._boundary_state()
        self._open_tail()
        # a GPU takes the whole batch in one call; CPUs run samples side by side
        self.batch_workers = _default_workers() if device == "cpu" else 1
        self.batch_in_one_call = device != "cpu"
        self._pool = None  # (size, worker threads for batch samples), started on first use
        self._pool_lock = threading.Lock()
        rest = (self.manifest.get("tail") or {}).get("rest")
        if rest and remote is not None:
            raise ArtifactError(f"{self.path}: part of this model runs in onnxruntime between compiled parts "
                                "(manifest float_nodes), on the machine that loads it, not over RPC")
        # the part compiled after the tail's first nodes: an artifact of its own (frontends/onnx_tail.py)
        self._rest = Model(self.path / rest["folder"]) if rest else None
        _LOADED.add(self)  # for `_after_fork`

    def _open_tail(self) -> None:
        """Open the tail's ONNX file now, hash-checked by `read_manifest`: the session the first run builds reads
        it through this descriptor. It read tail.onnx by its path then, after a deployment had removed the
        folder (onnxruntime's NoSuchFile) or compiled another model into it (its tail on this one's library)."""
        tail = self.manifest.get("tail")
        self._tail_fd = os.open(self.path / tail["file"], os.O_RDONLY) if tail else None
        if self._tail_fd is not None:
            weakref.finalize(self, os.close, self._tail_fd)

    def _boundary_state(self) -> None:
        """What the float boundary (`_quantized`, `_dequantize`) works out once."""
        self._scales: dict = {}  # (output index, rank) -> its scale array, shaped to broadcast
        self._specs = {spec["name"]: spec for spec in self.inputs}
        self._dtypes = {spec["name"]: np.dtype(spec["dtype"]) for spec in self.inputs}
        self._dequantizers: dict = {}  # (output index, rank, dtype) -> how `_dequantize` takes it
        self._checked: set = set()  # input signatures (name, shape, dtype) that `_check_structure` passed
        boundary = self.manifest.get("boundary_library") or {}
        self._chunk = boundary.get("check_chunk")  # see `_new_buffers`
        self._check_sum = boundary.get("check_stat") == "sum"  # see `_quantize_checked`

    def _load_library(self, tvm, library: dict, device: str):
        path = self.path / library["file"]
        try:
            if self.remote is None:
                return load_library(path, library["sha256"], tvm.runtime.load_module)
            name = f"intq-{library['sha256'][:16]}.so"
            self.remote.upload(str(path), name)
            return self.remote.load_module(name)
        except Exception as err:
            need = " (needs an NVIDIA GPU and its driver, libcuda.so.1)" if device == "cuda" else ""
            where = " on the RPC server" if self.remote is not None else ""
            raise ArtifactError(f"{self.path}: cannot load the library {path.name}{where}{need}: "
                                f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}") from None

    def _boundary_kernels(self, tvm) -> dict:
        """{"quantize" / "dequantize": {integer dtype: kernel}} of the artifact's boundary library, or {}."""
        entry = self.manifest.get("boundary_library")
        if not entry:
            return {}
        lib = self._load_library(tvm, entry, "cpu")
        return {way: {dtype: lib[name] for dtype, name in entry[way].items()}
                for way in ("quantize", "quantize_checked", "dequantize", "dequantize_axis") if way in entry}

    def _quantize(self, x, scale, dtype: str) -> np.ndarray:
        """`boundary.quantize`, by the artifact's kernel where it has one for this case (the same integers)."""
        kernel = self._boundary.get("quantize", {}).get(dtype)
        if kernel is None or np.ndim(scale) or not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.size:
            return quantize(x, scale, dtype)
        return _flat_call(kernel, x, float(scale), dtype)

    def _reciprocal(self, scale: np.ndarray) -> np.ndarray:
        """`boundary.reciprocal(scale)` of a memoized `_scale` (worked out on every run it was 5 NumPy calls)."""
        factors = self.__dict__.setdefault("_reciprocals", {})
        factor = factors.get(id(scale))
        if factor is None or factor[0] is not scale:
            factor = factors[id(scale)] = (scale, reciprocal(scale))
        return factor[1]

    def _dequantize(self, index: int, q: np.ndarray) -> np.ndarray:
        """Output `index`'s integers `q` as floats: `boundary.dequantize`, by the artifact's kernel where it has
        one for `q`'s dtype (and, for a scale per channel, one with channels) and `q` has DEQUANTIZE_KERNEL
        elements or more. How is worked out once per output, rank and dtype: every NumPy call on this path
        costs microseconds, cold after the model's run."""
        key = (index, q.ndim, q.dtype)
        way = self._dequantizers.get(key)
        if way is None:
            way = self._dequantizers[key] = self._dequantizer(index, q.ndim, q.dtype)
        scale, kernel, kernel_scale, axis = way
        if kernel is None or q.size < DEQUANTIZE_KERNEL:
            return dequantize(q, scale)
        if axis is None:
            return _flat_call(kernel, q, kernel_scale, "float32")
        if not (q.flags.c_contiguous and q.flags.writeable):
            q = np.require(q, requirements=["C", "W"])
        import tvm_ffi

        out = np.empty(q.shape, np.float32)
        shape = (math.prod(q.shape[:axis]), q.shape[axis], math.prod(q.shape[axis + 1:]))
        kernel(tvm_ffi.from_dlpack(q.reshape(shape)), kernel_scale, tvm_ffi.from_dlpack(out.reshape(shape)))
        return out

    def _dequantizer(self, index: int, rank: int, dtype: np.dtype) -> tuple:
        """(scale as NumPy takes it, kernel or None, scale as the kernel takes it, channel axis or None)."""
        scale = self._scale(index, rank)
        if not np.ndim(scale):
            return scale, self._boundary.get("dequantize", {}).get(dtype.name), float(scale), None
        kernel = self._boundary.get("dequantize_axis", {}).get(dtype.name)
        channels = [d for d, n in enumerate(np.shape(scale)) if n != 1]
        if kernel is None or len(channels) != 1 or np.ndim(scale) != rank:
            return scale, None, None, None
        import tvm_ffi

        flat = np.ascontiguousarray(scale, np.float64).reshape(-1)
        return scale, kernel, tvm_ffi.from_dlpack(flat), channels[0]

    def _vm(self, key=(None, False)):
        """This thread's virtual machine for library `key` (created on its first call)."""
        vms = getattr(self._local, "vms", None)
        if vms is None:
            vms = self._local.vms = {}
        if key not in vms:
            vms[key] = self._new_vm(self._libs[key], self._dev)
        return vms[key]

    def _bucket(self, qinputs: list[np.ndarray]) -> tuple[int | None, int | None, list[np.ndarray]]:
        """(bucket, input length, inputs padded to the bucket); (None, None, inputs) without buckets."""
        if self.buckets is None:
            return None, None, qinputs
        length = self.buckets.length(qinputs)
        size = self.buckets.choose(length)
        if size is None:
            raise InputError(f"{self.buckets.dim} = {length}: this artifact runs {self.buckets.dim} in "
                             f"{self.buckets.sizes} only (padding would change the model's result: it has no attention-mask "
                             "input, or reads the padding despite one); cut or pad the input to one of them, or "
                             "recompile with --buckets")
        return size, length, self.buckets.pad(qinputs, size)

    @property
    def batch_workers(self) -> int:
        """Threads a batch's samples run on side by side (1: one after the other)."""
        return self._batch_workers

    @batch_workers.setter
    def batch_workers(self, count: int) -> None:
        # checked here: 0 raised ZeroDivisionError from inside the next batch's run
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"batch_workers = {count!r}: a number of threads >= 1 (1 runs a batch's samples one "
                             "after the other)")
        self._batch_workers = int(count)

    @property
    def onnxruntime_only(self) -> bool:
        """Nothing compiled: the unsupported nodes read the inputs, and onnxruntime runs the whole model
        (--allow-float; the manifest's `tail`)."""
        return self.manifest["library"] is None

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def output_names(self) -> list[str]:
        """The model's own outputs, in its ONNX order: the keys `run` returns (the compiled part's `outputs`
        also hold the tensors it passes to a tail)."""
        tail = self.manifest.get("tail")
        return list(tail["outputs"]) if tail else [o["name"] for o in self.outputs]

    def _check_mapping(self, inputs) -> None:
        """InputError unless `inputs` maps names to values (a bare array, a list or None raised
        AttributeError from deep inside `run`)."""
        if type(inputs) is not dict and not isinstance(inputs, Mapping):
            raise InputError(f"inputs: expected a dict of input name -> array, e.g. {{{self.inputs[0]['name'] if self.inputs else 'input'!r}: x}} "
                             f"(the model's inputs: {[spec['name'] for spec in self.inputs]}), got "
                             f"{type(inputs).__name__}")

    def __reduce__(self):
        """A model pickles as its artifact's path and loads again where it is unpickled (a process pool's
        task, a spawned process): its library cannot be pickled (TVM printed a warning per function, then
        raised RuntimeError)."""
        if self.remote is not None:
            raise TypeError(f"{self.path}: a model running over an RPC session cannot be pickled; connect and "
                            "load it in the other process")
        return load, (os.path.abspath(self.path), None, getattr(self, "launcher", ()))

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
        """Raise InputError unless `inputs` has exactly the model's names, shapes and dtypes, and finite
        values; the (min, max) of each non-empty float input."""
        self._check_structure(inputs)
        return {name: _extremes(name, value) for name, value in inputs.items()
                if value.dtype.kind == "f" and value.size}

    def _check_structure(self, inputs: dict[str, np.ndarray]) -> None:
        """`check_inputs` but for the values: names, array types, dtypes, shapes and buckets (a signature that
        passed is remembered: a run's checks cost microseconds each, cold after the model's run)."""
        try:
            signature = tuple((k, v.shape, v.dtype) for k, v in inputs.items())
        except AttributeError:  # not an array: judged below
            signature = None
        if signature is not None and signature in self._checked:
            return
        self._check_names_dtypes_shapes(inputs)
        if signature is not None and len(self._checked) < MAX_SIGNATURES:
            self._checked.add(signature)

    def _check_names_dtypes_shapes(self, inputs: dict[str, np.ndarray]) -> None:
        expected = self._specs
        if set(inputs) != set(expected):
            missing, unknown = [k for k in expected if k not in inputs], [k for k in inputs if k not in expected]
            raise InputError(f"inputs {sorted(inputs)} do not match the model's inputs {sorted(expected)}"
                             f"{f'; missing {missing}' if missing else ''}{f'; not inputs of this model {unknown}' if unknown else ''}")
        sizes: dict[str, int] = {}  # free dims (a symbolic batch) seen so far
        for name, value in inputs.items():
            spec = expected[name]
            if not isinstance(value, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array, got {type(value).__name__}")
            if value.dtype != self._dtypes[name]:
                raise InputError(f"input {name!r}: dtype {value.dtype}, expected {spec['dtype']}")
            _check_shape(name, list(value.shape), spec, sizes)
        if self.buckets is not None:
            self._bucket([inputs[i["name"]] for i in self.inputs])

    def quantize_inputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The model's integer inputs for float `inputs` (checked as `check_inputs` does), as new arrays."""
        return self._quantized(inputs, reuse=False)

    def _quantized(self, inputs: dict[str, np.ndarray], reuse: bool) -> list[np.ndarray]:
        """`quantize_inputs`; with `reuse`, into this thread's buffers of the last call (a new 150 KB
        array is new pages from the OS on every call: 0.13 ms of EfficientNet-Lite0's 4.3), which
        the caller must be done with before its next call."""
        self._check_mapping(inputs)
        dtypes = self._dtypes
        inputs = {k: v if type(v) is np.ndarray and v.dtype == dtypes.get(k) else _coerced_input(v, self.inputs, k)
                  for k, v in inputs.items()}
        self._check_structure(inputs)
        out = []
        for k, spec in enumerate(self.inputs):
            name, value = spec["name"], inputs[spec["name"]]
            if spec["quant"]["scale"] is None:  # exact integer inputs (token ids, masks)
                if value.dtype.kind == "f" and value.size:
                    _extremes(name, value)
                if "index_rows" in spec and value.size:
                    _check_indices(spec, value)
                value = _exact(spec, value)
                if reuse and value.dtype.kind in "iub":  # into the kept, aligned VM argument (no copy per run)
                    kept = self._buffers(k, value.shape, value.dtype.name)[0]
                    np.copyto(kept, value)
                    value = kept
                out.append(value)
                continue
            scale = self._scale(k, value.ndim, "inputs")
            q, extremes, grid_peak = self._quantize_checked(k, value, scale, spec, reuse)
            self._warn_saturating(spec, value, scale, extremes, grid_peak)
            self._warn_beyond_features(spec, value, extremes)
            out.append(q)
        return out

    def _quantize_checked(self, index: int, x: np.ndarray, scale, spec: dict, reuse: bool):
        """(`x` quantized, its (min, max) or None, its largest |x / scale| or None): in one pass by the
        artifact's checked kernel where it applies (it also flags NaN / inf values, refused), else NumPy's
        check and `_quantize`."""
        dtype = spec["quant"]["dtype"]
        kernel = self._boundary.get("quantize_checked", {}).get(dtype)
        if kernel is None or np.ndim(scale) or x.dtype != np.float32 or not x.size or "sentinel" in spec["quant"]:
            extremes = _extremes(spec["name"], x) if x.dtype.kind == "f" and x.size else None
            if extremes is not None and np.ndim(scale) and x.dtype == np.float32 and "sentinel" not in spec["quant"]:
                out = self._buffers(index, x.shape, dtype)[0] if reuse else None  # the VM's argument kept too
                q, grid_peak = quantize_by(x, self._reciprocal(scale), dtype, peak=True, out=out)
                return q, extremes, grid_peak
            return self._quantize(x, scale, dtype), extremes, None
        import tvm_ffi

        q, stats, q_arg, stats_arg = (self._buffers(index, x.shape, dtype) if reuse
                                      else _new_buffers(x.shape, dtype, self._chunk))
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.require(x, requirements=["C", "W"])  # DLPack takes neither a view nor a read-only array
        kernel(tvm_ffi.from_dlpack(x.reshape(-1)), float(scale), q_arg, stats_arg)
        low, high, flag = stats[:3].tolist()  # the whole tensor's, reduced by the kernel
        if self._check_sum:  # x's sum: not finite where x holds NaN / inf (or only sums past float32's range)
            flag = 0 if math.isfinite(flag) else x.size - int(np.isfinite(x).sum())
        if flag:  # the count of NaN / inf values (artifacts before session 43 count them in the kernel)
            raise InputError(_not_finite(spec["name"], int(flag), x.size))
        return q, (low, high), None

    def _buffers(self, index: int, shape: tuple, dtype: str) -> tuple:
        """`_new_buffers` of input `index`, kept by this thread for its next call of the same shape; the VM's
        argument for its integers is kept too (`_device_tensor`)."""
        import tvm_ffi

        mine = self._local.__dict__
        kept, args = mine.setdefault("buffers", {}), mine.setdefault("buffer_args", {})
        if index not in kept or kept[index][0].shape != shape:
            if index in kept:
                args.pop(id(kept[index][0]), None)
            kept[index] = _new_buffers(shape, dtype, self._chunk)
            args[id(kept[index][0])] = tvm_ffi.from_dlpack(kept[index][0])
        return kept[index]

    def _warn_saturating(self, spec: dict, value: np.ndarray, scale: np.ndarray, extremes=None,
                         grid_peak=None) -> None:
        """Warn once per input when values reach SATURATION times past its calibrated grid: they are
        clipped to the grid's end (a pitch tracker's fmin of 300 Hz calibrated at 46.9 Hz ran as 46.9).
        `extremes`: the input's (min, max), where known; `grid_peak`: the largest |value / scale| before
        rounding, where known (a scale per feature: 2 reductions instead of 4 NumPy passes)."""
        warned = self.__dict__.setdefault("_warned", set())
        if spec["name"] in warned or not np.size(value):
            return
        quant = spec["quant"]
        if extremes is not None and "sentinel" not in quant and not np.ndim(scale):  # every run's case: no NumPy
            peak, edge, where = max(-extremes[0], extremes[1]), grid_edge(float(scale), quant["dtype"]), ""
        elif grid_peak is not None and grid_peak <= SATURATION * grid_edge(1.0, quant["dtype"]) * (1 - 1e-6):
            return  # a scale per feature: no |value / scale| is near the warning's bound (no NumPy)
        else:
            edge = grid_edge(scale, quant["dtype"])
            if "sentinel" in quant:  # a value the model tests for (mask padding), saturating on purpose
                value = np.where(value == quant["sentinel"], 0, value)
            if np.ndim(edge) == 0:
                lo, hi = extremes if extremes is not None and "sentinel" not in quant else (value.min(), value.max())
                peak, where = max(-float(lo), float(hi)), ""
            else:  # a scale per feature: the feature furthest past its own range
                ratio = np.abs(value) / edge
                at = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
                peak, edge = float(abs(value[at])), float(np.broadcast_to(edge, ratio.shape)[at])
                where = f" (feature {at[quant['axis']]})"
        if peak > SATURATION * edge:
            warned.add(spec["name"])
            warnings.warn(f"input {spec['name']!r}{where}: |values| up to {peak:g}, beyond its calibrated range (+-{edge:g}); "
                          "they saturate at the range's end. Calibrate (--calib) with inputs that cover what the "
                          "model will be given.", RuntimeWarning, stacklevel=4)  # at the caller of run()

    def _warn_beyond_features(self, spec: dict, value: np.ndarray, extremes=None) -> None:
        """Warn once per input when a feature reaches FEATURE_SHIFT times the largest |value| the
        calibration data had in it: within the input's grid, but the activations computed from it may
        saturate (im2deep's long peptides, atom counts 1.3-1.4x the calibration's: CCS off by up to
        123 A^2 without a word). `extremes`: the input's (min, max), where known: within every feature's
        edge, no feature is past its own (a recurrent state's check 7.5 -> 0.2 us)."""
        amax = spec.get("feature_amax")
        warned = self.__dict__.setdefault("_warned_features", set())
        if amax is None or spec["name"] in warned or not np.size(value) or np.shape(value)[-1] != len(amax) \
                or "sentinel" in spec["quant"]:
            return
        if extremes is not None and max(-extremes[0], extremes[1]) <= self._least_feature_edge(spec):
            return
        peak = np.abs(np.asarray(value, np.float64)).reshape(-1, len(amax)).max(axis=0)
        edge = np.asarray(amax) * FEATURE_SHIFT
        beyond = np.flatnonzero((peak > edge) & (peak > 0))
        if beyond.size:
            f = int(beyond[np.argmax(peak[beyond] / np.maximum(edge[beyond], 1e-30))])
            warned.add(spec["name"])
            warnings.warn(f"input {spec['name']!r} (feature {f}): |values| up to {peak[f]:g}, beyond the calibration "
                          f"data's largest ({amax[f]:g}); the activations computed from it may saturate and the outputs "
                          "lose accuracy. Calibrate (--calib) with inputs that cover what the model will be given.",
                          RuntimeWarning, stacklevel=4)

    def run_integer(self, qinputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run on already-quantized inputs and return the raw integer outputs."""
        return self._integer_outputs(qinputs, copy=True)

    def _integer_outputs(self, qinputs: list[np.ndarray], copy: bool) -> list[np.ndarray]:
        """`run_integer`; without `copy`, outputs may be views of the memory the VM returned (read them before
        the next call)."""
        if self._rpc_lock is not None:
            with self._rpc_lock, self._board_alive():
                return self._run_integer(qinputs, copy)
        return self._run_integer(qinputs, copy)

    @contextmanager
    def _board_alive(self):
        """Over RPC, the board's server dying in a run (an `arm` artifact's dot product on a Raspberry Pi 4:
        SIGILL) reached the caller as TVM's `InternalError: Check failed: (code == RPCCode::kReturn) is false:
        code=kShutdown`, a traceback from the CLI: an ArtifactError says what it means."""
        try:
            yield
        except Exception as err:
            if "kShutdown" not in str(err):
                raise
            target = self.manifest["target"]
            raise ArtifactError(
                f"{self.path}: the board's RPC server died during the run (the session was shut down). The usual "
                f"cause is an instruction its CPU lacks (SIGILL): this artifact was built for {target['name']} "
                f"({' '.join(target.get('features', [])) or 'no extra features'}); a Raspberry Pi 4 (Cortex-A72, no "
                "dot product) takes --target raspberry-pi/4b-aarch64. `runtime.load` on the board itself names "
                "what its CPU lacks.") from None

    def _run_integer(self, qinputs: list[np.ndarray], copy: bool) -> list[np.ndarray]:
        size, length, qinputs = self._bucket(qinputs)
        slices = self._slices(qinputs)
        if len(slices) > 1:
            # fewer samples than workers: each sample gets the spare CPUs as TVM threads
            threads = max(1, self.batch_workers // min(self.batch_workers, len(slices)))
            pool = self._workers(self.batch_workers)
            parts = list(pool.map(lambda s: self._call(size, [q[s] for q in qinputs], True, threads), slices)
                         if min(self.batch_workers, len(slices)) > 1 and self.remote is None else
                         (self._call(size, [q[s] for q in qinputs], True) for s in slices))
            results = [np.concatenate(outs, axis) for outs, axis in zip(zip(*parts), self._batch_axes)]
        else:
            results = self._call(size, qinputs, copy)
        return results if size is None else self.buckets.cut(results, length)

    def _call(self, size, qinputs: list[np.ndarray], copy: bool, threads: int | None = None) -> list[np.ndarray]:
        if threads is not None and getattr(self._local, "threads", None) != threads:
            config_threads(threads)  # this worker thread's TVM pool
            self._local.threads = threads
        with _ENVIRONMENT.read():
            result = self._main(self._library(size, qinputs))(*[self._device_tensor(q) for q in qinputs])
            results = [result] if len(self.outputs) == 1 else self._fields(result)
            # a copy: an output may be memory the VM keeps (a constant it returns)
            if not self._shared:
                return [r.numpy() for r in results]
            return [np.from_dlpack(r).copy() for r in results] if copy else [np.from_dlpack(r) for r in results]

    def _fields(self, result) -> list:
        """The outputs of a model with several: over RPC the VM's tuple stays on the board (an RPCObjectRef,
        which is not iterable: every multi-output model failed with a TypeError there), and its items are
        fetched by the board's own array functions."""
        if self.remote is None:  # the outputs' count is known: list(result) asked the size 1 + n times, in Python
            item = self.__dict__.get("_array_item")
            if item is None:
                import tvm_ffi

                item = self._array_item = tvm_ffi.get_global_func("ffi.ArrayGetItem")
            return [item(result, i) for i in range(len(self.outputs))]
        size, item = (self.remote.get_function(f"ffi.Array{name}") for name in ("Size", "GetItem"))
        return [item(result, i) for i in range(size(result))]

    def _library(self, size, qinputs: list[np.ndarray]) -> tuple:
        """The key of the library that runs `qinputs` in bucket `size`: the batch-1 library where the
        artifact has one and the call holds one sample."""
        one = (size, True) in self._libs and all(
            q.shape[0] == 1 for q, spec in zip(qinputs, self.inputs) if spec["shape"] and isinstance(spec["shape"][0], str))
        return size, one

    def _main(self, key):
        """This thread's `main` of library `key` (looked up once: the lookup cost a small model 5%)."""
        mains = self._local.__dict__.setdefault("mains", {})
        if key not in mains:
            mains[key] = self._vm(key)["main"]
        return mains[key]

    def _device_tensor(self, q: np.ndarray):
        """`q` as the VM's argument: on this machine's CPU the array itself (TVM takes 64-byte
        aligned memory only: `q` is copied into such where it is not), elsewhere a copy there."""
        if not self._shared:
            return self._tensor(np.require(q, requirements="C"), self._dev)
        own = self._local.__dict__.get("buffer_args", {}).get(id(q))  # a buffer of `_quantized`: aligned
        if own is not None:
            return own
        import tvm_ffi

        return tvm_ffi.from_dlpack(_aligned(q))

    def _slices(self, qinputs: list[np.ndarray]) -> list[slice]:
        """The batch as one-sample slices, shared out among the workers (one slice: the whole batch
        in one call). One sample per call keeps each layer's working set that of batch 1, and runs
        the batch-1 library where the artifact ships one (static tiles): per sample at 1 thread,
        batch 8 in one call against 8 calls, EfficientNet-Lite0 4.60 against 4.55 ms and MiniLM
        14.3 against 12.5 (its softmax's int64 intermediates of 8 samples outgrow the caches)."""
        batch = qinputs[0].shape[0] if qinputs and qinputs[0].ndim else 1
        if self._per_sample:  # a batch-1 module: one call per sample, however many workers
            return [slice(i, i + 1) for i in range(batch)] if batch > 1 else [slice(None)]
        if batch < 2 or self.batch_in_one_call or self.remote is not None or not self._batched:
            return [slice(None)]
        return [slice(i, i + 1) for i in range(batch)]

    @functools.cached_property
    def _per_sample(self) -> bool:
        """Compiled at batch 1 for a free batch the module could not take symbolically."""
        return self.manifest.get("batch") == "per-sample"

    @property
    def _batch_axes(self) -> list[int]:
        """Each output's batch axis (0 unless the batch-1 module runs per sample: where float
        onnxruntime put it, named in the manifest's shape)."""
        return batch_axes(self.manifest)

    @functools.cached_property
    def _batched(self) -> bool:
        """Every input and output leads with the same free dim (the batch)."""
        leads = {str(spec["shape"][0]) if spec["shape"] and isinstance(spec["shape"][0], str) else None
                 for spec in [*self.inputs, *self.outputs]}
        return len(leads) == 1 and None not in leads

    def _workers(self, count: int):
        """A pool of `count` threads (made again when `batch_workers` changes); each sets its own
        TVM thread count per call (`_call`)."""
        with self._pool_lock:
            if self._pool is None or self._pool[0] != count:
                from concurrent.futures import ThreadPoolExecutor

                if self._pool is not None:
                    self._pool[1].shutdown(wait=False)
                self._pool = (count, ThreadPoolExecutor(count, thread_name_prefix="intq-batch"))
            return self._pool[1]

    def time_run(self, inputs: dict[str, np.ndarray], repeat: int = 50, warmup: int = 3) -> np.ndarray:
        """Latencies in ms of `repeat` whole `run` calls (float in, float out), timed around each."""
        return wall_times(lambda: self.run(inputs), repeat, warmup)

    def time(self, qinputs: list[np.ndarray], repeat: int = 50, warmup: int = 3) -> np.ndarray:
        """Latencies in ms of `repeat` runs, timed on the device itself (locally or on the board);
        a batch that runs in slices side by side is timed around the whole `run_integer`."""
        if len(self._slices(qinputs)) > 1:
            return wall_times(lambda: self._run_integer(qinputs, False), repeat, warmup)
        size, _, qinputs = self._bucket(qinputs)
        with self._board_alive() if self.remote is not None else nullcontext():
            vm = self._vm(self._library(size, qinputs))
            args = [self._device_tensor(q) for q in qinputs]
            for _ in range(warmup):
                vm["main"](*args)
            timer = vm.time_evaluator("main", self._dev, number=1, repeat=repeat)
            return np.asarray(timer(*args).results) * 1e3

    def kernel_times(self, qinputs: list[np.ndarray], repeat: int = 20) -> dict[str, tuple[float, float]]:
        """{kernel: (ms per run, calls per run)} over `repeat` runs on this machine, the slowest
        first: the virtual machine's instrument times every call it makes (kernels, allocations),
        a few microseconds each on top (compare their sum with `time`)."""
        if self.remote is not None:
            raise InputError("kernel times are measured on this machine; the artifact runs on a board (--rpc)")
        if self.onnxruntime_only:
            raise InputError(f"{self.path}: nothing was compiled (onnxruntime runs the whole model): no kernels to time")
        size, _, qinputs = self._bucket(qinputs)
        vm = self._new_vm(self._libs[self._library(size, qinputs)], self._dev)
        args = [self._device_tensor(q) for q in qinputs]
        vm["main"](*args)  # warm: constants loaded, memory pooled
        totals: dict[str, list[float]] = {}
        started: list[float] = []

        def instrument(func, name, before, ret, *_):
            if before:
                started.append(time.perf_counter())
            else:
                entry = totals.setdefault(str(name), [0.0, 0.0])
                entry[0] += time.perf_counter() - started.pop()
                entry[1] += 1
            return 0

        vm.set_instrument(instrument)
        with _ENVIRONMENT.read():
            for _ in range(repeat):
                vm["main"](*args)
        rows = {name: (1e3 * t / repeat, n / repeat) for name, (t, n) in totals.items()}
        return dict(sorted(rows.items(), key=lambda kv: -kv[1][0]))

    def check_ranges(self, inputs: dict[str, np.ndarray]) -> list[dict]:
        """Which inputs and activations of a run on `inputs` reach the end of their calibrated range, where they
        are clamped without a word (runtime/saturation.py): a row per tensor with such values, in the order they
        are computed (`tensor`, `call`, `dtype`, `shape`, `at_end`, `size`, `share`); [] where none does."""
        from .saturation import saturated

        if self.onnxruntime_only:
            raise InputError(f"{self.path}: nothing was compiled (onnxruntime runs the whole model): no integer ranges")
        own = {spec["name"] for spec in (self.manifest.get("tail") or {}).get("inputs", [])}
        self._check_mapping(inputs)  # quantized here: a warning about an input names the caller's line, as run's
        return saturated(self, self._quantized({k: v for k, v in inputs.items() if k not in own}, reuse=False))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Quantize `inputs`, run the integer model, dequantize the outputs (and, where the
        artifact has a tail, run it in onnxruntime on them: frontends/onnx_tail.py)."""
        self._check_mapping(inputs)
        tail = self.manifest.get("tail")
        if self.onnxruntime_only:
            return self._run_tail(tail, {}, inputs)
        own = {spec["name"] for spec in tail["inputs"]} if tail else set()
        outs = self._integer_outputs(self._quantized({k: v for k, v in inputs.items() if k not in own}, reuse=True),
                                     copy=False)  # dequantized into new arrays below
        result = {spec["name"]: _as_output(spec, self._dequantize(i, q))
                  for i, (spec, q) in enumerate(zip(self.outputs, outs))}
        return result if tail is None else self._run_tail(tail, result, inputs)

    def _run_tail(self, tail: dict, result: dict[str, np.ndarray], inputs: dict) -> dict[str, np.ndarray]:
        """The model's own outputs: the tail run by onnxruntime on the compiled part's outputs."""
        missing = [spec["name"] for spec in tail["inputs"] if spec["name"] not in inputs]
        if missing:
            raise InputError(f"inputs {sorted(inputs)} lack {missing}, which the model's last part reads")
        with self._pool_lock:
            if getattr(self, "_tail_session", None) is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3
                onnx_bytes = os.pread(self._tail_fd, os.fstat(self._tail_fd).st_size, 0)
                self._tail_session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        session = self._tail_session
        feeds = {}
        for arg in session.get_inputs():
            value = result[arg.name] if arg.name in result else np.asarray(inputs[arg.name])
            feeds[arg.name] = _coerced_input(value, [{"name": arg.name, "shape": None,
                                                     "dtype": _ORT_TYPES.get(arg.type, value.dtype.name)}], arg.name)
        names = [o.name for o in session.get_outputs()]
        late = {**result, **dict(zip(names, session.run(names, feeds)))}
        if self._rest is not None:
            known = {**inputs, **late}
            late.update(self._rest.run({name: known[name] for name in tail["rest"]["inputs"]}))
        return {name: late[name] for name in tail["outputs"]}

    def _least_feature_edge(self, spec: dict) -> float:
        """FEATURE_SHIFT times the smallest of an input's per-feature calibration maxima (memoized)."""
        edges = self.__dict__.setdefault("_feature_edges", {})
        if spec["name"] not in edges:
            edges[spec["name"]] = float(np.min(np.asarray(spec["feature_amax"]) * FEATURE_SHIFT))
        return edges[spec["name"]]

    def _scale(self, index: int, rank: int, side: str = "outputs") -> np.ndarray:
        """Output (or input) `index`'s scale shaped for a tensor of `rank` (memoized: it is on every call)."""
        key = (side, index, rank)
        if key not in self._scales:
            self._scales[key] = scale_array(getattr(self, side)[index]["quant"], rank)
        return self._scales[key]


SATURATION = 1.5  # an input this many times past its calibrated grid's end gets a warning
MAX_SIGNATURES = 64  # input signatures a model remembers as checked (`_check_structure`)
FEATURE_SHIFT = 1.25  # a feature this many times past the calibration data's largest value gets one


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
              "tensor(float16)": "float16", "tensor(int16)": "int16"}


def _extremes(name: str, value: np.ndarray) -> tuple[float, float]:
    """(min, max) of a non-empty float input; InputError if any value is NaN or infinite."""
    extremes = float(value.min()), float(value.max())  # NaN if any is: one pass less than isfinite
    if not np.isfinite(extremes).all():
        raise InputError(_not_finite(name, np.size(value) - int(np.isfinite(value).sum()), value.size))
    return extremes


def _check_indices(spec: dict, value: np.ndarray) -> None:
    """InputError where an input that indexes a table (token ids into an embedding: the manifest's
    `index_rows`) holds ids outside it, [-rows, rows - 1] as ONNX Gather takes them: the compiled model
    clamps them to its first or last row (frontends/onnx_index_inputs.py)."""
    rows, low, high = spec["index_rows"]["rows"], value.min(), value.max()
    if low < -rows or high >= rows:
        bad = high if high >= rows else low
        raise InputError(f"input {spec['name']!r}: id {bad} is outside the {rows} rows of the table it indexes "
                         f"(ONNX node {spec['index_rows']['node']!r}: ids in [{-rows}, {rows - 1}]); "
                         "were the ids made for another model (tokenizer, vocabulary)?")


def _not_finite(name: str, bad: int, size: int) -> str:
    return (f"input {name!r}: {bad} of {size} values are NaN or infinite; the integer model has no meaningful "
            "output for them")


def _coerced_input(value, specs: list[dict], name: str):
    """A Python or NumPy scalar for a 0-d input (a sample rate, a frequency bound) as a 0-d array
    of the input's dtype; a list or another array type (torch) as a NumPy array; an array of
    another dtype of the same kind cast to the input's where no value changes but float rounding
    (NumPy's float64 for a float32 input, int32 token ids for int64 ones); anything else as it is
    (`check_inputs` judges it)."""
    spec = next((s for s in specs if s["name"] == name), None)
    if spec is None:
        return value
    dtype = np.dtype(spec["dtype"])
    if spec["shape"] == [] and (isinstance(value, (int, float, bool, np.generic))):
        return np.asarray(value, dtype=dtype)
    if not isinstance(value, np.ndarray) and (isinstance(value, (list, tuple)) or hasattr(value, "__array__")):
        try:
            value = np.asarray(value)
        except Exception as err:  # a ragged list, a tensor that will not leave its device or its graph
            raise InputError(f"input {name!r}: a {type(value).__name__} that is not an array of numbers "
                             f"({str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__})") from None
    if not isinstance(value, np.ndarray) or value.dtype == dtype:
        return value
    if value.dtype.kind == "f" and dtype.kind == "f":
        with np.errstate(over="raise"):
            try:
                return value.astype(dtype)
            except FloatingPointError:  # it was called NaN or infinite, which it is not
                raise InputError(f"input {name!r}: {value.dtype} values up to {np.abs(value).max():g} are beyond "
                                 f"{dtype}'s range, the model's input dtype") from None
    if value.dtype.kind in "iub" and dtype.kind in "iu" and value.size and np.can_cast(value.dtype, dtype):
        return value.astype(dtype)  # widening: exact
    if value.dtype.kind in "iu" and dtype.kind in "iu" and value.size:
        info = np.iinfo(dtype)
        if info.min <= value.min() and value.max() <= info.max:
            return value.astype(dtype)
    return value


ALIGNMENT = 64  # bytes: what TVM's kernels assume of a buffer (DLPack import refuses less)
# a boundary kernel's call (two DLPack views, an aligned output) costs ~4 us: below this many elements
# NumPy's dequantize (the same float64 steps, the same bits) is done sooner. Measured on a 2-core Zen 4,
# one thread: 512 elements 1.9 us against 4.1, 4096 3.5 against 4.7, 16384 8.1 against 6.6. Quantizing,
# the kernel wins at any size (64 elements: 4.0 us against NumPy's 4.9, and its output is aligned already)
DEQUANTIZE_KERNEL = 8192


def wall_times(call: Callable[[], object], repeat: int, warmup: int = 3) -> np.ndarray:
    """Latencies in ms of `repeat` calls of `call` after `warmup` ones, by wall clock around each."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return np.asarray(times) * 1e3


def _aligned(q: np.ndarray) -> np.ndarray:
    """`q`, or a C-contiguous, writeable copy of it at an ALIGNMENT-byte address (NumPy exports no
    read-only array through DLPack: an exact integer input read from a file came through as such)."""
    q = np.asarray(q)  # a 0-d input quantizes to a NumPy scalar
    if q.flags.c_contiguous and q.flags.writeable and q.__array_interface__["data"][0] % ALIGNMENT == 0:
        return q
    out = _empty_aligned(q.shape, q.dtype)
    out[...] = q
    return out


def _new_buffers(shape: tuple, dtype: str, chunk: int) -> tuple:
    """(integers, statistics, their kernel arguments) for the checked quantization of a float tensor of `shape`:
    the statistics are a (min, max, non-finite count) per chunk of `chunk` elements."""
    import tvm_ffi

    q, stats = _empty_aligned(shape, dtype), np.empty(3 * -(-math.prod(shape) // chunk))
    return q, stats, tvm_ffi.from_dlpack(q.reshape(-1)), tvm_ffi.from_dlpack(stats)


def _empty_aligned(shape, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array at an ALIGNMENT-byte address (the VM's arguments)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize  # not np.prod: 5 us of a small model's 60 us run, per call
    buffer = np.empty(size + ALIGNMENT, np.uint8)
    start = -buffer.__array_interface__["data"][0] % ALIGNMENT
    return buffer[start:start + size].view(dtype).reshape(shape)


def _flat_call(kernel, x: np.ndarray, scale: float, dtype: str) -> np.ndarray:
    """kernel(x, scale, out) over `x` flattened (any alignment; a read-only `x` copied: DLPack refuses
    it); `out` of `dtype`, aligned as the model's arguments must be (no copy before the run)."""
    import tvm_ffi

    if not (x.flags.c_contiguous and x.flags.writeable):  # np.require costs 2 us even where it copies nothing
        x = np.array(x, order="C")
    out = _empty_aligned(x.shape, dtype)
    kernel(tvm_ffi.from_dlpack(x.reshape(-1)), scale, tvm_ffi.from_dlpack(out.reshape(-1)))
    return out


def _as_output(spec: dict, y: np.ndarray) -> np.ndarray:
    """A dequantized output in the model's own output dtype (ONNX int64 indices, bool masks: exact integers)."""
    dtype = np.dtype(spec.get("dtype", "float32"))
    if dtype == y.dtype:
        return y
    return (y != 0) if dtype == np.bool_ else (np.rint(y) if dtype.kind in "iu" else y).astype(dtype)


class _Environment:
    """TVM reads the environment (getenv) while it runs; `config_threads` sets TVM_NUM_THREADS for a
    moment, and glibc's setenv beside a getenv in another thread is a crash (a free-batch artifact
    segfaulted at batch 4 on two batch workers: one worker set it while the other ran). Runs share
    the environment; a change waits until no run is in TVM and holds new ones off meanwhile."""

    def __init__(self):
        self._cond = threading.Condition()
        self._runs, self._changing, self._waiting = 0, False, 0

    def read(self) -> "_Environment":
        """`with _ENVIRONMENT.read():` around a run in TVM (`__enter__` and `__exit__` count it: a generator-based
        context manager cost a run 0.02 ms, cold after the model's run)."""
        return self

    def __enter__(self) -> None:
        with self._cond:
            while self._changing:
                self._cond.wait()
            self._runs += 1

    def __exit__(self, *_) -> None:
        with self._cond:
            self._runs -= 1
            if self._waiting:
                self._cond.notify_all()

    @contextmanager
    def change(self):
        with self._cond:
            self._waiting += 1
            while self._changing or self._runs:
                self._cond.wait()
            self._waiting -= 1
            self._changing = True
        try:
            yield
        finally:
            with self._cond:
                self._changing = False
                self._cond.notify_all()


_ENVIRONMENT = _Environment()
_LOADED: "weakref.WeakSet[Model]" = weakref.WeakSet()  # the models of this process (`_after_fork`)
_FORKED_THREAD: int | None = None  # in a forked child: the thread that forked, whose TVM pool lost its workers


def _after_fork() -> None:
    """A forked child (multiprocessing's default start on Linux) holds only the thread that forked: the
    worker threads of that thread's TVM pool, of each model's batch workers and of onnxruntime are gone,
    and a kernel split across the pool waited for them forever (a fork Pool's worker hung on its first run
    of a model its parent had run; so did a batch). So that thread's pool runs kernels on the thread alone
    from now on (TVM cannot start its workers again; threads the child starts get pools of their own),
    and the batch workers and the tail's session are made again on their next use."""
    global _ENVIRONMENT, _FORKED_THREAD
    _ENVIRONMENT, _FORKED_THREAD = _Environment(), threading.get_ident()
    if "tvm" in sys.modules:
        sys.modules["tvm"].get_global_func("runtime.config_threadpool")(0, 1)
    for model in list(_LOADED):
        model._pool, model._pool_lock, model.__dict__["_tail_session"] = None, threading.Lock(), None
        if model._rpc_lock is not None:
            model._rpc_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def config_threads(count: int) -> None:
    """The calling thread's TVM thread pool at `count` threads, the calling thread left free to run
    on every CPU it could before. TVM pins it to the first core: batch workers all ended up on core
    0 (a batch ran no faster on 2 cores than on 1), and so did onnxruntime's threads created after.
    A thread other than the main one gets a pool of exactly `count` threads when this is its first
    TVM call: a pool sized for every CPU but told to use one ran its work on a pinned worker thread
    while the caller spun, so two callers sharing a Model ran no faster than one (0.99x; 1.93x now)."""
    import tvm

    if threading.get_ident() == _FORKED_THREAD:  # its pool's workers did not survive the fork (`_after_fork`)
        count = 1
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    configure = tvm.get_global_func("runtime.config_threadpool")
    if threading.current_thread() is threading.main_thread():
        configure(0, count)  # the main thread's pool keeps every CPU: it may be asked for more later
    else:
        with _ENVIRONMENT.change():  # TVM reads TVM_NUM_THREADS when it makes this thread's pool (here, if not yet)
            before = os.environ.get("TVM_NUM_THREADS")
            os.environ["TVM_NUM_THREADS"] = str(count)
            try:
                configure(0, count)
            finally:
                if before is None:
                    del os.environ["TVM_NUM_THREADS"]
                else:
                    os.environ["TVM_NUM_THREADS"] = before
    if mask is not None:
        os.sched_setaffinity(0, mask)


def _default_workers() -> int:
    """TVM_NUM_THREADS, else the CPUs this process may run on."""
    env = os.environ.get("TVM_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _exact(spec: dict, value: np.ndarray) -> np.ndarray:
    """An exact integer input as the compiled graph takes it: integers as they are; float ids that the
    graph only casts (`quant.dtype` integer, the manifest's `dtype` float) cast as ONNX Cast does."""
    if value.dtype.kind != "f":
        return value
    try:
        return to_integer(value, spec["quant"]["dtype"])
    except ValueError as err:
        raise InputError(f"input {spec['name']!r}: {err}") from None


def _check_shape(name: str, shape: list[int], spec: dict, sizes: dict[str, int]) -> None:
    """A static dim must match; a free one (the batch, "n") must lie in the compiled range and
    agree between inputs."""
    expected, ranges = spec["shape"], spec.get("range", {})
    if len(shape) != len(expected) or any(not isinstance(e, str) and g != e for g, e in zip(shape, expected)):
        free = "".join(f" with {k} in [{lo}, {hi if hi is not None else 'any'}]" for k, (lo, hi) in ranges.items())
        raise InputError(f"input {name!r}: shape {shape}, expected {expected}{free}")
    for axis, (got, dim) in enumerate(zip(shape, expected)):
        if not isinstance(dim, str):
            continue
        lo, hi = ranges.get(dim, (1, None))
        if got == 0:  # no range holds it: "recompile with a wider range" was no advice
            raise InputError(f"input {name!r}: shape {shape}: {dim} = 0, an empty {'batch' if axis == 0 else 'input'}: "
                             f"nothing to run; the artifact takes {dim} in [{lo}, {hi if hi is not None else 'any'}]")
        if got < lo or (hi is not None and got > hi):
            what = "split the batch" if axis == 0 else "split or truncate the sequence"
            raise InputError(f"input {name!r}: shape {shape}: {dim} = {got} is outside the range the artifact was "
                             f"compiled for, {dim} in [{lo}, {hi if hi is not None else 'any'}] (shape {expected}); "
                             f"{what}, or recompile with a wider range (--input-shape NAME:LO..HIx...)")
        if sizes.setdefault(dim, got) != got:
            raise InputError(f"input {name!r}: shape {shape}: {dim} = {got}, but another input has {dim} = "
                             f"{sizes[dim]}; inputs sharing a free dim (the batch, a length) must agree")


def example_shape(spec: dict, batch: int = 1, sizes: dict[str, int] | None = None) -> list[int]:
    """An input's shape with its free dims set: by name from `sizes`, else the leading one (the
    batch) to `batch` and later ones (a sequence length) to their range's upper bound."""
    sizes, ranges = sizes or {}, spec.get("range", {})
    return [d if not isinstance(d, str) else sizes[d] if d in sizes else batch if i == 0 else ranges[d][1]
            for i, d in enumerate(spec["shape"])]


def _check_cpu_features(path: Path, target: dict) -> None:
    """Refuse an artifact whose instructions this CPU lacks (it would die with SIGILL): x86's from
    /proc/cpuinfo, ARM's from the capabilities Linux reports (an `arm` build's dot product on a
    Raspberry Pi 4's Cortex-A72)."""
    from frontends.host_cpu import enable_amx, missing_features, missing_hwcaps

    features = target.get("features", [])
    if target["arch"] != "x86_64":
        missing = missing_hwcaps(features, target["arch"])
        if missing:
            raise ArtifactError(f"{path}: built for CPU features {' '.join(features)} ({target['name']}); this CPU "
                                f"lacks {' '.join(missing)}, and would die on its first such instruction (SIGILL). "
                                "Recompile for this board's target (the README's board table: a Raspberry Pi 4 "
                                "takes raspberry-pi/4b-aarch64, not arm).")
        return
    missing = missing_features(features)
    if missing:
        raise ArtifactError(f"{path}: built for CPU features {' '.join(features)}; this CPU lacks "
                            f"{' '.join(missing)}. Recompile on this machine, or for a fleet with --cpu "
                            "(e.g. --cpu x86-64-v3 for AVX2 machines).")
    if "+amx-tile" in features:
        if not enable_amx():
            raise ArtifactError(f"{path}: built for AMX tiles, which this Linux kernel does not grant to the "
                                "process (arch_prctl ARCH_REQ_XCOMP_PERM failed; Linux 5.16 or later needed). "
                                "Recompile with --cpu x86-64-v4+avx512vnni.")


def _load_cuda_runtime(tvm, path: Path) -> None:
    """Register TVM's CUDA module loader (runtime-only TVM does not load it by itself); ArtifactError naming
    the artifact and what to do where this machine has no NVIDIA driver."""
    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        import ctypes

        lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        try:
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise ArtifactError(f"{path}: built for CUDA, which needs an NVIDIA GPU and its driver ({err}). Run it "
                                "on a machine with one, or recompile it for this CPU (--target x86)") from None


class PlanModel(Model):
    """An armv7 or riscv64 artifact, whose boards have no TVM runtime: its plan runs in the artifact's own
    executor (`intq_exec`, runtime/plan.py), a process per call, with inputs and outputs through files.
    The same `run` / `run_integer` / `quantize_inputs` / `time` as a Model, and needs only numpy: a
    deployment script on the board loads and runs it as it would any artifact. `launcher` prefixes the
    executor's command line (`("qemu-riscv64", "-L", "/usr/riscv64-linux-gnu")` runs it emulated
    elsewhere). The executor is single-threaded: a batch runs sample by sample."""

    def __init__(self, path: str | os.PathLike, launcher: tuple[str, ...] = ()):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.remote, self.launcher = None, tuple(launcher)
        arch = self.manifest["target"]["arch"]
        if not launcher and arch != platform.machine():
            raise ArtifactError(f"{self.path}: built for {arch} ({self.manifest['target']['name']}); this machine "
                                f"is {platform.machine()}. Copy the artifact to a {arch} board and run it there, or "
                                "here under qemu-user: --emulate (runtime.load(path, launcher="
                                "runtime.plan.emulator(manifest)) in Python).")
        if not launcher:  # on the board itself (an emulator's CPU is the launcher's to choose)
            _check_cpu_features(self.path, self.manifest["target"])
        self.buckets = Buckets.from_manifest(self.manifest)
        self.batch_workers, self.batch_in_one_call = 1, False
        self._rpc_lock = None
        self._boundary_state()
        self._open_tail()
        self._pool_lock = threading.Lock()  # the tail's onnxruntime session, made once
        _LOADED.add(self)  # for `_after_fork`

    def _integer_outputs(self, qinputs: list[np.ndarray], copy: bool) -> list[np.ndarray]:
        from .plan import run_plan

        return run_plan(self.path, qinputs, self.launcher, manifest=self.manifest)

    def time(self, qinputs: list[np.ndarray], repeat: int = 50, warmup: int = 3) -> np.ndarray:
        """Latencies in ms of `repeat` runs of the inputs (a batch: every sample, one after the other, as `run`
        runs them), timed by the executor around its kernel calls. (It timed the first sample alone, and
        `runtime.bench --batch 8` reported 8 times the throughput the board has.)"""
        from .plan import run_plan

        return run_plan(self.path, qinputs, self.launcher, manifest=self.manifest, timed=(repeat, warmup))[1]

    def kernel_times(self, qinputs: list[np.ndarray], repeat: int = 20) -> dict[str, tuple[float, float]]:
        raise InputError("kernel times are measured by TVM's virtual machine; this artifact runs in its plan executor")

    def check_ranges(self, inputs: dict[str, np.ndarray]) -> list[dict]:
        raise InputError("check_ranges watches TVM's virtual machine run the kernels; this artifact runs in its plan "
                         "executor: check the same model built for this machine (--target x86), whose integers are "
                         "the same")


def load(path: str | os.PathLike, remote=None, launcher: tuple[str, ...] = ()) -> Model:
    """Load the artifact at `path` (checks format version, library hash and architecture);
    with `remote`, on the board behind that RPC session. An armv7 or riscv64 artifact loads as a
    `PlanModel` (its own executor, no TVM needed), run through `launcher` where given (an emulator)."""
    manifest = read_manifest(path, check_library=False)
    if manifest.get("executor"):
        if remote is not None:
            raise ArtifactError(f"{path}: an {manifest['target']['arch']} artifact runs in its own executor, not over "
                                "TVM RPC (the board has no TVM runtime): copy it to the board and run it there")
        return PlanModel(path, launcher)
    return Model(path, remote)
