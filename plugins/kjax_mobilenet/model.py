"""Flax twin of ``keras/src/applications/mobilenet.py`` (MobileNet v1).

Submodules carry the Keras layer names (``conv1``, ``conv_dw_3``, ``conv_pw_3_bn``,
``conv_preds``). Strided depthwise convolutions pad one row and column at the bottom and right
(ZeroPadding2D(((0, 1), (0, 1)))) whatever the size, then convolve 'valid'.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3  # Keras' default BatchNormalization epsilon

# (pointwise filters at alpha 1, stride) of the 13 depthwise-separable blocks
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNet(knn.Application):
    """MobileNet with Keras' option names."""

    alpha: float = 1.0
    depth_multiplier: int = 1
    dropout: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, **kw)
        x = self.inputs(x)
        x = knn.conv(x, int(32 * self.alpha), 3, strides=2, padding="same", use_bias=False,
                     name="conv1", **kw)
        x = self.tap(nn.relu6(bn(x, name="conv1_bn")))
        for block_id, (filters, strides) in enumerate(BLOCKS, 1):
            if strides == 2:
                x = knn.zero_pad(x, ((0, 1), (0, 1)))
            x = knn.depthwise_conv(x, 3, strides=strides,
                                   padding="same" if strides == 1 else "valid",
                                   depth_multiplier=self.depth_multiplier, use_bias=False,
                                   name=f"conv_dw_{block_id}", **kw)
            x = nn.relu6(bn(x, name=f"conv_dw_{block_id}_bn"))
            x = knn.conv(x, int(filters * self.alpha), 1, padding="same", use_bias=False,
                         name=f"conv_pw_{block_id}", **kw)
            x = self.tap(nn.relu6(bn(x, name=f"conv_pw_{block_id}_bn")))
        return self.conv_top(x, logits_name="conv_preds", dropout_rate=self.dropout, train=train)
