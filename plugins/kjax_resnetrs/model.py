"""Flax twin of ResNet-RS (``tf_keras/src/applications/resnet_rs.py``; Keras 3 dropped it).

In-graph preprocessing (``include_preprocessing``): Rescaling(1/255), then Normalization with the
ImageNet mean and variance given to the constructor, which tf_keras keeps as constants (the layer has
no weights), so here they are constants too. A ResNet-D stem of four 3x3 convs (the last, strided,
replaces the max pool), then four BlockGroups of bottleneck blocks with squeeze-excitation; the first
block of each group projects its shortcut (2x2 'same' average pooling, excluding the padding from the
count, then a 1x1 conv, where the group strides). Strided convs pad symmetrically by (k - 1) // 2
whatever the input size (``fixed_padding``) and are 'valid'; the others are 'same'. BatchNorm epsilon
1e-5 and momentum 0.0 (``bn_epsilon``, ``bn_momentum``); a training step moves the moving variance
toward the *unbiased* batch variance, as tf_keras' fused BatchNormalization does
(:class:`kjax_core.nn.TFKerasBatchNorm`; Keras 3 and flax.linen use the biased one). Dropout (before
the classifier) and drop connect (``Dropout(survival_probability, noise_shape=(None, 1, 1, 1))`` in
the deeper models: tf_keras passes the survival probability as the *drop* rate) act only with
``train=True``, which then needs a ``"dropout"`` rng, as in Keras' ``training=True``.

Module names join with ``_`` to tf_keras' explicit layer names: ``BlockGroup2_`` / ``block_0`` /
``_conv_1`` is ``BlockGroup2__block_0__conv_1``, and ``batch_norm_1`` (tf_keras drops an underscore
there) is ``BlockGroup2__block_0_batch_norm_1``. The stem is named ``stem_1`` as in a fresh tf_keras
session; tf_keras numbers it from a per-process counter (``stem_2`` for the second model built), and
then the default matching pairs the eight stem layers in order within their kind.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import linen as nn

from kjax_core import nn as knn

BN_EPSILON = 1e-5  # ResNetRS(bn_epsilon=1e-5)
BN_MOMENTUM = 0.0  # ResNetRS(bn_momentum=0.0): a training step sets the moving statistics
SE_RATIO = 0.25
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_VARIANCE = (0.229**2, 0.224**2, 0.225**2)
# depth -> repeats per BlockGroup (BLOCK_ARGS); input_filters are 64, 128, 256, 512 for all
BLOCK_REPEATS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}


def batch_norm(x: jax.Array, *, name: str, train: bool, **kw) -> jax.Array:
    """tf_keras' BatchNormalization with ResNet-RS' epsilon and momentum."""
    return knn.TFKerasBatchNorm(use_running_average=not train, epsilon=BN_EPSILON,
                                momentum=BN_MOMENTUM, name=name, **kw)(x)


def conv_fixed_padding(x, filters, kernel_size, strides, *, name, **kw):
    """``Conv2DFixedPadding``: strided convs pad (k - 1) // 2 before / the rest after and are
    'valid'; unstrided ones are 'same'. No bias."""
    if strides > 1:
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        x = knn.zero_pad(x, ((before, after), (before, after)))
    padding = "same" if strides == 1 else "valid"
    return knn.conv(x, filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                    name=name, **kw)


class Stem(knn.Block):
    """``STEM``: 3x3/2 (32), 3x3 (32), 3x3 (64), 3x3/2 (64), each BatchNorm + relu."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        for i, (filters, strides) in enumerate(((32, 2), (32, 1), (64, 1), (64, 2)), start=1):
            x = conv_fixed_padding(x, filters, 3, strides, name=f"stem_conv_{i}", **kw)
            x = batch_norm(x, name=f"stem_batch_norm_{i}", train=train, **kw)
            x = self.tap(nn.relu(x))
        return x


