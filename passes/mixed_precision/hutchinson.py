"""Hutchinson estimates of per-layer Hessian traces with torch autograd.

    Tr(H_l) ~ mean_k  v_l^T (H v)_l              Method.HESSIAN, v Rademacher over all weights
    Tr(H_l) ~ mean_k  ||J_l^T B z||^2            Method.GAUSS_NEWTON, z Rademacher over outputs,
                                                 B B^T = d^2 loss / d outputs^2

The loss (see `sensitivity.py`) is the mean over all samples; chunks of stacked samples
are run once, their autograd graphs retained, and each iteration only differentiates them
again (memory grows with the number of samples). Loss Hessians in output space, per sample
of N: cross-entropy `(diag(p) - p p^T) / N`, factor `B z = (sqrt(p) * z - p (sqrt(p) . z)) / sqrt(N)`;
MSE over M outputs `2 / (N M) I`, factor `sqrt(2 / (N M)) z`.
"""

from __future__ import annotations

import math

import onnx

from frontends.errors import CompileError

from .onnx_torch import TorchGraph
from .sensitivity import Loss, Method, SensitivityConfig


def _resolve_loss(loss: Loss, outputs) -> Loss:
    if loss is not Loss.AUTO:
        return loss
    classifier = len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] > 1
    return Loss.CROSS_ENTROPY if classifier else Loss.MSE


def _check_batched(graph: TorchGraph, chunk: dict, outputs) -> None:
    """Stacked samples must give what the first sample alone gives (constant Reshapes)."""
    import torch

    first = {k: v[:graph.batch] for k, v in chunk.items()}
    with torch.no_grad():
        alone = graph.run(first)
    for a, b in zip(alone, outputs):
        if a.shape != b[:graph.batch].shape or not torch.allclose(a, b[:graph.batch], rtol=1e-3, atol=1e-4):
            raise CompileError("stacking calibration samples changes the model's outputs (a shape is fixed to the "
                               "batch size); use SensitivityConfig(batch_size=1)")


def _rademacher(shape, gen):
    import torch

    return torch.randint(0, 2, tuple(shape), generator=gen).float() * 2 - 1


def estimate_traces(model: onnx.ModelProto, names: list[str], chunks: list[dict],
                    config: SensitivityConfig, progress: bool = True):
    """({weight name: trace}, resolved Loss, iterations, converged) for `names` on `chunks`."""
    import torch
    from tqdm import tqdm

    graph = TorchGraph(model)
    weights = {n: graph.initializers[n].float().requires_grad_(True) for n in names}
    params = list(weights.values())
    total = sum(int(next(iter(c.values())).shape[0]) for c in chunks)  # rows over all samples
    loss_kind, terms = None, []
    for chunk in chunks:
        outputs = graph.run(chunk, weights)
        float_outputs = [o.detach() for o in outputs]
        if loss_kind is None:
            loss_kind = _resolve_loss(config.loss, float_outputs)
            if chunk is chunks[0] and config.batch_size > 1:
                _check_batched(graph, chunk, float_outputs)
        if config.method is Method.HESSIAN:
            grads = torch.autograd.grad(_loss(loss_kind, outputs, float_outputs, total), params, create_graph=True)
            terms.append(grads)
        else:
            terms.append((outputs, _output_factor(loss_kind, float_outputs, total)))

    gen = torch.Generator().manual_seed(config.seed)
    sums = torch.zeros(len(names), dtype=torch.float64)
    mean_prev, converged, k = None, False, 0
    bar = tqdm(range(1, config.max_iterations + 1), desc="Hutchinson", unit="it", disable=not progress,
               leave=False)
    for k in bar:
        sums += _sample(config.method, terms, params, gen)
        mean = sums / k
        if mean_prev is not None:
            change = ((mean - mean_prev).abs() / mean.abs().clamp_min(1e-30)).max().item()
            bar.set_postfix(rel_change=f"{change:.1e}")
            if change < config.tolerance:
                converged = True
                break
        mean_prev = mean
    bar.close()
    return {n: float(v) for n, v in zip(names, sums / k)}, loss_kind, k, converged


def _loss(kind: Loss, outputs, targets, total: int):
    """The chunk's share of the mean loss over all `total` rows (samples)."""
    import torch.nn.functional as F

    if kind is Loss.CROSS_ENTROPY:
        y, t = outputs[0], targets[0]
        return F.cross_entropy(y, t.argmax(1), reduction="sum") / total
    return sum(((y - t) ** 2).sum() / (t[0].numel() * total) for y, t in zip(outputs, targets))


def _output_factor(kind: Loss, targets, total: int):
    """z -> B z per output, B B^T the loss Hessian with respect to that output."""
    if kind is Loss.CROSS_ENTROPY:
        p = targets[0].double().softmax(1)
        s = p.sqrt()

        def factor(zs):
            z = zs[0].double()
            return [((s * z - p * (s * z).sum(1, keepdim=True)) / math.sqrt(total)).float()]
        return factor
    scales = [math.sqrt(2.0 / (t[0].numel() * total)) for t in targets]
    return lambda zs: [c * z for c, z in zip(scales, zs)]


def _sample(method: Method, terms, params, gen):
    """One Rademacher draw: per-layer estimates summed over all chunks."""
    import torch

    est = torch.zeros(len(params), dtype=torch.float64)
    if method is Method.HESSIAN:
        v = [_rademacher(p.shape, gen) for p in params]
        hv = None
        for grads in terms:
            part = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
            part = [torch.zeros_like(p) if x is None else x for p, x in zip(params, part)]
            hv = part if hv is None else [a + b for a, b in zip(hv, part)]
        return torch.stack([(a.double() * b.double()).sum() for a, b in zip(v, hv)])
    for outputs, factor in terms:
        u = factor([_rademacher(o.shape, gen) for o in outputs])
        g = torch.autograd.grad(outputs, params, grad_outputs=u, retain_graph=True, allow_unused=True)
        est += torch.stack([(x.double() ** 2).sum() if x is not None else torch.zeros((), dtype=torch.float64)
                            for x in g])
    return est
