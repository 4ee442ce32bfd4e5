"""Keras Conv2D as one call, :func:`conv`, which picks the fastest exact Flax formulation: 1x1
convolutions as matrix products, the rest as ``flax.linen.Conv``. Must be called inside a parent's
``@nn.compact`` method; the submodule gets the Keras layer name."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from .layers import Conv, Dtype, PointwiseConv


def conv(
    x: jax.Array,
    features: int,
    kernel_size: int | Sequence[int],
    *,
    name: str,
    strides: int = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    use_bias: bool = True,
    groups: int = 1,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Keras Conv2D (default padding 'valid', as Keras; Flax's default is 'SAME').

    'same' in Keras is TF SAME, which XLA's 'SAME' equals (the extra pad goes at the end).
    A 1x1 convolution without padding or groups is a :class:`PointwiseConv` (a matrix product,
    the same variables as ``nn.Conv``), which XLA:CPU runs faster.
    """
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    unpadded = isinstance(padding, str) or not any(p for pair in padding for p in pair)
    if tuple(kernel_size) == (1, 1) and groups == 1 and unpadded:
        return PointwiseConv(
            features, strides=strides, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
            name=name,
        )(x)
    return Conv(
        features,
        tuple(kernel_size),
        strides=(strides, strides),
        padding=padding.upper() if isinstance(padding, str) else padding,
        use_bias=use_bias,
        feature_group_count=groups,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(x)
