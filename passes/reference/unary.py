"""NumPy twins of the table-lookup kernels (elementwise functions of one input) and of PReLU.

Float semantics of the Relax ops a fused chain may contain are data: one line per op. An op in
`TABLE_OPS` is a reason to build a table; `CHAIN_OPS` (clamps, scalar arithmetic, comparisons)
may be part of a chain but alone are folded by other lowerings. A chain is a *program*: steps
`(op, operands, attrs)`, operand `["v", i]` = the value of step i (i = -1: the input), or a number.

Tables (compile time, float64): for each integer q of the input dtype,
    table[q - qmin] = clip(round(f(q * S_in) / S_out))   (round half up, as requantize)
NaN (e.g. log of a negative) -> 0, +-inf -> the dtype's limits. Run time: `lookup`, a gather.

Octave tables (an int32 input whose values span many octaves, e.g. a power spectrum into a log):
the index is the input's octave and the 7 bits after its leading one (`octave_index`), the entry
f at the value that index stands for (`octave_values`): relative input error <= 2^-8, any range.
"""

from __future__ import annotations

import json
import numpy as np
from scipy import special

from .kernels import INT_RANGE, requantize

# Relax op -> float semantics (x, *scalar operands, **attrs); every one of them is a table.
TABLE_OPS = {
    "relax.sigmoid": lambda x: special.expit(x),
    "relax.tanh": np.tanh,
    "relax.exp": np.exp,
    "relax.log": np.log,
    "relax.erf": special.erf,
    "relax.sqrt": np.sqrt,
    "relax.rsqrt": lambda x: 1.0 / np.sqrt(x),
    "relax.abs": np.abs,
    "relax.negative": np.negative,
    "relax.sign": np.sign,
    "relax.round": np.round,  # ONNX Round: half to even, as np.round
    "relax.floor": np.floor,
    "relax.ceil": np.ceil,
    "relax.square": np.square,
    "relax.power": np.power,
    "relax.nn.silu": lambda x: x * special.expit(x),
    "relax.nn.softplus": lambda x, beta, threshold: np.where(beta * x > threshold, x,
                                                             np.logaddexp(0.0, beta * x) / beta),
    "relax.nn.leakyrelu": lambda x, alpha: np.where(x >= 0, x, alpha * x),
    "relax.sin": np.sin, "relax.cos": np.cos, "relax.tan": np.tan,
    "relax.asin": np.arcsin, "relax.acos": np.arccos, "relax.atan": np.arctan,
    "relax.sinh": np.sinh, "relax.cosh": np.cosh,
    "relax.asinh": np.arcsinh, "relax.acosh": np.arccosh, "relax.atanh": np.arctanh,
    "relax.nn.selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
}
# Ops a chain may hold that do not by themselves call for a table (binary ones: scalar constant
# or both operands from the chain's input; one of two chain operands also makes a table).
CHAIN_OPS = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
    "relax.nn.relu": lambda x: np.maximum(x, 0.0),
    "relax.clip": np.clip,
    "relax.greater": np.greater,
    "relax.greater_equal": np.greater_equal,
    "relax.less": np.less,
    "relax.less_equal": np.less_equal,
    "relax.where": np.where,  # torch's atan2: where(x < 0, where(y > 0, a + pi, a - pi), a)
    "relax.astype": lambda x, dtype: np.asarray(x).astype(np.float64 if dtype.startswith("float") else dtype),
}
FLOAT_OPS = {**TABLE_OPS, **CHAIN_OPS}
# attributes of a Relax call passed to its NumPy twin as keywords
OP_ATTRS = {"relax.nn.leakyrelu": ("alpha",), "relax.nn.softplus": ("beta", "threshold"), "relax.astype": ("dtype",)}


def evaluate(program: str | list, x, y=None) -> np.ndarray:
    """Run a chain program (JSON text or steps) on the float input `x` (operand ["v", -1]) and, for a
    function of two inputs, `y` (["v", -2]), float64 throughout."""
    steps = json.loads(program) if isinstance(program, str) else program
    values = {-1: np.asarray(x, np.float64), -2: None if y is None else np.asarray(y, np.float64)}
    with np.errstate(all="ignore"):
        for i, (op, operands, attrs) in enumerate(steps):
            args = [values[a[1]] if isinstance(a, list) else a for a in operands]
            values[i] = np.asarray(FLOAT_OPS[op](*args, **attrs))
    return values[len(steps) - 1].astype(np.float64)


def gelu(x) -> np.ndarray:
    """GELU, erf form (`relax.nn.gelu`, ONNX Gelu): x * Phi(x)."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def gelu_tanh(x) -> np.ndarray:
    """GELU, tanh approximation (`relax.nn.gelu_tanh`, ONNX Gelu approximate="tanh")."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def grid(in_dtype: str) -> np.ndarray:
    """Every integer of `in_dtype`, ascending (the table's index order)."""
    lo, hi = INT_RANGE[in_dtype]
    return np.arange(lo, hi + 1, dtype=np.int64)


def output_params(image: np.ndarray, out_range: tuple[float, float], unsigned_ok: bool = True,
                  wide: bool = False) -> tuple[float, str]:
    """(S_out, dtype) for a table whose exact float values over the input grid are `image`:
    uint8 when the image is >= 0, else int8 (`wide`: int16, covering twice the calibrated range);
    max |y| from the calibrated `out_range` or from the image, whichever is smaller (1.0 for an
    all-zero output)."""
    finite = image[np.isfinite(image)]
    dtype = "uint8" if unsigned_ok and (finite.size == 0 or finite.min() >= 0) else "int8"
    dtype = "int16" if wide else dtype
    amax_image = float(np.abs(finite).max(initial=0.0))
    amax = min(max(abs(out_range[0]), abs(out_range[1])) * (2.0 if wide else 1.0), amax_image)
    return (amax / INT_RANGE[dtype][1] if amax > 0 else 1.0), dtype


