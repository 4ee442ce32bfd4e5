"""Flax twin of ``keras/src/applications/inception_resnet_v2.py``.

Each automatically named ``conv2d_bn`` of the Keras source is an InceptionV3 :class:`ConvBN`
(Conv2D without bias, BatchNormalization(scale=False), ReLU), called in the source's creation
order and paired with Keras' layers by it (the spec's ``creation_order`` matcher). The layers Keras
names keep their names: each residual block ``block35_1`` .. ``block8_10`` holds its up-projection
``conv`` (Keras ``block35_1_conv``, with a bias and no BatchNorm), and ``conv_7b`` / ``conv_7b_bn``
close the trunk. Branch submodules are named after the Keras source's variables
(``branch_1_2``: the second conv2d_bn of ``branch_1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn
from kjax_inceptionv3.model import EPSILON, ConvBN

# block type -> (branches: each a list of (filters, kernel), residual scale of its repeats)
BLOCKS = {
    "block35": ([[(32, (1, 1))], [(32, (1, 1)), (32, (3, 3))],
                 [(32, (1, 1)), (48, (3, 3)), (64, (3, 3))]], 0.17),
    "block17": ([[(192, (1, 1))], [(128, (1, 1)), (160, (1, 7)), (192, (7, 1))]], 0.1),
    "block8": ([[(192, (1, 1))], [(192, (1, 1)), (224, (1, 3)), (256, (3, 1))]], 0.2),
}


class InceptionResNetBlock(knn.Block):
    """``inception_resnet_block``: branches concatenated, projected back by a 1x1 conv with bias
    (``conv``), added to the input scaled by ``scale`` (Keras' weightless CustomScaleLayer:
    ``x + up * scale``), then ReLU unless ``activation`` is off (the last block8)."""

    block_type: str
    scale: float
    activation: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        branches = []
        for b, units in enumerate(BLOCKS[self.block_type][0]):
            y = x
            for u, (filters, kernel) in enumerate(units):
                y = ConvBN(filters, kernel, name=f"branch_{b}_{u + 1}", **self.dtypes)(y, train)
            branches.append(y)
        mixed = jnp.concatenate(branches, axis=-1)
        up = knn.conv(mixed, x.shape[-1], 1, padding="same", name="conv", **self.dtypes)
        x = x + up * self.scale
        return nn.relu(x) if self.activation else x


class InceptionResNetV2(knn.Application):
    """InceptionResNetV2 with Keras' option names."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes

        def unit(x, name, filters, kernel, strides=1, padding="same"):
            return ConvBN(filters, kernel, strides, padding, name=name, **kw)(x, train)

        def blocks(x, block_type, first, last, activation=True):
            """Blocks ``first`` .. ``last`` of ``block_type``, one configuration."""
            scale = 1.0 if not activation else BLOCKS[block_type][1]
            names = [f"{block_type}_{i}" for i in range(first, last + 1)]
            return self.tap(knn.repeat(self, InceptionResNetBlock, names, x, train,
                                       block_type=block_type, scale=scale, activation=activation,
                                       **kw))

        x = self.inputs(x)
        x = unit(x, "stem_1", 32, (3, 3), 2, "valid")
        x = unit(x, "stem_2", 32, (3, 3), 1, "valid")
        x = self.tap(unit(x, "stem_3", 64, (3, 3)))
        x = knn.max_pool(x, 3, 2)
        x = unit(x, "stem_4", 80, (1, 1), 1, "valid")
        x = self.tap(unit(x, "stem_5", 192, (3, 3), 1, "valid"))
        x = knn.max_pool(x, 3, 2)

        # mixed_5b (Inception-A)
        branch_0 = unit(x, "mixed_5b_branch_0", 96, (1, 1))
        branch_1 = unit(x, "mixed_5b_branch_1_1", 48, (1, 1))
        branch_1 = unit(branch_1, "mixed_5b_branch_1_2", 64, (5, 5))
        branch_2 = unit(x, "mixed_5b_branch_2_1", 64, (1, 1))
        branch_2 = unit(branch_2, "mixed_5b_branch_2_2", 96, (3, 3))
        branch_2 = unit(branch_2, "mixed_5b_branch_2_3", 96, (3, 3))
        branch_pool = unit(knn.avg_pool(x, 3, 1, "SAME"), "mixed_5b_branch_pool", 64, (1, 1))
        x = jnp.concatenate([branch_0, branch_1, branch_2, branch_pool], axis=-1)
        x = blocks(x, "block35", 1, 10)

        # mixed_6a (Reduction-A)
        branch_0 = unit(x, "mixed_6a_branch_0", 384, (3, 3), 2, "valid")
        branch_1 = unit(x, "mixed_6a_branch_1_1", 256, (1, 1))
        branch_1 = unit(branch_1, "mixed_6a_branch_1_2", 256, (3, 3))
        branch_1 = unit(branch_1, "mixed_6a_branch_1_3", 384, (3, 3), 2, "valid")
        x = jnp.concatenate([branch_0, branch_1, knn.max_pool(x, 3, 2)], axis=-1)
        x = blocks(x, "block17", 1, 20)

        # mixed_7a (Reduction-B)
        branch_0 = unit(x, "mixed_7a_branch_0_1", 256, (1, 1))
        branch_0 = unit(branch_0, "mixed_7a_branch_0_2", 384, (3, 3), 2, "valid")
        branch_1 = unit(x, "mixed_7a_branch_1_1", 256, (1, 1))
        branch_1 = unit(branch_1, "mixed_7a_branch_1_2", 288, (3, 3), 2, "valid")
        branch_2 = unit(x, "mixed_7a_branch_2_1", 256, (1, 1))
        branch_2 = unit(branch_2, "mixed_7a_branch_2_2", 288, (3, 3))
        branch_2 = unit(branch_2, "mixed_7a_branch_2_3", 320, (3, 3), 2, "valid")
        x = jnp.concatenate([branch_0, branch_1, branch_2, knn.max_pool(x, 3, 2)], axis=-1)
        x = blocks(x, "block8", 1, 9)
        x = blocks(x, "block8", 10, 10, activation=False)

        x = knn.conv(x, 1536, 1, padding="same", use_bias=False, name="conv_7b", **kw)
        x = knn.batch_norm(x, name="conv_7b_bn", train=train, epsilon=EPSILON, scale=False, **kw)
        return self.top(nn.relu(x))
