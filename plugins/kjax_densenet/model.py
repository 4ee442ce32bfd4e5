"""Flax twin of ``keras/src/applications/densenet.py`` (DenseNet-BC, growth rate 32).

Submodules carry the Keras layer names: block ``conv2_block1`` holds ``0_bn``, ``1_conv``, ``1_bn``,
``2_conv`` (Keras ``conv2_block1_0_bn`` ...), transition ``pool2`` holds ``bn`` and ``conv``.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1.001e-5  # Keras DenseNet's BatchNormalization epsilon
GROWTH_RATE = 32


class ConvBlock(knn.Block):
    """``conv_block``: BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), concatenated after the input."""

    growth_rate: int = GROWTH_RATE

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, **kw)
        x1 = nn.relu(bn(x, name="0_bn"))
        x1 = knn.conv(x1, 4 * self.growth_rate, 1, use_bias=False, name="1_conv", **kw)
        x1 = nn.relu(bn(x1, name="1_bn"))
        x1 = knn.conv(x1, self.growth_rate, 3, padding="same", use_bias=False, name="2_conv", **kw)
        return jnp.concatenate([x, x1], axis=-1)


class TransitionBlock(knn.Block):
    """``transition_block``: BN-ReLU-1x1 conv (channels * reduction), 2x2/2 'valid' average pool."""

    reduction: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = nn.relu(knn.batch_norm(x, name="bn", train=train, epsilon=EPSILON, **kw))
        x = knn.conv(x, int(x.shape[-1] * self.reduction), 1, use_bias=False, name="conv", **kw)
        return knn.avg_pool(self.tap(x), 2, 2)  # 'valid': an odd size drops its last row/column


class DenseNet(knn.Application):
    """DenseNet with Keras' option names; ``blocks`` picks the depth."""

    blocks: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = self.inputs(x)
        x = knn.zero_pad(x, ((3, 3), (3, 3)))
        x = knn.conv(x, 64, 7, strides=2, use_bias=False, name="conv1_conv", **kw)
        x = knn.batch_norm(x, name="conv1_bn", train=train, epsilon=EPSILON, **kw)
        x = self.tap(nn.relu(x))
        x = knn.zero_pad(x, ((1, 1), (1, 1)))  # zeros (not -inf) before the max pool
        x = knn.max_pool(x, 3, 2)
        for stage, blocks in enumerate(self.blocks):
            for block in range(blocks):
                x = ConvBlock(name=f"conv{stage + 2}_block{block + 1}", **kw)(x, train)
            if stage < len(self.blocks) - 1:
                x = TransitionBlock(0.5, name=f"pool{stage + 2}", **kw)(x, train)
        x = nn.relu(knn.batch_norm(x, name="bn", train=train, epsilon=EPSILON, **kw))
        return self.top(x)


DenseNet121 = partial(DenseNet, blocks=(6, 12, 24, 16))
DenseNet169 = partial(DenseNet, blocks=(6, 12, 32, 32))
DenseNet201 = partial(DenseNet, blocks=(6, 12, 48, 32))
