"""Flax twin of ``keras/src/applications/xception.py``.

Submodules carry the Keras layer names (``block4_sepconv2``, ``block4_sepconv2_bn``). The four
strided 1x1 shortcut convolutions and their BatchNorms are auto-named in Keras (``conv2d``,
``batch_normalization_3``, from a per-process counter); here they are ``block{2,3,4,13}_residual``
and ``..._residual_bn``, and the default matching pairs them in order, each kind having four on
both sides.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3  # Keras' default BatchNormalization epsilon


class Xception(knn.Application):
    """Xception with Keras' option names."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, **kw)

        def sepconv(x, filters, name):
            x = knn.SeparableConv2D(filters, (3, 3), padding="SAME", use_bias=False, name=name,
                                    **kw)(x)
            return bn(x, name=f"{name}_bn")

        def downsampling_block(x, block, filters, relu_first=True):
            """Two separable convolutions and a 3x3/2 max pool, added to a strided 1x1 shortcut."""
            residual = knn.conv(x, filters[1], 1, strides=2, padding="same", use_bias=False,
                                name=f"{block}_residual", **kw)
            residual = bn(residual, name=f"{block}_residual_bn")
            if relu_first:
                x = nn.relu(x)
            x = nn.relu(sepconv(x, filters[0], f"{block}_sepconv1"))
            x = sepconv(x, filters[1], f"{block}_sepconv2")
            return self.tap(knn.max_pool(x, 3, 2, "SAME") + residual)

        x = self.inputs(x)
        x = knn.conv(x, 32, 3, strides=2, use_bias=False, name="block1_conv1", **kw)
        x = nn.relu(bn(x, name="block1_conv1_bn"))
        x = knn.conv(x, 64, 3, use_bias=False, name="block1_conv2", **kw)
        x = self.tap(nn.relu(bn(x, name="block1_conv2_bn")))

        x = downsampling_block(x, "block2", (128, 128), relu_first=False)
        x = downsampling_block(x, "block3", (256, 256))
        x = downsampling_block(x, "block4", (728, 728))
        for i in range(5, 13):  # the middle flow: eight residual blocks
            residual = x
            for j in (1, 2, 3):
                x = sepconv(nn.relu(x), 728, f"block{i}_sepconv{j}")
            x = self.tap(x + residual)
        x = downsampling_block(x, "block13", (728, 1024))

        x = nn.relu(sepconv(x, 1536, "block14_sepconv1"))
        x = nn.relu(sepconv(x, 2048, "block14_sepconv2"))
        return self.top(x)
