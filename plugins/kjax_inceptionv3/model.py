"""Flax twin of ``keras/src/applications/inception_v3.py``.

Every ``conv2d_bn`` of the Keras source is a :class:`ConvBN` (``conv``: Conv2D without bias,
``bn``: BatchNormalization with ``scale=False``, Keras' default epsilon 1e-3, then ReLU), called in
the order the Keras source creates them. Blocks carry the names of the Keras concatenations that
close them (``mixed0`` .. ``mixed10``), branches the names of the Keras source's variables,
numbered along each branch as torchvision does: ``mixed0/branch5x5_2/conv/kernel``. Keras names
these layers automatically (``conv2d_17``, from a per-process counter) and lists them by graph
depth, so they are paired by creation order, not by name or model order (the spec's
``matcher="creation_order"``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3  # conv2d_bn's BatchNormalization(scale=False) keeps Keras' default epsilon


class ConvBN(knn.Block):
    """``conv2d_bn``: Conv2D(use_bias=False) -> BatchNormalization(scale=False) -> ReLU."""

    filters: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: str = "same"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = knn.conv(x, self.filters, self.kernel_size, strides=self.strides, padding=self.padding,
                     use_bias=False, name="conv", **kw)
        x = knn.batch_norm(x, name="bn", train=train, epsilon=EPSILON, scale=False, **kw)
        return nn.relu(x)


def _pool_same(x: jax.Array) -> jax.Array:
    """AveragePooling2D((3, 3), strides=(1, 1), padding='same'): padding left out of the count."""
    return knn.avg_pool(x, 3, 1, padding="SAME")


class Block(knn.Block):
    """Base of the mixed blocks: ``unit(x, name, filters, rows, cols, ...)`` is one conv2d_bn."""

    def unit(self, x, name, filters, rows, cols, train, strides=1, padding="same"):
        return ConvBN(filters, (rows, cols), strides, padding, name=name,
                      **self.dtypes)(x, train)


class InceptionA(Block):
    """mixed0, mixed1, mixed2 (35x35 at 299): 1x1, 5x5, double 3x3, pool."""

    pool_filters: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = partial(self.unit, train=train)
        branch1x1 = u(x, "branch1x1", 64, 1, 1)
        branch5x5 = u(x, "branch5x5_1", 48, 1, 1)
        branch5x5 = u(branch5x5, "branch5x5_2", 64, 5, 5)
        branch3x3dbl = u(x, "branch3x3dbl_1", 64, 1, 1)
        branch3x3dbl = u(branch3x3dbl, "branch3x3dbl_2", 96, 3, 3)
        branch3x3dbl = u(branch3x3dbl, "branch3x3dbl_3", 96, 3, 3)
        branch_pool = u(_pool_same(x), "branch_pool", self.pool_filters, 1, 1)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(Block):
    """mixed3: grid reduction 35 -> 17 at 299."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = partial(self.unit, train=train)
        branch3x3 = u(x, "branch3x3", 384, 3, 3, strides=2, padding="valid")
        branch3x3dbl = u(x, "branch3x3dbl_1", 64, 1, 1)
        branch3x3dbl = u(branch3x3dbl, "branch3x3dbl_2", 96, 3, 3)
        branch3x3dbl = u(branch3x3dbl, "branch3x3dbl_3", 96, 3, 3, strides=2, padding="valid")
        branch_pool = knn.max_pool(x, 3, 2)
        return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(Block):
    """mixed4 .. mixed7 (17x17 at 299): factorised 7x7 convolutions with ``channels_7x7``."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = partial(self.unit, train=train)
        c = self.channels_7x7
        branch1x1 = u(x, "branch1x1", 192, 1, 1)
        branch7x7 = u(x, "branch7x7_1", c, 1, 1)
        branch7x7 = u(branch7x7, "branch7x7_2", c, 1, 7)
        branch7x7 = u(branch7x7, "branch7x7_3", 192, 7, 1)
        branch7x7dbl = u(x, "branch7x7dbl_1", c, 1, 1)
        branch7x7dbl = u(branch7x7dbl, "branch7x7dbl_2", c, 7, 1)
        branch7x7dbl = u(branch7x7dbl, "branch7x7dbl_3", c, 1, 7)
        branch7x7dbl = u(branch7x7dbl, "branch7x7dbl_4", c, 7, 1)
        branch7x7dbl = u(branch7x7dbl, "branch7x7dbl_5", 192, 1, 7)
        branch_pool = u(_pool_same(x), "branch_pool", 192, 1, 1)
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(Block):
    """mixed8: grid reduction 17 -> 8 at 299."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = partial(self.unit, train=train)
        branch3x3 = u(x, "branch3x3_1", 192, 1, 1)
        branch3x3 = u(branch3x3, "branch3x3_2", 320, 3, 3, strides=2, padding="valid")
        branch7x7x3 = u(x, "branch7x7x3_1", 192, 1, 1)
        branch7x7x3 = u(branch7x7x3, "branch7x7x3_2", 192, 1, 7)
        branch7x7x3 = u(branch7x7x3, "branch7x7x3_3", 192, 7, 1)
        branch7x7x3 = u(branch7x7x3, "branch7x7x3_4", 192, 3, 3, strides=2, padding="valid")
        branch_pool = knn.max_pool(x, 3, 2)
        return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(Block):
    """mixed9, mixed10 (8x8 at 299): expanded 1x3 / 3x1 branches (Keras' mixed9_0, mixed9_1)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = partial(self.unit, train=train)
        branch1x1 = u(x, "branch1x1", 320, 1, 1)
        branch3x3 = u(x, "branch3x3_1", 384, 1, 1)
        branch3x3 = jnp.concatenate(
            [u(branch3x3, "branch3x3_2a", 384, 1, 3), u(branch3x3, "branch3x3_2b", 384, 3, 1)],
            axis=-1,
        )  # Keras' mixed9_0 / mixed9_1
        branch3x3dbl = u(x, "branch3x3dbl_1", 448, 1, 1)
        branch3x3dbl = u(branch3x3dbl, "branch3x3dbl_2", 384, 3, 3)
        branch3x3dbl = jnp.concatenate(
            [u(branch3x3dbl, "branch3x3dbl_3a", 384, 1, 3),
             u(branch3x3dbl, "branch3x3dbl_3b", 384, 3, 1)],
            axis=-1,
        )
        branch_pool = u(_pool_same(x), "branch_pool", 192, 1, 1)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionV3(knn.Application):
    """InceptionV3 with Keras' option names."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = self.inputs(x)
        x = ConvBN(32, (3, 3), 2, "valid", name="conv1", **kw)(x, train)
        x = ConvBN(32, (3, 3), 1, "valid", name="conv2", **kw)(x, train)
        x = self.tap(ConvBN(64, (3, 3), name="conv3", **kw)(x, train))
        x = knn.max_pool(x, 3, 2)
        x = ConvBN(80, (1, 1), 1, "valid", name="conv4", **kw)(x, train)
        x = self.tap(ConvBN(192, (3, 3), 1, "valid", name="conv5", **kw)(x, train))
        x = knn.max_pool(x, 3, 2)

        x = InceptionA(pool_filters=32, name="mixed0", **kw)(x, train)
        x = InceptionA(pool_filters=64, name="mixed1", **kw)(x, train)
        x = self.tap(InceptionA(pool_filters=64, name="mixed2", **kw)(x, train))
        x = InceptionB(name="mixed3", **kw)(x, train)
        x = InceptionC(channels_7x7=128, name="mixed4", **kw)(x, train)
        x = InceptionC(channels_7x7=160, name="mixed5", **kw)(x, train)
        x = InceptionC(channels_7x7=160, name="mixed6", **kw)(x, train)
        x = self.tap(InceptionC(channels_7x7=192, name="mixed7", **kw)(x, train))
        x = InceptionD(name="mixed8", **kw)(x, train)
        x = InceptionE(name="mixed9", **kw)(x, train)
        x = InceptionE(name="mixed10", **kw)(x, train)
        return self.top(x)
