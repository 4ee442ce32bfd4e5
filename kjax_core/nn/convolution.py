"""Keras Conv2D as one call, :func:`conv`, which picks the fastest exact Flax formulation: 1x1
convolutions as matrix products, depthwise ones (``groups`` = input channels) as shifted sums,
other grouped ones group by group (:mod:`.grouped`), the rest as ``flax.linen.Conv``. Every
formulation keeps ``nn.Conv``'s variables, kernel (kh, kw, in / groups, out) and bias (out,).
Must be called inside a parent's ``@nn.compact`` method; the submodule gets the Keras layer name."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from .depthwise import DepthwiseConv
from .grouped import GroupedConv
from .layers import Conv, Dtype, PointwiseConv, pair


def conv(x: jax.Array, features: int, kernel_size: int | Sequence[int], *, name: str,
         **options) -> jax.Array:
    """Keras Conv2D (default padding 'valid', as Keras; Flax's default is 'SAME'): the module of
    :func:`conv_module` for ``x``'s channels, applied to ``x``."""
    return conv_module(x.shape[-1], features, kernel_size, name=name, **options)(x)


def conv_module(
    channels: int,
    features: int,
    kernel_size: int | Sequence[int],
    *,
    name: str,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    use_bias: bool = True,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> Any:
    """The Flax module computing Keras Conv2D on ``channels`` input channels.

    'same' in Keras is TF SAME, which XLA's 'SAME' equals (the extra pad goes at the end).
    A 1x1 convolution without padding or groups is a :class:`PointwiseConv` (a matrix product,
    the same variables as ``nn.Conv``), which XLA:CPU runs faster. With ``groups`` equal to the
    input channels (ConvNeXt writes its depthwise convolution as ``Conv2D(groups=C)``) it is a
    :class:`~kjax_core.nn.depthwise.DepthwiseConv` (kernel (kh, kw, 1, features), the layout of
    Flax's grouped convolution; ``features`` a multiple of C), with other ``groups`` > 1 a
    :class:`~kjax_core.nn.grouped.GroupedConv` (measured: about 4x faster than XLA:CPU's grouped
    convolution on RegNet's shapes).
    A dilated convolution is ``flax.linen.Conv`` with ``kernel_dilation`` (grouped too).
    """
    kernel_size, strides, dilation = pair(kernel_size), pair(strides), pair(dilation)
    padding = padding.upper() if isinstance(padding, str) else padding
    unpadded = isinstance(padding, str) or not any(p for pair in padding for p in pair)
    if groups != 1 and (channels % groups or features % groups):
        raise ValueError(f"{name}: groups={groups} must divide the {channels} input channels and "
                         f"the {features} filters (as Keras requires)")
    common = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
    if dilation != (1, 1):
        return Conv(features, kernel_size, strides=strides, padding=padding,
                    kernel_dilation=dilation, feature_group_count=groups, **common)
    if groups == 1 and kernel_size == (1, 1) and unpadded and strides[0] == strides[1]:
        return PointwiseConv(features, strides=strides[0], **common)
    if groups > 1 and groups == channels:
        return DepthwiseConv(kernel_size, strides=strides, padding=padding,
                             depth_multiplier=features // channels, **common)
    if groups > 1:
        return GroupedConv(features, kernel_size, groups, strides=strides, padding=padding,
                           **common)
    return Conv(features, kernel_size, strides=strides, padding=padding, **common)

