"""Flax twin of ResNetV2 (``keras/src/applications/resnet_v2.py``, built by ``resnet.ResNet`` with
``preact=True`` from ``residual_block_v2`` / ``stack_residual_blocks_v2``).

Pre-activation bottleneck blocks: each block starts with ``preact_bn`` + relu; the stride sits in the
LAST block of each stack (its 3x3 conv and a ``MaxPooling2D(1, strides)`` shortcut); the stem conv has
a bias and no BatchNorm (the max pooling after it pads with zeros over values that may be negative);
``post_bn`` + relu close the network. Block ``conv2_block1`` holds ``preact_bn``, ``0_conv`` ..
``3_conv``, so parameter paths join to Keras' ``conv2_block1_preact_bn`` etc.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn
from kjax_resnet.model import EPSILON  # 1.001e-5, as ResNet v1


class PreactBottleneck(knn.Block):
    """``residual_block_v2``: preact BN-relu; 1x1 (no bias), zero-pad 1 + 3x3 with the stride (no
    bias), 1x1 x4 (bias, no BN); shortcut a 1x1 conv of the preactivation or the (subsampled) input."""

    filters: int
    stride: int = 1
    conv_shortcut: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, **kw)
        preact = nn.relu(bn(x, name="preact_bn"))
        if self.conv_shortcut:
            shortcut = knn.conv(preact, 4 * self.filters, 1, strides=self.stride, name="0_conv", **kw)
        elif self.stride > 1:
            shortcut = knn.max_pool(x, 1, self.stride)  # MaxPooling2D(1, strides): subsampling
        else:
            shortcut = x
        y = knn.conv(preact, self.filters, 1, use_bias=False, name="1_conv", **kw)
        y = nn.relu(bn(y, name="1_bn"))
        y = knn.zero_pad(y, ((1, 1), (1, 1)))
        y = knn.conv(y, self.filters, 3, strides=self.stride, use_bias=False, name="2_conv", **kw)
        y = nn.relu(bn(y, name="2_bn"))
        y = knn.conv(y, 4 * self.filters, 1, name="3_conv", **kw)
        return shortcut + y


class ResNetV2(knn.Application):
    """ResNetV2 with Keras' option names; ``stack_sizes`` picks the depth."""

    stack_sizes: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = self.inputs(x)
        x = knn.zero_pad(x, ((3, 3), (3, 3)))
        x = self.tap(knn.conv(x, 64, 7, strides=2, name="conv1_conv", **kw))
        x = knn.zero_pad(x, ((1, 1), (1, 1)))  # zeros, not -inf: x is not yet through a relu
        x = knn.max_pool(x, 3, 2)
        stacks = zip((64, 128, 256, 512), self.stack_sizes, (2, 2, 2, 1))
        for stack, (filters, blocks, stride1) in enumerate(stacks):
            name = f"conv{stack + 2}_block"
            x = PreactBottleneck(filters, conv_shortcut=True, name=f"{name}1", **kw)(x, train)
            x = knn.repeat(self, PreactBottleneck, [f"{name}{b}" for b in range(2, blocks)], x,
                           train, filters=filters, **kw)
            self.tap(x)  # a stack's second-last block output: its last block strides
            x = PreactBottleneck(filters, stride=stride1, name=f"{name}{blocks}", **kw)(x, train)
            self.tap(x)
        x = knn.batch_norm(x, name="post_bn", train=train, epsilon=EPSILON, **kw)
        x = nn.relu(x)
        return self.top(x)


ResNet50V2 = partial(ResNetV2, stack_sizes=(3, 4, 6, 3))
ResNet101V2 = partial(ResNetV2, stack_sizes=(3, 4, 23, 3))
ResNet152V2 = partial(ResNetV2, stack_sizes=(3, 8, 36, 3))
