"""Flax twin of RegNetX and RegNetY (``tf_keras/src/applications/regnet.py``; Keras 3 dropped them).

One module, :class:`RegNet`, driven by tf_keras' per-model table (:data:`MODEL_CONFIGS`: depths and
widths of the four stages, group width, block type). The graph, as tf_keras builds it:

- PreStem (``include_preprocessing``): Rescaling(1/255), no weights;
- Stem: 3x3/2 Conv2D(32) 'same' without bias, BatchNorm, ReLU;
- four Stages; the first block of each strides by 2 and projects its shortcut (1x1/2 Conv2D and
  BatchNorm, ``skip_1x1`` / ``skip_bn``), the others keep the identity. A block is 1x1 Conv2D,
  grouped 3x3 Conv2D (``groups = width // group_width``, 0 taken as 1, 'same', with the
  stride), [Y: squeeze and excite to ``int(filters_in * 0.25)`` channels: the block's *input*
  width, not its output's], 1x1 Conv2D, each followed by BatchNorm (epsilon 1e-5, momentum 0.9)
  and all but the last by ReLU; ReLU after the sum with the shortcut. No bias anywhere but in
  the squeeze-excite convs;
- Head (``include_top``): GlobalAveragePooling2D and a Dense *without activation*: tf_keras checks
  ``classifier_activation`` but never applies it, so its RegNets return logits whatever it says.
  The twin does the same (what Keras computes); without top, Keras' ``pooling``.

BatchNorm is tf_keras' (:class:`kjax_core.nn.TFKerasBatchNorm`: a training step moves the moving
variance toward the unbiased batch variance, as TensorFlow's fused kernel).

Names: tf_keras prefixes every layer with ``model_name`` (a constructor option, the variant's name
by default): ``regnetx002_stem_conv``, ``regnetx002_Stage_0_XBlock_0_conv_1x1_1``. Here the stem
layers are top-level modules with those names, each stage a module ``<model_name>_Stage_<s>``
holding blocks ``XBlock_<i>`` / ``YBlock_<i>`` holding ``conv_1x1_1``, ``conv_1x1_1_bn``, ...;
joined with ``_`` they are tf_keras' names, so they match by name. The Head is the exception:
tf_keras names it from a per-process counter (``1head_dense``, then ``2head_dense`` for the next
model built). Its Dense is ``head_dense`` here and is paired as the model's only Dense layer.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import linen as nn

from kjax_core import nn as knn

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
SE_RATIO = 0.25
STEM_WIDTH = 32

# tf_keras' MODEL_CONFIGS: (depths, widths, group_width, block_type); default size 224 for all.
MODEL_CONFIGS = {
    "x002": ((1, 1, 4, 7), (24, 56, 152, 368), 8, "X"),
    "x004": ((1, 2, 7, 12), (32, 64, 160, 384), 16, "X"),
    "x006": ((1, 3, 5, 7), (48, 96, 240, 528), 24, "X"),
    "x008": ((1, 3, 7, 5), (64, 128, 288, 672), 16, "X"),
    "x016": ((2, 4, 10, 2), (72, 168, 408, 912), 24, "X"),
    "x032": ((2, 6, 15, 2), (96, 192, 432, 1008), 48, "X"),
    "x040": ((2, 5, 14, 2), (80, 240, 560, 1360), 40, "X"),
    "x064": ((2, 4, 10, 1), (168, 392, 784, 1624), 56, "X"),
    "x080": ((2, 5, 15, 1), (80, 240, 720, 1920), 120, "X"),
    "x120": ((2, 5, 11, 1), (224, 448, 896, 2240), 112, "X"),
    "x160": ((2, 6, 13, 1), (256, 512, 896, 2048), 128, "X"),
    "x320": ((2, 7, 13, 1), (336, 672, 1344, 2520), 168, "X"),
    "y002": ((1, 1, 4, 7), (24, 56, 152, 368), 8, "Y"),
    "y004": ((1, 3, 6, 6), (48, 104, 208, 440), 8, "Y"),
    "y006": ((1, 3, 7, 4), (48, 112, 256, 608), 16, "Y"),
    "y008": ((1, 3, 8, 2), (64, 128, 320, 768), 16, "Y"),
    "y016": ((2, 6, 17, 2), (48, 120, 336, 888), 24, "Y"),
    "y032": ((2, 5, 13, 1), (72, 216, 576, 1512), 24, "Y"),
    "y040": ((2, 6, 12, 2), (128, 192, 512, 1088), 64, "Y"),
    "y064": ((2, 7, 14, 2), (144, 288, 576, 1296), 72, "Y"),
    "y080": ((2, 4, 10, 1), (168, 448, 896, 2016), 56, "Y"),
    "y120": ((2, 5, 11, 1), (224, 448, 896, 2240), 112, "Y"),
    "y160": ((2, 4, 11, 1), (224, 448, 1232, 3024), 112, "Y"),
    "y320": ((2, 5, 12, 1), (232, 696, 1392, 3712), 232, "Y"),
}


def batch_norm(x: jax.Array, *, name: str, train: bool, **kw) -> jax.Array:
    """tf_keras' BatchNormalization as RegNet sets it (epsilon 1e-5, momentum 0.9)."""
    return knn.TFKerasBatchNorm(use_running_average=not train, epsilon=BN_EPSILON,
                                momentum=BN_MOMENTUM, name=name, **kw)(x)


