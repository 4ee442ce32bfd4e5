"""Flax building blocks shared by the family plugins: the twins of the Keras layers the built-in
layer rules translate, and the Keras behaviours a naive port gets wrong.

Plugins use them as ``from kjax_core import nn as knn``; every name is re-exported here from:

- :mod:`.layers`: activations, padding, pooling, Conv, Dense, 1x1 convolutions as products;
- :mod:`.convolution`: Keras Conv2D as one call that picks the fastest exact formulation;
- :mod:`.depthwise`: DepthwiseConv2D as shifted sums, SeparableConv2D;
- :mod:`.normalization`: BatchNormalization, Normalization and their statistics helpers;
- :mod:`.blocks`: blocks the applications share (squeeze-excite, ...);
- :mod:`.application`: the bases of a family's modules and Keras' classifier head.
"""

from .application import Application, Block, classifier_head
from .blocks import squeeze_excite
from .convolution import conv
from .depthwise import DepthwiseConv, SeparableConv2D, depthwise_conv, depthwise_shift_add
from .layers import (
    ACTIVATIONS, Conv, Dense, Dtype, Pad, PointwiseConv, ShapeCheckedParams, activation, avg_pool,
    correct_pad, kernel_and_bias, max_pool, zero_pad,
)
from .normalization import (
    BatchNorm, Normalization, batch_moments, batch_norm, batch_norm_multiplier, moving_average,
    normalization_std, normalize, statistics_dtype,
)

__all__ = [
    "ACTIVATIONS", "Application", "BatchNorm", "Block", "Conv", "Dense", "DepthwiseConv", "Dtype",
    "Normalization", "Pad", "PointwiseConv", "SeparableConv2D", "ShapeCheckedParams", "activation",
    "avg_pool", "batch_moments", "batch_norm", "batch_norm_multiplier", "classifier_head", "conv",
    "correct_pad", "depthwise_conv", "depthwise_shift_add", "kernel_and_bias", "max_pool",
    "moving_average", "normalization_std", "normalize", "squeeze_excite", "statistics_dtype",
    "zero_pad",
]
