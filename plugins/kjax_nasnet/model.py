"""Flax twin of ``keras/src/applications/nasnet.py`` (NASNet-A).

Every weight-carrying Keras layer has an explicit name (``separable_conv_1_normal_left1_0``,
``adjust_bn_reduce_4``, ...), so each is a submodule of that name directly under the model, and
the cells are functions that create them, as Keras' ``_normal_a_cell`` and ``_reduction_a_cell``
do. Keras decides a cell's shape from static sizes: the previous output ``p`` is reduced where its
spatial size differs from the input's, projected where only its channels differ. The twin traces
at a concrete size, so it follows the graph Keras builds for a concrete input shape (a Keras
model built for any size, ``(None, None, 3)``, compares unknown sizes as equal and never reduces,
and its correct-pad paddings assume even sizes: compare with Keras built for the size).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3
MOMENTUM = 0.9997  # NASNet's BatchNormalization momentum (Keras' default is 0.99)


class NASNet(knn.Application):
    """NASNet-A with Keras' option names; the constructor arguments pick the size."""

    penultimate_filters: int = 1056
    num_blocks: int = 4
    stem_block_filters: int = 32
    skip_reduction: bool = False
    filter_multiplier: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)

        def conv1x1(x, filters, name):
            return knn.conv(x, filters, 1, padding="same", use_bias=False, name=name, **kw)

        def separable_conv_block(x, filters, kernel_size=3, strides=1, block_id=""):
            x = nn.relu(x)
            if strides == 2:
                x = knn.zero_pad(x, knn.correct_pad(x, kernel_size))
            padding = "VALID" if strides == 2 else "SAME"
            x = knn.SeparableConv2D(filters, (kernel_size, kernel_size), strides=strides,
                                    padding=padding, use_bias=False,
                                    name=f"separable_conv_1_{block_id}", **kw)(x)
            x = nn.relu(bn(x, name=f"separable_conv_1_bn_{block_id}"))
            x = knn.SeparableConv2D(filters, (kernel_size, kernel_size), padding="SAME",
                                    use_bias=False, name=f"separable_conv_2_{block_id}", **kw)(x)
            return bn(x, name=f"separable_conv_2_bn_{block_id}")

        def adjust_block(p, ip, filters, block_id):
            """``p`` (the previous cell's input) brought to ``ip``'s size and ``filters``."""
            if p is None:
                return ip
            if p.shape[2] != ip.shape[2]:  # reduce: two half-width 1x1 paths on shifted grids
                p = nn.relu(p)
                p1 = conv1x1(p[:, ::2, ::2], filters // 2, f"adjust_conv_1_{block_id}")
                # ZeroPadding2D(((0, 1), (0, 1))) then Cropping2D(((1, 0), (1, 0))): one pixel up
                # and left, a zero row and column entering at the bottom and right.
                shifted = knn.zero_pad(p[:, 1:, 1:], ((0, 1), (0, 1)))
                p2 = conv1x1(shifted[:, ::2, ::2], filters // 2, f"adjust_conv_2_{block_id}")
                return bn(jnp.concatenate([p1, p2], axis=-1), name=f"adjust_bn_{block_id}")
            if p.shape[-1] != filters:
                p = conv1x1(nn.relu(p), filters, f"adjust_conv_projection_{block_id}")
                return bn(p, name=f"adjust_bn_{block_id}")
            return p

        def normal_cell(ip, p, filters, block_id):
            p = adjust_block(p, ip, filters, block_id)
            h = bn(conv1x1(nn.relu(ip), filters, f"normal_conv_1_{block_id}"),
                   name=f"normal_bn_1_{block_id}")
            x1 = (separable_conv_block(h, filters, 5, block_id=f"normal_left1_{block_id}")
                  + separable_conv_block(p, filters, block_id=f"normal_right1_{block_id}"))
            x2 = (separable_conv_block(p, filters, 5, block_id=f"normal_left2_{block_id}")
                  + separable_conv_block(p, filters, 3, block_id=f"normal_right2_{block_id}"))
            x3 = knn.avg_pool(h, 3, 1, "SAME") + p
            x4 = knn.avg_pool(p, 3, 1, "SAME") + knn.avg_pool(p, 3, 1, "SAME")
            x5 = separable_conv_block(h, filters, block_id=f"normal_left5_{block_id}") + h
            return self.tap(jnp.concatenate([p, x1, x2, x3, x4, x5], axis=-1)), ip

        def reduction_cell(ip, p, filters, block_id):
            p = adjust_block(p, ip, filters, block_id)
            h = bn(conv1x1(nn.relu(ip), filters, f"reduction_conv_1_{block_id}"),
                   name=f"reduction_bn_1_{block_id}")
            h3 = knn.zero_pad(h, knn.correct_pad(h, 3))  # zeros enter the pools below
            x1 = (separable_conv_block(h, filters, 5, 2, f"reduction_left1_{block_id}")
                  + separable_conv_block(p, filters, 7, 2, f"reduction_right1_{block_id}"))
            x2 = (knn.max_pool(h3, 3, 2)
                  + separable_conv_block(p, filters, 7, 2, f"reduction_right2_{block_id}"))
            x3 = (knn.avg_pool(h3, 3, 2)
                  + separable_conv_block(p, filters, 5, 2, f"reduction_right3_{block_id}"))
            x4 = knn.avg_pool(x1, 3, 1, "SAME") + x2
            x5 = (separable_conv_block(x1, filters, 3, block_id=f"reduction_left4_{block_id}")
                  + knn.max_pool(h3, 3, 2))
            return self.tap(jnp.concatenate([x2, x3, x4, x5], axis=-1)), ip

        filters = self.penultimate_filters // 24
        multiplier, blocks = self.filter_multiplier, self.num_blocks
        x = self.inputs(x)
        x = knn.conv(x, self.stem_block_filters, 3, strides=2, use_bias=False, name="stem_conv1",
                     **kw)
        x = self.tap(bn(x, name="stem_bn1"))
        p = None
        x, p = reduction_cell(x, p, filters // multiplier**2, "stem_1")
        x, p = reduction_cell(x, p, filters // multiplier, "stem_2")
        for stage in range(3):
            if stage:
                x, p0 = reduction_cell(x, p, filters * multiplier**stage,
                                       f"reduce_{stage * blocks}")
                p = p if self.skip_reduction else p0
            for i in range(blocks):
                block_id = f"{stage * blocks + i + 1}" if stage else f"{i}"  # Keras' numbering
                x, p = normal_cell(x, p, filters * multiplier**stage, block_id)
        return self.top(nn.relu(x))


NASNetMobile = partial(NASNet, penultimate_filters=1056, num_blocks=4, stem_block_filters=32,
                       skip_reduction=False)
NASNetLarge = partial(NASNet, penultimate_filters=4032, num_blocks=6, stem_block_filters=96,
                      skip_reduction=True)
