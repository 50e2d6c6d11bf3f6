"""The float model's convs run by torch for calibration (`passes/float_convs.py`): every layout,
pad, stride, dilation and group form agrees with TVM's own float conv, and calibration takes them."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from passes.float_taps import TappedModel

rng = np.random.default_rng(5)
R = relax.op

CASES = {  # name -> (op, input NCHW shape, weight shape in its layout, attributes)
    "plain": ("conv2d", (1, 4, 9, 11), (6, 4, 3, 3), {}),
    "asymmetric pads, stride 2": ("conv2d", (1, 4, 10, 12), (5, 4, 3, 2), dict(padding=(1, 0, 2, 1), strides=(2, 2))),
    "dilated, grouped": ("conv2d", (1, 6, 12, 12), (6, 2, 3, 3), dict(padding=(2, 2, 2, 2), dilation=(2, 2), groups=3)),
    "NHWC / HWIO": ("conv2d", (1, 5, 8, 8), (3, 3, 5, 7), dict(padding=(1, 1, 1, 1), data_layout="NHWC",
                                                                 kernel_layout="HWIO")),
    "depthwise": ("conv2d", (1, 8, 7, 7), (8, 1, 3, 3), dict(padding=(1, 1, 1, 1), groups=8)),
    "transposed": ("conv2d_transpose", (1, 4, 5, 6), (4, 3, 2, 2), dict(strides=(2, 2))),
    "transposed, pads and output padding": ("conv2d_transpose", (1, 4, 5, 6), (4, 3, 3, 3),
                                            dict(strides=(2, 2), padding=(1, 0, 1, 2), output_padding=(1, 1))),
    "transposed, grouped": ("conv2d_transpose", (1, 4, 5, 5), (4, 2, 3, 3), dict(strides=(2, 1), groups=2,
                                                                              padding=(1, 1, 1, 1))),
}


def _module(op, shape, weight, attrs):
    if attrs.get("data_layout") == "NHWC":
        shape = (shape[0], shape[2], shape[3], shape[1])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(shape), str(weight.dtype)))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = getattr(R.nn, op)(x, relax.const(weight), **attrs)
            out = bb.emit_output(R.nn.relu(bb.emit(conv)))
        bb.emit_func_output(out)
    return bb.get(), shape


@pytest.mark.parametrize("name", list(CASES))
def test_torch_conv_equals_tvm_conv(name):
    op, shape, wshape, attrs = CASES[name]
    mod, shape = _module(op, shape, rng.standard_normal(wshape).astype(np.float32), attrs)
    x = rng.standard_normal(shape).astype(np.float32)
    want = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    model = TappedModel(mod)
    assert "intq.float_conv" in model._tapped.script(show_meta=False)  # torch runs it
    seen = {}

    def tap(index, value):
        seen[model.names[index]] = value.copy()

    (got,) = model.run({"x": x}, tap)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (conv,) = [v for n, v in seen.items() if n != "x" and v.min() < 0]  # the conv's output, before the ReLU
    np.testing.assert_allclose(np.maximum(conv, 0), want, rtol=1e-4, atol=1e-4)


def test_without_torch_the_convs_stay_tvm_convs(monkeypatch):
    from passes import float_convs

    monkeypatch.setattr(float_convs, "TORCH", False)
    mod, shape = _module("conv2d", (1, 4, 6, 6), rng.standard_normal((4, 4, 3, 3)).astype(np.float32), {})
    model = TappedModel(mod)
    assert "intq.float_conv" not in model._tapped.script(show_meta=False)
    assert model.run({"x": rng.standard_normal(shape).astype(np.float32)})[0].shape == (1, 4, 4, 4)


def test_float16_convs_stay_tvm_convs():
    mod, _ = _module("conv2d", (1, 4, 6, 6), rng.standard_normal((4, 4, 3, 3)).astype(np.float16), {})
    assert "intq.float_conv" not in TappedModel(mod)._tapped.script(show_meta=False)


def test_small_convs_run_on_one_torch_thread(monkeypatch):
    """torch's thread pool and TVM's take turns in the tapped model: a small conv runs on one torch
    thread (two spinning pools made each such call wait for a core: 15 ms instead of 0.1-0.4 ms, most
    of a CNN's compile), a big one keeps torch's threads; the setting is restored after each call."""
    import torch
    from torch.nn import functional as F

    from passes import float_convs

    seen = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for shape, weight in [((1, 8, 12, 12), (8, 8, 3, 3)), ((1, 64, 112, 112), (64, 64, 3, 3))]:
            x = relax.Var("x", relax.TensorType(list(shape), "float32"))
            call = relax.BlockBuilder().normalize(R.nn.conv2d(x, relax.const(rng.standard_normal(weight).astype(
                np.float32)), padding=(1, 1, 1, 1)))
            float_convs.conv_closure(call)(rng.standard_normal(shape).astype(np.float32))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]  # 10 k MACs on one thread; 462 M MACs on torch's two


def test_tapped_model_runs_on_one_tvm_thread():
    """The tapped model's kernels run on one TVM thread (a worker spinning between kernels while Python ran the
    taps, beside torch's conv threads, made calibration 2x slower on 2 cores); the caller's pool size and CPU
    set are as they were after the run."""
    import os

    threads = tvm.get_global_func("runtime.NumThreads")
    mod, shape = _module("conv2d", (1, 4, 6, 6), rng.standard_normal((4, 4, 3, 3)).astype(np.float32), {})
    model = TappedModel(mod)
    before, cpus = threads(), os.sched_getaffinity(0)
    during = []
    model.run({"x": rng.standard_normal(shape).astype(np.float32)}, lambda index, value: during.append(threads()))
    assert during and set(during) == {1}
    assert threads() == before and os.sched_getaffinity(0) == cpus


def test_matmuls_run_by_torch_as_relax_computes_them():
    """A float32 matmul becomes a packed call to torch: a constant weight (converted once, not passed), two
    activations with broadcast batch dims (attention's Q.K^T); its result is NumPy's matmul; a matmul of two
    constants is left to TVM."""
    from passes import float_convs

    x = relax.Var("x", relax.TensorType([2, 5, 16], "float32"))
    y = relax.Var("y", relax.TensorType([1, 16, 7], "float32"))
    w = rng.standard_normal((16, 24)).astype(np.float32)
    a, b = rng.standard_normal((2, 5, 16)).astype(np.float32), rng.standard_normal((1, 16, 7)).astype(np.float32)
    bb = relax.BlockBuilder()
    for call, operands, want in [(R.matmul(x, relax.const(w)), [a], a @ w), (R.matmul(x, y), [a, b], a @ b)]:
        call = bb.normalize(call)
        convs = float_convs.Convs()
        packed = convs.rewrite(call)
        assert packed.op.name == "relax.call_pure_packed" and len(packed.args) == 2 + len(operands)
        np.testing.assert_allclose(float_convs.matmul_closure(call)(*operands), want, rtol=1e-5, atol=1e-5)
    constants = bb.normalize(R.matmul(relax.const(w.T.copy()), relax.const(w)))
    assert float_convs.Convs().rewrite(constants).same_as(constants)
