"""Flax building blocks shared by the family plugins: the twins of the Keras layers the built-in
layer rules translate, and the Keras behaviours a naive port gets wrong.

Plugins use them as ``from kjax_core import nn as knn``; every name is re-exported here from:

- :mod:`.layers`: activations (hard sigmoid/swish, exact gelu), padding, pooling, Conv, Dense, 1x1
  convolutions as products;
- :mod:`.convolution`: Keras Conv2D as one call that picks the fastest exact formulation;
- :mod:`.depthwise`: DepthwiseConv2D as shifted sums, SeparableConv2D;
- :mod:`.grouped`: grouped Conv2D (RegNet) computed group by group;
- :mod:`.normalization`: BatchNormalization (Keras 3's and tf_keras'), LayerNormalization,
  Normalization, constant Rescaling / Normalization, and their statistics helpers;
- :mod:`.blocks`: blocks the applications share (width rounding, correct-pad strided convolution,
  drop connect, squeeze-excite, LayerScale);
- :mod:`.repeat`: runs of identical blocks, scanned in the predictor's inference model;
- :mod:`.application`: the bases of a family's modules and Keras' classifier heads.
"""

from .application import Application, Block, classifier_head
from .application import (
    conv_classifier_head, flatten_classifier_head, global_pool, layer_norm_classifier_head,
)
from .blocks import (
    LayerScale, SqueezeExcite, correct_pad_conv, drop_connect, make_divisible, squeeze_excite,
)
from .convolution import conv, conv_module
from .repeat import repeat, stage
from .grouped import GroupedConv, grouped_conv
from .depthwise import DepthwiseConv, SeparableConv2D, depthwise_conv, depthwise_shift_add
from .layers import (
    ACTIVATIONS, TRAINING_MODES, Conv, ConvModule, Dense, Dropout, Dtype, Pad, PointwiseConv, ShapeCheckedParams, activation,
    avg_pool, correct_pad, enclosing_application, gelu, hard_sigmoid, hard_swish, kernel_and_bias,
    max_pool, trains, zero_pad,
)
from .normalization import (
    BatchNorm, LayerNorm, Normalization, TFKerasBatchNorm, batch_moments, batch_norm,
    batch_norm_multiplier, moving_average, normalization_std, normalize, normalize_constant,
    rescaling, statistics_dtype,
)

__all__ = [
    "ACTIVATIONS", "Application", "BatchNorm", "Block", "Conv", "ConvModule", "Dense", "DepthwiseConv", "Dtype",
    "LayerNorm", "LayerScale", "Normalization", "Pad", "PointwiseConv", "SeparableConv2D",
    "ShapeCheckedParams", "SqueezeExcite", "TFKerasBatchNorm", "activation", "avg_pool",
    "batch_moments", "batch_norm", "batch_norm_multiplier", "classifier_head", "conv",
    "correct_pad", "correct_pad_conv", "depthwise_conv", "depthwise_shift_add", "drop_connect",
    "gelu", "hard_sigmoid", "hard_swish", "kernel_and_bias", "make_divisible", "max_pool",
    "moving_average", "normalization_std", "normalize", "normalize_constant", "rescaling",
    "squeeze_excite", "statistics_dtype", "zero_pad",
]
__all__ += [
    "GroupedConv", "conv_classifier_head", "conv_module", "flatten_classifier_head", "global_pool",
    "grouped_conv", "layer_norm_classifier_head",
    "Dropout", "TRAINING_MODES", "enclosing_application", "trains", "repeat", "stage",
]
