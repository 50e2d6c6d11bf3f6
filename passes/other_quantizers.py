"""Which ONNX ops two other int8 toolchains quantize: data for the README's coverage table.

ORT_QDQ: the op types onnxruntime's `quantize_static` quantizes in QDQ format when
`op_types_to_quantize` is not given: the keys of `QDQRegistry` and `QLinearOpsRegistry` in
onnxruntime/python/tools/quantization/registry.py (`quantize_static` takes their union;
onnxruntime/python/tools/quantization/quantize.py), read from the installed onnxruntime
ORT_VERSION. Ops of `QDQRegistry` have their own QDQ handler; the others get Q/DQ around every
input and output. Quantized means Q/DQ nodes are inserted; onnxruntime's CPU provider then runs
some of them as int8 kernels and the rest as DequantizeLinear -> float op -> QuantizeLinear.

TFLITE_INT8: for each ONNX op intq accepts, the TFLite builtin ops it converts to that TFLite's
8-bit quantization specification lists with int8 kernels ("int8 quantized operator
specifications" in tensorflow/lite/g3doc/performance/quantization_spec.md, published as
https://www.tensorflow.org/lite/performance/quantization_spec; read at tensorflow/tensorflow
commit 1b32f3ffc46d668fabc9b1a971a57d80d8ed1ff9). The spec is the documented contract, not the
full kernel list: TFLite has int8 kernels for more ops than it documents (e.g. HARD_SWISH,
LEAKY_RELU, PRELU); those are not claimed here. Relu and Clip have no entry of their own in the
spec: the converter fuses them into the preceding op as a fused activation (RELU, RELU6,
RELU_N1_TO_1 of TFLite's schema), and folds BatchNormalization into the convolution.
"""

from __future__ import annotations

ORT_VERSION = "1.32.0"
ORT_QDQ = frozenset({
    # QDQRegistry
    "Conv", "ConvTranspose", "Gemm", "Clip", "Relu", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
    "Resize", "MaxPool", "AveragePool", "Slice", "Pad", "MatMul", "Split", "Gather", "GatherElements", "Where",
    "InstanceNormalization", "LayerNormalization", "BatchNormalization", "TopK", "CumSum",
    # QLinearOpsRegistry (and its CommonOpsRegistry) beyond those
    "ArgMax", "Add", "Mul", "LeakyRelu", "Sigmoid", "GlobalAveragePool", "Concat", "Softmax",
    "EmbedLayerNormalization",
})

FUSED, FOLDED = "fused activation", "folded into CONV_2D"
TFLITE_INT8: dict[str, str] = {
    "Add": "ADD",
    "ArgMax": "ARG_MAX",
    "AveragePool": "AVERAGE_POOL_2D",
    "BatchNormalization": FOLDED,
    "Clip": FUSED,
    "Concat": "CONCATENATION",
    "Conv": "CONV_2D, DEPTHWISE_CONV_2D",
    "Equal": "EQUAL",
    "Flatten": "RESHAPE",
    "Gather": "GATHER",
    "Gemm": "FULLY_CONNECTED",
    "GlobalAveragePool": "MEAN",
    "Greater": "GREATER",
    "GreaterOrEqual": "GREATER_EQUAL",
    "Less": "LESS",
    "LessOrEqual": "LESS_EQUAL",
    "LogSoftmax": "LOG_SOFTMAX",
    "MatMul": "FULLY_CONNECTED (constant weights)",
    "Max": "MAXIMUM",
    "MaxPool": "MAX_POOL_2D",
    "Min": "MINIMUM",
    "Mul": "MUL",
    "Pad": "PAD, PADV2",
    "ReduceMean": "MEAN",
    "Relu": FUSED,
    "Reshape": "RESHAPE",
    "Resize": "RESIZE_BILINEAR (bilinear only)",
    "Sigmoid": "LOGISTIC",
    "Slice": "SLICE (no steps)",
    "Softmax": "SOFTMAX",
    "SpaceToDepth": "SPACE_TO_DEPTH",
    "Squeeze": "SQUEEZE",
    "Sub": "SUB",
    "Tanh": "TANH",
    "Transpose": "TRANSPOSE",
    "Unsqueeze": "RESHAPE",
    "Upsample": "RESIZE_BILINEAR (bilinear only)",
}


def installed_ort_qdq() -> frozenset[str]:
    """The same set read from the installed onnxruntime (to check ORT_QDQ against it)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)
