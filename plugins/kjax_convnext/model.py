"""Flax twin of ``keras/src/applications/convnext.py`` (ConvNeXt Tiny, Small, Base, Large, XLarge).

Names follow Keras' with the model name as prefix (``convnext_tiny``): the stem
(``<prefix>_stem_conv``, 4x4 stride 4, and ``<prefix>_stem_layernorm``; Keras wraps the two in a
Sequential, whose layers the translator walks), the downsampling blocks
(``<prefix>_downsampling_layernorm_<i>``, then a 2x2 stride 2 ``<prefix>_downsampling_conv_<i>``)
and the blocks, each a submodule ``<prefix>_stage_<i>_block_<j>`` holding ``depthwise_conv`` (7x7
``Conv2D(groups=C)``, computed as a depthwise convolution), ``layernorm``, ``pointwise_conv_1``
and ``pointwise_conv_2`` (Dense layers on the channel axis), ``layer_scale``.

Every LayerNormalization has epsilon 1e-6 (Keras' default is 1e-3); GELU is exact (erf). In-graph
preprocessing (``include_preprocessing``, 3 channels only): Normalization with the ImageNet mean
and variance times 255 as constants (the layer has no weights). The head
(:func:`kjax_core.nn.layer_norm_classifier_head`) normalises after pooling, with and without top.

Stochastic depth (``drop_path_rate``, linear from 0 to it over all blocks; Keras' variants fix it
at 0, the Flax module lets a fine-tuner set it) acts only with ``train=True`` and a ``"dropout"``
rng: each sample's residual branch is dropped with its block's rate, or kept and scaled by
1 / (1 - rate), as Keras' ``StochasticDepth``.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import numpy as np
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-6  # every LayerNormalization of ConvNeXt
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
VARIANCE = ((0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2)

# Keras' MODEL_CONFIGS: depths and projection_dims per variant (default size 224 for all).
MODEL_CONFIGS = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


class ConvNeXtBlock(knn.Block):
    """Keras' ``ConvNeXtBlock``: depthwise 7x7, LayerNorm, Dense 4C, GELU, Dense C, LayerScale
    (absent with ``layer_scale_init_value=None``), stochastic depth, plus the input."""

    projection_dim: int
    drop_path_rate: float = 0.0
    layer_scale_init_value: float | None = 1e-6

    @nn.compact
    def __call__(self, inputs: jax.Array, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = knn.conv(inputs, self.projection_dim, 7, padding="same", groups=self.projection_dim,
                     name="depthwise_conv", **kw)
        x = knn.LayerNorm(epsilon=EPSILON, name="layernorm", **kw)(x)
        x = knn.Dense(4 * self.projection_dim, name="pointwise_conv_1", **kw)(x)
        x = knn.gelu(x)
        x = knn.Dense(self.projection_dim, name="pointwise_conv_2", **kw)(x)
        if self.layer_scale_init_value is not None:
            x = knn.LayerScale(init_value=self.layer_scale_init_value, name="layer_scale", **kw)(x)
        # Keras' StochasticDepth: floor(keep + U[0, 1)) per sample, x / keep times it.
        x = knn.drop_connect(x, self.drop_path_rate, train=train, name="stochastic_depth")
        return inputs + x


class ConvNeXt(knn.Application):
    """ConvNeXt with Keras' option names; ``model_name`` is the Keras model name, the prefix of
    every layer name (the variants pass Keras' defaults)."""

    depths: Sequence[int]
    projection_dims: Sequence[int]
    model_name: str = "convnext"
    drop_path_rate: float = 0.0
    layer_scale_init_value: float | None = 1e-6
    include_preprocessing: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        layer_norm = partial(knn.LayerNorm, epsilon=EPSILON, **kw)
        name = self.model_name
        x = self.inputs(x)
        if self.include_preprocessing and x.shape[-1] == 3:
            x = knn.normalize_constant(x, MEAN, VARIANCE)  # <name>_prestem_normalization
        # Stochastic depth schedule, as Keras (from the original ConvNeXt code).
        depth_drop_rates = [float(r) for r in
                            np.linspace(0.0, self.drop_path_rate, sum(self.depths))]
        cur = 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.projection_dims)):
            if i == 0:
                x = knn.conv(x, dim, 4, strides=4, name=f"{name}_stem_conv", **kw)
                x = layer_norm(name=f"{name}_stem_layernorm")(x)
            else:
                x = layer_norm(name=f"{name}_downsampling_layernorm_{i - 1}")(x)
                x = knn.conv(x, dim, 2, strides=2, name=f"{name}_downsampling_conv_{i - 1}", **kw)
            blocks = [f"{name}_stage_{i}_block_{j}" for j in range(depth)]
            x = knn.repeat(self, ConvNeXtBlock, blocks, x, train, projection_dim=dim,
                           layer_scale_init_value=self.layer_scale_init_value,
                           inference_only={"drop_path_rate": depth_drop_rates[cur:cur + depth]},
                           **kw)
            self.tap(x)
            cur += depth
        return self.layer_norm_top(x, prefix=name, epsilon=EPSILON)


def _variant(size: str) -> partial:
    depths, dims = MODEL_CONFIGS[size]
    return partial(ConvNeXt, depths, dims, model_name=f"convnext_{size}")


ConvNeXtTiny = _variant("tiny")
ConvNeXtSmall = _variant("small")
ConvNeXtBase = _variant("base")
ConvNeXtLarge = _variant("large")
ConvNeXtXLarge = _variant("xlarge")
