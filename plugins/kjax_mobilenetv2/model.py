"""Flax twin of ``keras/src/applications/mobilenet_v2.py``.

Each inverted residual block is a submodule named after its Keras prefix: ``block_1`` holds
``expand``, ``expand_BN``, ``depthwise``, ``depthwise_BN``, ``project``, ``project_BN`` (Keras'
``block_1_expand`` ...); block 0 has no expansion and is Keras' ``expanded_conv_``.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3  # Keras MobileNetV2's BatchNormalization epsilon
MOMENTUM = 0.999  # and momentum

# (filters, stride, expansion) of blocks 0..16, as Keras' MobileNetV2 lists them.
BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)


class InvertedResBlock(knn.Block):
    """``_inverted_res_block``: 1x1 expand (not in block 0), 3x3 depthwise, 1x1 linear project,
    residual add when shapes allow. A strided depthwise is preceded by Keras' correct_pad."""

    expansion: int
    stride: int
    alpha: float
    filters: int
    block_id: int

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)
        in_channels = inputs.shape[-1]
        pointwise_filters = knn.make_divisible(int(self.filters * self.alpha), 8)
        x = inputs
        if self.block_id:
            x = knn.conv(x, self.expansion * in_channels, 1, padding="same", use_bias=False,
                         name="expand", **kw)
            x = jax.nn.relu6(bn(x, name="expand_BN"))
            if self.stride > 1:
                self.tap(x)  # the last map before the strided depthwise
        x = knn.correct_pad_conv(x, 3, strides=self.stride, layer=knn.depthwise_conv,
                                 use_bias=False, name="depthwise", **kw)
        x = jax.nn.relu6(bn(x, name="depthwise_BN"))
        x = knn.conv(x, pointwise_filters, 1, padding="same", use_bias=False, name="project", **kw)
        x = bn(x, name="project_BN")
        if in_channels == pointwise_filters and self.stride == 1:
            return inputs + x
        return x


class MobileNetV2(knn.Application):
    """MobileNetV2 with Keras' option names; ``alpha`` is the width multiplier."""

    alpha: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)
        x = self.inputs(x)
        x = knn.conv(x, knn.make_divisible(32 * self.alpha, 8), 3, strides=2, padding="same",
                     use_bias=False, name="Conv1", **kw)
        x = jax.nn.relu6(bn(x, name="bn_Conv1"))
        for block_id, (filters, stride, expansion) in enumerate(BLOCKS):
            x = InvertedResBlock(
                expansion=expansion,
                stride=stride,
                alpha=self.alpha,
                filters=filters,
                block_id=block_id,
                name=f"block_{block_id}" if block_id else "expanded_conv",
                **kw,
            )(x, train)
        # No alpha on the last conv, except that widths above 1.0 widen it.
        last_block_filters = knn.make_divisible(1280 * self.alpha, 8) if self.alpha > 1.0 else 1280
        x = knn.conv(x, last_block_filters, 1, use_bias=False, name="Conv_1", **kw)
        x = jax.nn.relu6(bn(x, name="Conv_1_bn"))
        return self.top(x)
