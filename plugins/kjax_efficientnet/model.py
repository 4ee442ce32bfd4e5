"""Flax twin of ``keras/src/applications/efficientnet.py`` (EfficientNet B0-B7).

Each MBConv block is a submodule named after its Keras prefix: ``block2b`` holds ``expand_conv``,
``expand_bn``, ``dwconv``, ``bn``, ``se_reduce``, ``se_expand``, ``project_conv``, ``project_bn``
(Keras' ``block2b_expand_conv`` ...). The stem preprocesses as Keras does: Rescaling(1/255), a
Normalization whose mean/variance are weights (kept in ``batch_stats``), and, only for the imagenet
weights, Rescaling(1/sqrt(ImageNet std)) (``imagenet_rescaling``).

Dropout (before the classifier) and drop-connect (per-sample Dropout on the residual branch) run
only with ``train=True``, which then needs a ``"dropout"`` rng as any Flax dropout does.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3  # Keras' default BatchNormalization epsilon, which EfficientNet uses
MOMENTUM = 0.99  # and momentum
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# Keras' DEFAULT_BLOCKS_ARGS: (kernel_size, repeats, filters_in, filters_out, expand_ratio,
# strides); id_skip is True and se_ratio 0.25 throughout.
DEFAULT_BLOCKS_ARGS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25


class Block(knn.Block):
    """Keras' ``block``: inverted residual with squeeze-and-excitation."""

    filters_in: int
    filters_out: int
    kernel_size: int
    strides: int
    expand_ratio: int
    se_ratio: float = SE_RATIO
    id_skip: bool = True
    drop_rate: float = 0.0
    activation: str = "swish"

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)
        act = knn.activation(self.activation)
        filters = self.filters_in * self.expand_ratio
        x = inputs
        if self.expand_ratio != 1:
            x = knn.conv(x, filters, 1, padding="same", use_bias=False, name="expand_conv", **kw)
            x = act(bn(x, name="expand_bn"))
            if self.strides > 1:
                self.tap(x)  # the last map before the strided depthwise
        x = knn.correct_pad_conv(x, self.kernel_size, strides=self.strides,
                                 layer=knn.depthwise_conv, use_bias=False, name="dwconv", **kw)
        x = act(bn(x, name="bn"))
        if 0 < self.se_ratio <= 1:
            filters_se = max(1, int(self.filters_in * self.se_ratio))
            x = knn.squeeze_excite(x, filters_se, reduce_name="se_reduce", expand_name="se_expand",
                                   activation_name=self.activation, **kw)
        x = knn.conv(x, self.filters_out, 1, padding="same", use_bias=False, name="project_conv",
                     **kw)
        x = bn(x, name="project_bn")
        if self.id_skip and self.strides == 1 and self.filters_in == self.filters_out:
            # Keras: Dropout(drop_rate, noise_shape=(None, 1, 1, 1)), one draw per sample.
            x = knn.drop_connect(x, self.drop_rate, train=train, name="drop")
            x = x + inputs
        return x


class EfficientNet(knn.Application):
    """EfficientNet with Keras' option names; the variants fix the scaling coefficients."""

    width_coefficient: float
    depth_coefficient: float
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    depth_divisor: int = 8
    activation: str = "swish"
    blocks_args: Sequence[tuple[int, ...]] = DEFAULT_BLOCKS_ARGS
    imagenet_rescaling: bool = False  # Keras' extra Rescaling, built only for weights="imagenet"

    def round_filters(self, filters: float) -> int:
        """Keras' ``round_filters``: the width multiplier, then MobileNet's rounding."""
        return knn.make_divisible(filters * self.width_coefficient, self.depth_divisor)

    def round_repeats(self, repeats: int) -> int:
        """Round number of repeats based on depth multiplier."""
        return int(math.ceil(self.depth_coefficient * repeats))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)
        act = knn.activation(self.activation)
        x = self.inputs(x)
        # Stem: the preprocessing Keras builds into the graph.
        x = knn.rescaling(x, 1.0 / 255.0)
        x = knn.Normalization(name="normalization", **kw)(x)
        if self.imagenet_rescaling:
            # Keras' Normalization divides by sqrt(variance), the original by the std itself
            # (tensorflow/tensorflow#49930); this undoes the difference for the imagenet weights.
            x = knn.rescaling(x, [1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB])
        x = knn.correct_pad_conv(x, 3, strides=2, features=self.round_filters(32), use_bias=False,
                                 name="stem_conv", **kw)
        x = self.tap(act(bn(x, name="stem_bn")))

        b = 0
        blocks = float(sum(self.round_repeats(args[1]) for args in self.blocks_args))
        for i, (kernel_size, repeats, filters_in, filters_out, expand_ratio, strides) in enumerate(
            self.blocks_args
        ):
            filters_in = self.round_filters(filters_in)
            filters_out = self.round_filters(filters_out)
            repeats = self.round_repeats(repeats)
            block = partial(Block, kernel_size=kernel_size, expand_ratio=expand_ratio,
                            activation=self.activation, **kw)
            rates = [self.drop_connect_rate * (b + j) / blocks for j in range(repeats)]
            names = [f"block{i + 1}{chr(j + 97)}" for j in range(repeats)]
            x = knn.stage(self, block, names, x, train,
                          first={"filters_in": filters_in, "strides": strides},
                          filters_in=filters_out, filters_out=filters_out, strides=1,
                          inference_only={"drop_rate": rates})
            self.tap(x)
            b += repeats

        x = knn.conv(x, self.round_filters(1280), 1, padding="same", use_bias=False,
                     name="top_conv", **kw)
        x = act(bn(x, name="top_bn"))
        return self.top(x, dropout_rate=self.dropout_rate, train=train)


# (width_coefficient, depth_coefficient, dropout_rate) as Keras' EfficientNetB0 .. B7 pass them.
EfficientNetB0 = partial(EfficientNet, 1.0, 1.0, dropout_rate=0.2)
EfficientNetB1 = partial(EfficientNet, 1.0, 1.1, dropout_rate=0.2)
EfficientNetB2 = partial(EfficientNet, 1.1, 1.2, dropout_rate=0.3)
EfficientNetB3 = partial(EfficientNet, 1.2, 1.4, dropout_rate=0.3)
EfficientNetB4 = partial(EfficientNet, 1.4, 1.8, dropout_rate=0.4)
EfficientNetB5 = partial(EfficientNet, 1.6, 2.2, dropout_rate=0.4)
EfficientNetB6 = partial(EfficientNet, 1.8, 2.6, dropout_rate=0.5)
EfficientNetB7 = partial(EfficientNet, 2.0, 3.1, dropout_rate=0.5)