class BottleneckBlock(knn.Block):
    """``BottleneckBlock``: 1x1, 3x3 (with the stride), 1x1 x4, each with BatchNorm; SE; drop
    connect; plus the (projected) shortcut; relu."""

    filters: int
    strides: int
    use_projection: bool
    survival_probability: float = 0.0  # used as the drop rate, as tf_keras does

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(batch_norm, train=train, **kw)
        shortcut = x
        if self.use_projection:
            if self.strides == 2:
                shortcut = knn.avg_pool(x, 2, 2, padding="SAME")  # _projection_pooling
                shortcut = conv_fixed_padding(shortcut, 4 * self.filters, 1, 1,
                                              name="_projection_conv", **kw)
            else:
                shortcut = conv_fixed_padding(x, 4 * self.filters, 1, self.strides,
                                              name="_projection_conv", **kw)
            shortcut = bn(shortcut, name="_projection_batch_norm")
        y = conv_fixed_padding(x, self.filters, 1, 1, name="_conv_1", **kw)
        y = nn.relu(bn(y, name="batch_norm_1"))  # tf_keras: name + "batch_norm_1", no "_"
        y = conv_fixed_padding(y, self.filters, 3, self.strides, name="_conv_2", **kw)
        y = nn.relu(bn(y, name="_batch_norm_2"))
        y = conv_fixed_padding(y, 4 * self.filters, 1, 1, name="_conv_3", **kw)
        y = bn(y, name="_batch_norm_3")
        if 0 < SE_RATIO < 1:
            # tf_keras' SE(name="<block>_se") names its convs "<block>_se_se_reduce", ...
            y = knn.SqueezeExcite(max(1, int(self.filters * 4 * SE_RATIO)), name="_se", **kw)(y)
        # Dropout(survival_probability, noise_shape=(None, 1, 1, 1)): the probability as the rate
        y = knn.drop_connect(y, self.survival_probability, train=train, name="_drop")
        return nn.relu(y + shortcut)


class BlockGroup(knn.Block):
    """``BlockGroup``: the first block projects the shortcut and strides; the rest do neither."""

    filters: int
    strides: int
    num_repeats: int
    survival_probability: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        block = partial(BottleneckBlock, self.filters,
                        survival_probability=self.survival_probability, **kw)
        x = block(strides=self.strides, use_projection=True, name="block_0")(x, train)
        return knn.repeat(self, block, [f"block_{i}" for i in range(1, self.num_repeats)], x,
                          train, strides=1, use_projection=False)


class ResNetRS(knn.Application):
    """ResNet-RS with tf_keras' option names; ``depth`` picks the variant, ``dropout_rate`` and
    ``drop_connect_rate`` are the values each tf_keras constructor fixes."""

    depth: int
    dropout_rate: float = 0.25
    drop_connect_rate: float = 0.0
    include_preprocessing: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = self.inputs(x)
        if self.include_preprocessing:
            x = knn.rescaling(x, 1.0 / 255)
            if x.shape[-1] == 3:  # Normalization with constant mean and variance
                x = knn.normalize_constant(x, IMAGENET_MEAN, IMAGENET_VARIANCE)
        x = Stem(name="stem_1", **kw)(x, train)
        repeats = BLOCK_REPEATS[self.depth]
        for i, (filters, num_repeats) in enumerate(zip((64, 128, 256, 512), repeats)):
            x = BlockGroup(
                filters,
                strides=1 if i == 0 else 2,
                num_repeats=num_repeats,
                survival_probability=self.drop_connect_rate * (i + 2) / (len(repeats) + 1),
                name=f"BlockGroup{i + 2}_",
                **kw,
            )(x, train)
            self.tap(x)
        return self.top(x, dropout_rate=self.dropout_rate, train=train)


ResNetRS50 = partial(ResNetRS, depth=50, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS101 = partial(ResNetRS, depth=101, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS152 = partial(ResNetRS, depth=152, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS200 = partial(ResNetRS, depth=200, dropout_rate=0.25, drop_connect_rate=0.1)
ResNetRS270 = partial(ResNetRS, depth=270, dropout_rate=0.25, drop_connect_rate=0.1)
ResNetRS350 = partial(ResNetRS, depth=350, dropout_rate=0.4, drop_connect_rate=0.1)
ResNetRS420 = partial(ResNetRS, depth=420, dropout_rate=0.4, drop_connect_rate=0.1)
