"""Flax twin of ``keras/src/applications/resnet.py`` (ResNet v1, bottleneck blocks).

Submodules carry the Keras layer names: block ``conv2_block1`` holds ``0_conv`` .. ``3_bn``, so its
parameter paths read ``conv2_block1/1_conv/kernel`` for Keras' ``conv2_block1_1_conv``.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1.001e-5  # Keras ResNet's BatchNormalization epsilon


class Bottleneck(knn.Block):
    """``residual_block_v1``: 1x1 (carrying the stride), 3x3 'same', 1x1 x4, plus shortcut."""

    filters: int
    stride: int = 1
    conv_shortcut: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, **kw)
        if self.conv_shortcut:
            shortcut = knn.conv(x, 4 * self.filters, 1, strides=self.stride, name="0_conv", **kw)
            shortcut = bn(shortcut, name="0_bn")
        else:
            shortcut = x
        x = knn.conv(x, self.filters, 1, strides=self.stride, name="1_conv", **kw)
        x = nn.relu(bn(x, name="1_bn"))
        x = knn.conv(x, self.filters, 3, padding="same", name="2_conv", **kw)
        x = nn.relu(bn(x, name="2_bn"))
        x = knn.conv(x, 4 * self.filters, 1, name="3_conv", **kw)
        x = bn(x, name="3_bn")
        return nn.relu(shortcut + x)


class ResNet(knn.Application):
    """ResNet v1 with Keras' option names; ``stack_sizes`` picks the depth."""

    stack_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = knn.zero_pad(self.inputs(x), ((3, 3), (3, 3)))
        x = knn.conv(x, 64, 7, strides=2, name="conv1_conv", **kw)
        x = knn.batch_norm(x, name="conv1_bn", train=train, epsilon=EPSILON, **kw)
        x = self.tap(nn.relu(x))
        x = knn.zero_pad(x, ((1, 1), (1, 1)))
        x = knn.max_pool(x, 3, 2)
        for stack, (filters, blocks) in enumerate(zip((64, 128, 256, 512), self.stack_sizes)):
            name = f"conv{stack + 2}_block"
            x = Bottleneck(filters, stride=1 if stack == 0 else 2, name=f"{name}1", **kw)(x, train)
            x = knn.repeat(self, Bottleneck, [f"{name}{i}" for i in range(2, blocks + 1)], x,
                           train, filters=filters, conv_shortcut=False, **kw)
            self.tap(x)
        return self.top(x)


ResNet50 = partial(ResNet, stack_sizes=(3, 4, 6, 3))
ResNet101 = partial(ResNet, stack_sizes=(3, 4, 23, 3))
ResNet152 = partial(ResNet, stack_sizes=(3, 8, 36, 3))
