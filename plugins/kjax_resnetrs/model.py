"""Flax twin of ResNet-RS (``tf_keras/src/applications/resnet_rs.py``; Keras 3 dropped it).

In-graph preprocessing (``include_preprocessing``): Rescaling(1/255), then Normalization with the
ImageNet mean and variance given to the constructor, which tf_keras keeps as constants (the layer has
no weights), so here they are constants too. A ResNet-D stem of four 3x3 convs (the last, strided,
replaces the max pool), then four BlockGroups of bottleneck blocks with squeeze-excitation; the first
block of each group projects its shortcut (2x2 'same' average pooling, excluding the padding from the
count, then a 1x1 conv, where the group strides). Strided convs pad symmetrically by (k - 1) // 2
whatever the input size (``fixed_padding``) and are 'valid'; the others are 'same'. BatchNorm epsilon
1e-5 and momentum 0.0 (``bn_epsilon``, ``bn_momentum``); a training step moves the moving variance
toward the *unbiased* batch variance, as tf_keras' fused BatchNormalization does (:class:`BatchNorm`;
Keras 3 and flax.linen use the biased one). Dropout (before the classifier) and drop
connect (``Dropout(survival_probability, noise_shape=(None, 1, 1, 1))`` in the deeper models: tf_keras
passes the survival probability as the *drop* rate) act only with ``train=True``, which then needs a
``"dropout"`` rng, as in Keras' ``training=True``.

Module names join with ``_`` to tf_keras' explicit layer names: ``BlockGroup2_`` / ``block_0`` /
``_conv_1`` is ``BlockGroup2__block_0__conv_1``, and ``batch_norm_1`` (tf_keras drops an underscore
there) is ``BlockGroup2__block_0_batch_norm_1``. The stem is named ``stem_1`` as in a fresh tf_keras
session; tf_keras numbers it from a per-process counter (``stem_2`` for the second model built), and
then the default matching pairs the eight stem layers in order within their kind.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
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


class BatchNorm(knn.ShapeCheckedParams, knn.Block):
    """tf_keras BatchNormalization (fused, channels last), with flax.linen.BatchNorm's variables
    (params scale/bias, batch_stats mean/var) and its inference arithmetic. In training it normalises
    with the biased batch variance but moves the moving variance toward the unbiased one
    (n / (n - 1) times it, n the number of values per channel), as TensorFlow's fused kernel does;
    with ResNet-RS' momentum 0.0 one step sets it to exactly that. The moving statistics are kept in
    ``kjax_core.nn.statistics_dtype(param_dtype)``; the per-channel multiplier is computed there
    and the activations are normalised in the compute dtype (as :class:`kjax_core.nn.BatchNorm`).
    (:class:`~kjax_core.nn.ShapeCheckedParams`: no ``jax.eval_shape`` of the initialisers on every
    trace, a third of the time of tracing a ResNet-RS.)"""

    epsilon: float = BN_EPSILON
    momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        stats = knn.statistics_dtype(self.param_dtype)  # float32 unless the params are float64
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats)
        if train:
            # batch statistics from x upcast to at least float32 (kjax_core.nn's helpers hold
            # the float32 exceptions of a bfloat16 model)
            axes = tuple(range(x.ndim - 1))
            mean, var = knn.batch_moments(x, axes, fast_variance=False)
            if not self.is_initializing():
                n = x.size // features
                ra_mean.value = knn.moving_average(ra_mean.value, mean, self.momentum)
                ra_var.value = knn.moving_average(ra_var.value, var, self.momentum,
                                                  correction=n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        # per-channel multiplier in the statistics' dtype; the activations in the compute dtype
        mul = knn.batch_norm_multiplier(var, self.epsilon, scale)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        return (x.astype(dtype) - mean.astype(dtype)) * mul.astype(dtype) + bias.astype(dtype)


def batch_norm(x: jax.Array, *, name: str, train: bool, **kw) -> jax.Array:
    return BatchNorm(name=name, **kw)(x, train)


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
            x = nn.relu(x)
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
            y = SqueezeExcite(max(1, int(self.filters * 4 * SE_RATIO)), name="_se", **kw)(y)
        if self.survival_probability:
            # noise_shape (None, 1, 1, 1): one draw per sample, shared over height, width, channels
            y = nn.Dropout(self.survival_probability, broadcast_dims=(1, 2, 3),
                           deterministic=not train, name="_drop")(y)
        return nn.relu(y + shortcut)


class SqueezeExcite(knn.Block):
    """``SE``: its layers are ``<block>_se_se_reduce`` / ``_se_se_expand``."""

    reduced_filters: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return knn.squeeze_excite(x, self.reduced_filters, reduce_name="se_reduce",
                                  expand_name="se_expand", **self.dtypes)


class BlockGroup(knn.Block):
    """``BlockGroup``: the first block projects the shortcut and strides; the rest do neither."""

    filters: int
    strides: int
    num_repeats: int
    survival_probability: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        for i in range(self.num_repeats):
            x = BottleneckBlock(
                self.filters,
                strides=self.strides if i == 0 else 1,
                use_projection=i == 0,
                survival_probability=self.survival_probability,
                name=f"block_{i}",
                **kw,
            )(x, train)
        return x


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
            x = x * jnp.asarray(1.0 / 255, x.dtype)  # Rescaling
            if x.shape[-1] == 3:  # Normalization with constant mean and variance
                # The constants in the statistics dtype of the computation (float32 as tf_keras
                # in a float32 or bfloat16 model, float64 in a float64 one), not float32 always.
                stats = knn.statistics_dtype(x.dtype)
                x = knn.normalize(x, jnp.asarray(IMAGENET_MEAN, stats),
                                  jnp.asarray(IMAGENET_VARIANCE, stats))
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
        return self.top(x, dropout_rate=self.dropout_rate, train=train)


ResNetRS50 = partial(ResNetRS, depth=50, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS101 = partial(ResNetRS, depth=101, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS152 = partial(ResNetRS, depth=152, dropout_rate=0.25, drop_connect_rate=0.0)
ResNetRS200 = partial(ResNetRS, depth=200, dropout_rate=0.25, drop_connect_rate=0.1)
ResNetRS270 = partial(ResNetRS, depth=270, dropout_rate=0.25, drop_connect_rate=0.1)
ResNetRS350 = partial(ResNetRS, depth=350, dropout_rate=0.4, drop_connect_rate=0.1)
ResNetRS420 = partial(ResNetRS, depth=420, dropout_rate=0.4, drop_connect_rate=0.1)