def build_table(image: np.ndarray, out_scale: float, out_dtype: str) -> np.ndarray:
    """clip(round(image / S_out)) with NaN -> 0 and +-inf -> the dtype's limits."""
    lo, hi = INT_RANGE[out_dtype]
    with np.errstate(all="ignore"):
        q = np.floor(np.where(np.isnan(image), 0.0, image) / out_scale + 0.5)  # round half up
    return np.clip(q, lo, hi).astype(out_dtype)


OCTAVE_BITS = 7  # mantissa bits of the octave table: an input's relative error <= 2^-8 past 2^7


def octave_values(bits: int = OCTAVE_BITS) -> np.ndarray:
    """The int32 magnitudes each octave-table entry stands for: entry 0 for v <= 0, then for each
    octave e (v in [2^e, 2^(e+1)), e = 0..30) and mantissa m (the `bits` bits after the leading
    one), 2^e (1 + m / 2^bits): exact while e <= bits, else the middle of the bin (+ 1/2)."""
    e = np.repeat(np.arange(31), 2**bits).astype(np.float64)
    m = np.tile(np.arange(2**bits), 31).astype(np.float64)
    mid = np.where(e > bits, 0.5, 0.0)
    return np.concatenate([[0.0], np.exp2(e) * (1.0 + (m + mid) / 2**bits)])


def octave_index(v, bits: int = OCTAVE_BITS) -> np.ndarray:
    """The octave-table index of int32 `v` (the run-time kernel's arithmetic): 0 for v <= 0, else
    1 + e 2^bits + m, e = floor(log2 v) (found by halving: 16, 8, 4, 2, 1) and m the bits after
    the leading one (v shifted so that the leading one lands at bit `bits`)."""
    v = np.asarray(v, np.int64)
    pos = np.maximum(v, 1)
    e = np.zeros_like(pos)
    for k in (16, 8, 4, 2, 1):
        e = np.where((pos >> (e + k)) > 0, e + k, e)
    top = np.where(e >= bits, pos >> np.maximum(e - bits, 0), pos << np.maximum(bits - e, 0))
    return np.where(v <= 0, 0, 1 + e * 2**bits + (top - 2**bits))


def lookup(q, table: np.ndarray, in_dtype: str) -> np.ndarray:
    """table[q - qmin]: the run-time kernel."""
    return table[np.asarray(q, np.int64) - INT_RANGE[in_dtype][0]]


def pair_lookup(qx, qy, table: np.ndarray, x_dtype: str, y_dtype: str) -> np.ndarray:
    """table[(qx - qmin_x) * 256 + (qy - qmin_y)]: the run-time kernel of a function of two 8-bit inputs."""
    return table[(np.asarray(qx, np.int64) - INT_RANGE[x_dtype][0]) * 256
                 + np.asarray(qy, np.int64) - INT_RANGE[y_dtype][0]]


def prelu(q, m_pos, s_pos, m_neg, s_neg, sign_neg, out_dtype: str) -> np.ndarray:
    """q >= 0: rq(q, m_pos, s_pos); q < 0: rq(q * sign_neg, m_neg, s_neg) with per-channel
    m_neg, s_neg, sign_neg = sign(alpha) pre-shaped to broadcast along the channel axis."""
    q = np.asarray(q, np.int64)
    lo, hi = INT_RANGE[out_dtype]
    pos = requantize(q, m_pos, s_pos, lo, hi, "int64")
    neg = requantize(q * np.asarray(sign_neg, np.int64), m_neg, s_neg, lo, hi, "int64")
    return np.where(q >= 0, pos, neg).astype(out_dtype)


def scale_free(program: str | list) -> bool:
    """Whether a two-input program is unchanged when both inputs are multiplied by one positive number
    (homogeneous of degree 0: atan2 and its quadrant fix-ups, y / x, x / hypot(x, y)): checked on
    points spread over eight decades, zeros and both signs included."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 256)) * np.exp(rng.uniform(-9, 9, (2, 256)))
    x[:16], y[16:32] = 0.0, 0.0
    base = evaluate(program, x, y)
    for k in (2.0**-9, 0.3, 7.0, 2.0**11):
        if not np.allclose(evaluate(program, k * x, k * y), base, rtol=1e-9, atol=1e-12, equal_nan=True):
            return False
    return True


PAIR_THRESHOLDS = np.array([128] + [255 << j for j in range(16)], np.int64)  # m >= t: one more right shift


def normalize_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two integer tensors on one scale, shifted right together per element (round half up) by the
    fewest bits k that bring the larger magnitude m within 7 bits: k counts the thresholds 128,
    255, 510, ... that m reaches (m < 255 * 2^(k-1) gives round(m / 2^k) <= 127). For a scale-free
    function of the pair, the 8-bit pair keeps 7 significant bits of each element's own size."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    m = np.maximum(np.abs(a), np.abs(b))
    k = (m[..., None] >= PAIR_THRESHOLDS).sum(-1)
    half = (1 << k) >> 1
    return ((a + half) >> k).astype(np.int8), ((b + half) >> k).astype(np.int8)