class RegNetBlock(knn.Block):
    """``XBlock`` / ``YBlock`` (``squeeze_excite``): 1x1, grouped 3x3 (with the stride), [SE],
    1x1, each with BatchNorm, plus the shortcut (projected where the block strides); ReLU."""

    filters_in: int
    filters_out: int
    group_width: int
    stride: int = 1
    squeeze_excite: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.filters_in != self.filters_out and self.stride == 1:
            raise ValueError(f"{self.name}: {self.filters_in} input and {self.filters_out} output "
                             "filters differ at stride 1 (tf_keras refuses it too)")
        kw = self.dtypes
        bn = partial(batch_norm, train=train, **kw)
        conv = partial(knn.conv, use_bias=False, **kw)
        width = self.filters_out
        if self.stride != 1:
            skip = bn(conv(x, width, 1, strides=self.stride, name="skip_1x1"), name="skip_bn")
        else:
            skip = x
        y = nn.relu(bn(conv(x, width, 1, name="conv_1x1_1"), name="conv_1x1_1_bn"))
        # tf_keras' Conv2D takes groups=0 as 1 (``groups or 1``): regnetx080's first stage is
        # 80 wide with group width 120, a dense 3x3
        groups = width // self.group_width or 1
        y = conv(y, width, 3, strides=self.stride, padding="same", groups=groups, name="conv_3x3")
        y = nn.relu(bn(y, name="conv_3x3_bn"))
        if self.squeeze_excite:
            # tf_keras: se_filters = int(filters_in * ratio), from the block's input width
            y = knn.squeeze_excite(y, int(self.filters_in * SE_RATIO),
                                   reduce_name="squeeze_and_excite_squeeze",
                                   expand_name="squeeze_and_excite_excite", **kw)
        y = bn(conv(y, width, 1, name="conv_1x1_2"), name="conv_1x1_2_bn")
        return nn.relu(y + skip)


class Stage(knn.Block):
    """``Stage``: ``depth`` blocks; the first strides by 2 from ``filters_in`` channels."""

    block_type: str
    depth: int
    group_width: int
    filters_in: int
    filters_out: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.block_type not in ("X", "Y"):
            raise ValueError(f"block_type must be 'X' or 'Y' (no tf_keras model has Z blocks); "
                             f"got {self.block_type!r}")
        block = partial(RegNetBlock, group_width=self.group_width,
                        squeeze_excite=self.block_type == "Y", **self.dtypes)
        names = [f"{self.block_type}Block_{i}" for i in range(self.depth)]
        x = block(self.filters_in, self.filters_out, stride=2, name=names[0])(x, train)
        return knn.repeat(self, block, names[1:], x, train, filters_in=self.filters_out,
                          filters_out=self.filters_out, stride=1)


class RegNet(knn.Application):
    """RegNet with tf_keras' option names; ``config`` is the variant's key of
    :data:`MODEL_CONFIGS` (``"x002"``), ``model_name`` tf_keras' option of that name (every layer
    name starts with it). ``classifier_activation`` is accepted and, as in tf_keras, not applied:
    the top returns logits."""

    config: str
    model_name: str
    include_preprocessing: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        depths, widths, group_width, block_type = MODEL_CONFIGS[self.config]
        x = self.inputs(x)
        if self.include_preprocessing:
            x = knn.rescaling(x, 1.0 / 255.0)  # PreStem
        x = knn.conv(x, STEM_WIDTH, 3, strides=2, padding="same", use_bias=False,
                     name=f"{self.model_name}_stem_conv", **kw)
        x = self.tap(nn.relu(batch_norm(x, name=f"{self.model_name}_stem_bn", train=train, **kw)))
        filters_in = STEM_WIDTH
        for s, (depth, width) in enumerate(zip(depths, widths)):
            x = Stage(block_type, depth, group_width, filters_in, width,
                      name=f"{self.model_name}_Stage_{s}", **kw)(x, train)
            self.tap(x)
            filters_in = width
        if self.features_only:
            return self.features(x)
        # tf_keras' Head: pooling and a Dense(classes) with no activation (see the module doc)
        return knn.classifier_head(x, include_top=self.include_top, pooling=self.pooling,
                                   classes=self.classes, classifier_activation=None,
                                   name="head_dense", **kw)


def _variant(config: str):
    return partial(RegNet, config=config, model_name=f"regnet{config}")


RegNetX002 = _variant("x002")
RegNetX004 = _variant("x004")
RegNetX006 = _variant("x006")
RegNetX008 = _variant("x008")
RegNetX016 = _variant("x016")
RegNetX032 = _variant("x032")
RegNetX040 = _variant("x040")
RegNetX064 = _variant("x064")
RegNetX080 = _variant("x080")
RegNetX120 = _variant("x120")
RegNetX160 = _variant("x160")
RegNetX320 = _variant("x320")
RegNetY002 = _variant("y002")
RegNetY004 = _variant("y004")
RegNetY006 = _variant("y006")
RegNetY008 = _variant("y008")
RegNetY016 = _variant("y016")
RegNetY032 = _variant("y032")
RegNetY040 = _variant("y040")
RegNetY064 = _variant("y064")
RegNetY080 = _variant("y080")
RegNetY120 = _variant("y120")
RegNetY160 = _variant("y160")
RegNetY320 = _variant("y320")
