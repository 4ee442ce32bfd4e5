"""Flax twin of ``keras/src/applications/efficientnet_v2.py`` (EfficientNetV2 B0-B3, S, M, L).

Each block is a submodule named after its Keras prefix: ``block2b`` holds ``expand_conv``,
``expand_bn``, ``dwconv2``, ``bn``, ``se_reduce``, ``se_expand``, ``project_conv``,
``project_bn`` (Keras' ``block2b_expand_conv`` ...). Unlike EfficientNet (v1), every strided
convolution is Keras 'same' (TF SAME: the extra pad at the end), so no correct_pad; BatchNorm has
Keras' default epsilon 1e-3 and momentum 0.9 (``bn_momentum``).

In-graph preprocessing (``include_preprocessing``), chosen by Keras from the model name: the B
variants with 3 channels Rescaling(1/255) then Normalization with the ImageNet mean and variance
as constants (the layer has no weights); S, M, L (and B with other than 3 channels)
Rescaling(1/128, offset=-1).

Dropout (before the classifier) and stochastic depth (``Dropout(survival_probability,
noise_shape=(None, 1, 1, 1))``: Keras passes what it calls a survival probability as the *drop*
rate, ``drop_connect_rate * b / blocks``, with ``blocks`` the repeats *before* depth scaling) act
only with ``train=True``, which then needs a ``"dropout"`` rng.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
from flax import linen as nn

from kjax_core import nn as knn

BN_EPSILON = 1e-3  # Keras' default BatchNormalization epsilon
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_VARIANCE = (0.229**2, 0.224**2, 0.225**2)

# Keras' DEFAULT_BLOCKS_ARGS: (kernel_size, num_repeat, input_filters, output_filters,
# expand_ratio, se_ratio, strides, conv_type); conv_type 1 is FusedMBConv, 0 MBConv.
_B = (
    (3, 1, 32, 16, 1, 0.0, 1, 1),
    (3, 2, 16, 32, 4, 0.0, 2, 1),
    (3, 2, 32, 48, 4, 0.0, 2, 1),
    (3, 3, 48, 96, 4, 0.25, 2, 0),
    (3, 5, 96, 112, 6, 0.25, 1, 0),
    (3, 8, 112, 192, 6, 0.25, 2, 0),
)
BLOCKS_ARGS = {
    "efficientnetv2-s": (
        (3, 2, 24, 24, 1, 0.0, 1, 1),
        (3, 4, 24, 48, 4, 0.0, 2, 1),
        (3, 4, 48, 64, 4, 0.0, 2, 1),
        (3, 6, 64, 128, 4, 0.25, 2, 0),
        (3, 9, 128, 160, 6, 0.25, 1, 0),
        (3, 15, 160, 256, 6, 0.25, 2, 0),
    ),
    "efficientnetv2-m": (
        (3, 3, 24, 24, 1, 0.0, 1, 1),
        (3, 5, 24, 48, 4, 0.0, 2, 1),
        (3, 5, 48, 80, 4, 0.0, 2, 1),
        (3, 7, 80, 160, 4, 0.25, 2, 0),
        (3, 14, 160, 176, 6, 0.25, 1, 0),
        (3, 18, 176, 304, 6, 0.25, 2, 0),
        (3, 5, 304, 512, 6, 0.25, 1, 0),
    ),
    "efficientnetv2-l": (
        (3, 4, 32, 32, 1, 0.0, 1, 1),
        (3, 7, 32, 64, 4, 0.0, 2, 1),
        (3, 7, 64, 96, 4, 0.0, 2, 1),
        (3, 10, 96, 192, 4, 0.25, 2, 0),
        (3, 19, 192, 224, 6, 0.25, 1, 0),
        (3, 25, 224, 384, 6, 0.25, 2, 0),
        (3, 7, 384, 640, 6, 0.25, 1, 0),
    ),
    "efficientnetv2-b0": _B,
    "efficientnetv2-b1": _B,
    "efficientnetv2-b2": _B,
    "efficientnetv2-b3": _B,
}


def round_filters(filters: float, width_coefficient: float, min_depth: int | None,
                  depth_divisor: int) -> int:
    """Keras' ``round_filters`` of EfficientNetV2: to the nearest multiple of ``depth_divisor``,
    at least ``min_depth``; unlike v1 (and :func:`kjax_core.nn.make_divisible`) never bumped up
    when rounding lost more than 10%."""
    filters *= width_coefficient
    minimum_depth = min_depth or depth_divisor
    rounded = int(filters + depth_divisor / 2) // depth_divisor * depth_divisor
    return int(max(minimum_depth, rounded))


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return int(math.ceil(depth_coefficient * repeats))


class MBConvBlock(knn.Block):
    """Keras' ``MBConvBlock``: 1x1 expansion, depthwise kxk (with the stride), squeeze-excite,
    1x1 projection; residual where the shape is kept."""

    input_filters: int
    output_filters: int
    expand_ratio: int = 1
    kernel_size: int = 3
    strides: int = 1
    se_ratio: float = 0.0
    bn_momentum: float = 0.9
    activation: str = "swish"
    survival_probability: float = 0.8  # Keras' name; used as the drop rate, as Keras does

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=BN_EPSILON, momentum=self.bn_momentum,
                     **kw)
        act = knn.activation(self.activation)
        filters = self.input_filters * self.expand_ratio
        x = inputs
        if self.expand_ratio != 1:
            x = knn.conv(x, filters, 1, padding="same", use_bias=False, name="expand_conv", **kw)
            x = act(bn(x, name="expand_bn"))
            if self.strides > 1:
                self.tap(x)  # the last map before the strided depthwise
        x = knn.depthwise_conv(x, kernel_size=self.kernel_size, strides=self.strides,
                               padding="same", use_bias=False, name="dwconv2", **kw)
        x = act(bn(x, name="bn"))
        if 0 < self.se_ratio <= 1:
            filters_se = max(1, int(self.input_filters * self.se_ratio))
            x = knn.squeeze_excite(x, filters_se, reduce_name="se_reduce", expand_name="se_expand",
                                   activation_name=self.activation, **kw)
        x = knn.conv(x, self.output_filters, 1, padding="same", use_bias=False,
                     name="project_conv", **kw)
        x = bn(x, name="project_bn")
        return _residual(x, inputs, self.strides, self.input_filters, self.output_filters,
                         self.survival_probability, train)


class FusedMBConvBlock(knn.Block):
    """Keras' ``FusedMBConvBlock``: the expansion and the depthwise convolution fused into one
    kxk convolution (with the stride); without expansion the projection is that kxk convolution,
    followed by the activation."""

    input_filters: int
    output_filters: int
    expand_ratio: int = 1
    kernel_size: int = 3
    strides: int = 1
    se_ratio: float = 0.0
    bn_momentum: float = 0.9
    activation: str = "swish"
    survival_probability: float = 0.8

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=BN_EPSILON, momentum=self.bn_momentum,
                     **kw)
        act = knn.activation(self.activation)
        filters = self.input_filters * self.expand_ratio
        x = inputs
        if self.expand_ratio != 1:
            x = knn.conv(x, filters, self.kernel_size, strides=self.strides, padding="same",
                         use_bias=False, name="expand_conv", **kw)
            x = act(bn(x, name="expand_bn"))
        if 0 < self.se_ratio <= 1:
            filters_se = max(1, int(self.input_filters * self.se_ratio))
            x = knn.squeeze_excite(x, filters_se, reduce_name="se_reduce", expand_name="se_expand",
                                   activation_name=self.activation, **kw)
        fused = self.expand_ratio == 1
        x = knn.conv(x, self.output_filters, self.kernel_size if fused else 1,
                     strides=self.strides if fused else 1, padding="same", use_bias=False,
                     name="project_conv", **kw)
        x = bn(x, name="project_bn")
        if fused:
            x = act(x)
        return _residual(x, inputs, self.strides, self.input_filters, self.output_filters,
                         self.survival_probability, train)


def _residual(x, inputs, strides, input_filters, output_filters, rate, train):
    """Both blocks' end: where the shape is kept, stochastic depth (``Dropout(rate,
    noise_shape=(None, 1, 1, 1))`` named ``drop``, absent at rate 0) and the shortcut."""
    if strides == 1 and input_filters == output_filters:
        x = knn.drop_connect(x, rate, train=train, name="drop")
        x = x + inputs
    return x


class EfficientNetV2(knn.Application):
    """EfficientNetV2 with Keras' option names; the variants fix the coefficients and the Keras
    model name (``model_name``), which selects the blocks and the preprocessing as in Keras."""

    width_coefficient: float
    depth_coefficient: float
    model_name: str
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    depth_divisor: int = 8
    min_depth: int = 8
    bn_momentum: float = 0.9
    activation: str = "swish"
    blocks_args: Sequence[tuple] | None = None  # None: Keras' "default", by model_name
    include_preprocessing: bool = True

    def round_filters(self, filters: int) -> int:
        """Keras' ``round_filters`` with this model's coefficients."""
        return round_filters(filters, self.width_coefficient, self.min_depth, self.depth_divisor)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=BN_EPSILON, momentum=self.bn_momentum,
                     **kw)
        act = knn.activation(self.activation)
        blocks_args = self.blocks_args or BLOCKS_ARGS[self.model_name]
        x = self.inputs(x)
        if self.include_preprocessing:
            if self.model_name.split("-")[-1].startswith("b") and x.shape[-1] == 3:
                x = knn.rescaling(x, 1.0 / 255)
                x = knn.normalize_constant(x, IMAGENET_MEAN, IMAGENET_VARIANCE)
            else:
                x = knn.rescaling(x, 1.0 / 128.0, -1.0)

        x = knn.conv(x, self.round_filters(blocks_args[0][2]), 3, strides=2, padding="same",
                     use_bias=False, name="stem_conv", **kw)
        x = self.tap(act(bn(x, name="stem_bn")))

        b = 0
        # Keras divides by the repeats as given, before depth scaling (v1 after).
        blocks = float(sum(args[1] for args in blocks_args))
        for i, args in enumerate(blocks_args):
            kernel_size, num_repeat, filters_in, filters_out, expand_ratio, se_ratio, strides, \
                conv_type = args
            if num_repeat <= 0:
                raise ValueError(f"The number of repeats in `EfficientNetV2` must be > 0. "
                                 f"Received: num_repeat={num_repeat}")
            filters_in = self.round_filters(filters_in)
            filters_out = self.round_filters(filters_out)
            repeats = round_repeats(num_repeat, self.depth_coefficient)
            block = partial((MBConvBlock, FusedMBConvBlock)[conv_type], expand_ratio=expand_ratio,
                            kernel_size=kernel_size, se_ratio=se_ratio,
                            bn_momentum=self.bn_momentum, activation=self.activation, **kw)
            rates = [self.drop_connect_rate * (b + j) / blocks for j in range(repeats)]
            names = [f"block{i + 1}{chr(j + 97)}" for j in range(repeats)]
            x = knn.stage(self, block, names, x, train,
                          first={"input_filters": filters_in, "strides": strides},
                          input_filters=filters_out, output_filters=filters_out, strides=1,
                          inference_only={"survival_probability": rates})
            self.tap(x)
            b += repeats

        x = knn.conv(x, self.round_filters(1280), 1, padding="same", use_bias=False,
                     name="top_conv", **kw)
        x = act(bn(x, name="top_bn"))
        return self.top(x, dropout_rate=self.dropout_rate, train=train)


# (width_coefficient, depth_coefficient, Keras model name) as Keras' constructors pass them;
# dropout_rate and drop_connect_rate are EfficientNetV2's defaults (0.2) for all seven.
EfficientNetV2B0 = partial(EfficientNetV2, 1.0, 1.0, "efficientnetv2-b0")
EfficientNetV2B1 = partial(EfficientNetV2, 1.0, 1.1, "efficientnetv2-b1")
EfficientNetV2B2 = partial(EfficientNetV2, 1.1, 1.2, "efficientnetv2-b2")
EfficientNetV2B3 = partial(EfficientNetV2, 1.2, 1.4, "efficientnetv2-b3")
EfficientNetV2S = partial(EfficientNetV2, 1.0, 1.0, "efficientnetv2-s")
EfficientNetV2M = partial(EfficientNetV2, 1.0, 1.0, "efficientnetv2-m")
EfficientNetV2L = partial(EfficientNetV2, 1.0, 1.0, "efficientnetv2-l")
