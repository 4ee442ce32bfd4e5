"""Blocks the Keras applications share beyond single layers."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

from .convolution import conv
from .layers import activation

Dtype = Any


def squeeze_excite(
    x: jax.Array,
    reduced_filters: int,
    *,
    reduce_name: str,
    expand_name: str,
    activation_name: str = "relu",
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Squeeze-and-excitation as the Keras applications write it: GlobalAveragePooling2D, Reshape
    to 1x1, Conv2D(reduced, 1, activation) -> Conv2D(channels, 1, sigmoid), multiply the input."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = activation(activation_name)(conv(s, reduced_filters, 1, name=reduce_name, **kw))
    s = jax.nn.sigmoid(conv(s, x.shape[-1], 1, name=expand_name, **kw))
    return x * s

