"""The Flax twin of kjax_tinynet.reference.TinyNet, with submodule names of its own: kjax's default
matching pairs them with Keras' automatic names by order within each kind of layer."""

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from kjax_core import nn as knn


class ChannelScale(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


def channel_scale_op(config, context):
    """The layer op of ChannelScale: its Flax module, named as the Keras layer."""
    module = ChannelScale(name=context.name)
    return lambda x, *, train: module(x)


class TinyNet(nn.Module):
    include_top: bool = True
    pooling: str | None = None
    classes: int = 10
    classifier_activation: str | None = "softmax"
    width: int = 8
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = x / 127.5 - 1.0
        x = knn.conv(x, self.width, 3, strides=2, padding="same", use_bias=False, name="stem")
        x = nn.relu(knn.batch_norm(x, name="stem_bn", train=train))
        x = knn.depthwise_conv(x, 3, padding="same", use_bias=False, name="spatial")
        x = nn.relu(knn.batch_norm(x, name="spatial_bn", train=train))
        x = ChannelScale(name="gain")(x)
        x = knn.conv(x, 2 * self.width, 1, name="expand")
        return knn.classifier_head(
            x, include_top=self.include_top, pooling=self.pooling, classes=self.classes,
            classifier_activation=self.classifier_activation, name="classifier",
        )
