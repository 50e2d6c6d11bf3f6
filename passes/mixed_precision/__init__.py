"""Mixed-precision weights (HAWQ-V3; DESIGN.md section 2): per-layer Hessian-trace
sensitivity (`sensitivity.py`, estimators in `hutchinson.py`, torch evaluation of the
ONNX graph in `onnx_torch.py`) and the bit-width ILP (`ilp.py`).

    report = compute_sensitivity("model.onnx", samples)         # cached on disk
    layers = LayerCost.from_report(report, latency_table)       # latency optional
    choice = allocate_bits(layers, Limits(max_size_mb=3.5))     # Allocation.bits: {ONNX weight name: bits}
"""

from .ilp import (
    Allocation,
    LayerCost,
    Limits,
    Metric,
    allocate_bits,
    pareto_front,
    plot_pareto,
)
from .sensitivity import (
    LayerSensitivity,
    Loss,
    Method,
    SensitivityConfig,
    SensitivityReport,
    compute_sensitivity,
    match_relax_layers,
)

__all__ = ["Allocation", "LayerCost", "LayerSensitivity", "Limits", "Loss", "Method", "Metric", "SensitivityConfig",
           "SensitivityReport", "allocate_bits", "compute_sensitivity", "match_relax_layers", "pareto_front",
           "plot_pareto"]
