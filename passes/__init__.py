"""Passes: float Relax -> calibrated, integer-only Relax, plus its verifier."""

from .calibrate import calibrate
from .conv1d_as_conv2d import conv1d_as_conv2d
from .conv3d_as_conv2d import conv3d_as_conv2d
from .conv3d_transpose_as_conv2d import conv3d_transpose_as_conv2d
from .pool1d_as_pool2d import pool1d_as_pool2d
from .pool3d_as_pool2d import pool3d_as_pool2d
from .tall_conv_as_wide import tall_conv_as_wide
from .full_width_conv_as_channels import full_width_conv_as_channels
from .decompose_batchnorm import decompose_batchnorm
from .fold_batchnorm import fold_batchnorm
from .affine_before_max import affine_before_max
from .merge_parallel_convs import merge_parallel_convs
from .merge_shared_steps import merge_shared_steps
from .fuse_gelu import fuse_gelu
from .fuse_prelu import fuse_prelu
from .fuse_layernorm import fuse_layernorm
from .fuse_written_layernorm import fuse_written_layernorm
from .keepdims_reductions import keepdims_reductions
from .fuse_l2_normalize import fuse_l2_normalize
from .fuse_rmsnorm import fuse_rmsnorm
from .fuse_softmax import fuse_softmax
from .sum_over_stack import sum_over_stack
from .split_of_concat import split_of_concat
from .unary_chains_through_layout import unary_chains_through_layout
from .fuse_binary_chains import fuse_binary_chains
from .fuse_unary_chains import fuse_unary_chains
from .lowering import QuantConfig
from .observers import OBSERVERS
from .unique_names import unique_binding_names
from .quantize_to_integer import BOUNDARY_ATTR, LAYERS_ATTR, QuantizeToInteger
from .verify_integer_only import IntegerOnlyReport, verify_integer_only

__all__ = ["BOUNDARY_ATTR", "LAYERS_ATTR", "OBSERVERS", "IntegerOnlyReport", "QuantConfig", "QuantizeToInteger",
           "affine_before_max", "bind_weights", "calibrate", "conv1d_as_conv2d", "conv3d_as_conv2d", "conv3d_transpose_as_conv2d", "pool3d_as_pool2d", "decompose_batchnorm", "merge_parallel_convs", "merge_shared_steps", "pool1d_as_pool2d", "fold_batchnorm", "full_width_conv_as_channels", "tall_conv_as_wide", "fuse_gelu", "fuse_prelu",
           "fuse_layernorm", "fuse_written_layernorm", "keepdims_reductions", "fuse_l2_normalize", "fuse_rmsnorm", "fuse_softmax", "fuse_binary_chains", "fuse_unary_chains", "sum_over_stack", "split_of_concat", "unary_chains_through_layout",
           "verify_integer_only"]


def bind_weights(mod, weights):
    """Bind the weights (trailing parameters of `main`) as constants, fold constants and
    BatchNorms, fuse erf-GELUs, decomposed LayerNorms and chains of
    elementwise ops on one or two inputs (one table each): the float module calibration and lowering work on."""
    import tvm
    from tvm import relax

    from frontends.fold_constant_calls import fold_constant_calls
    from frontends.fold_small_constants import fold_small_constants

    params = mod["main"].params
    bound = {p: tvm.runtime.tensor(w) for p, w in zip(params[len(params) - len(weights):], weights)}
    seq = tvm.transform.Sequential([relax.transform.BindParams("main", bound), fold_small_constants,
                                    fold_constant_calls, merge_shared_steps,
                                    conv1d_as_conv2d, conv3d_as_conv2d, conv3d_transpose_as_conv2d, pool1d_as_pool2d,
                                    pool3d_as_pool2d, fold_batchnorm, decompose_batchnorm, affine_before_max,
                                    merge_parallel_convs,
                                    full_width_conv_as_channels, tall_conv_as_wide, keepdims_reductions, fuse_gelu, fuse_prelu, fuse_layernorm, fuse_written_layernorm,
                                    fuse_l2_normalize, fuse_rmsnorm, fuse_softmax,
                                    fuse_binary_chains, fuse_unary_chains,
                                    relax.transform.DeadCodeElimination(),  # the chains' dead steps
                                    sum_over_stack, split_of_concat, relax.transform.DeadCodeElimination(),
                                    unary_chains_through_layout,
                                    fold_constant_calls,
                                    relax.transform.DeadCodeElimination(), unique_binding_names])
    return seq(mod)
