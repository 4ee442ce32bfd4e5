"""Blocks the Keras applications share beyond single layers: width rounding, the strided
convolution behind ``correct_pad``, drop connect, squeeze-and-excitation, ConvNeXt's LayerScale."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from .application import Block
from .convolution import conv
from .layers import Dropout, ShapeCheckedParams, activation, correct_pad, zero_pad

Dtype = Any


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The channel rounding of the mobile applications (MobileNetV2's ``_make_divisible``,
    MobileNetV3's ``_depth``, EfficientNet's ``round_filters`` after the width multiplier): ``v``
    to the nearest multiple of ``divisor``, at least ``min_value`` (default ``divisor``), and
    one ``divisor`` more where rounding went down by more than 10%."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return int(rounded)


def correct_pad_conv(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    *,
    strides: int,
    layer: Callable[..., jax.Array] = conv,
    **layer_kwargs: Any,
) -> jax.Array:
    """A convolution as MobileNetV2/V3 and EfficientNet write a possibly strided one: with
    ``strides`` > 1, ``ZeroPadding2D(imagenet_utils.correct_pad(x, kernel_size))`` then the
    convolution 'valid'; unstrided, 'same'. ``layer`` is :func:`~kjax_core.nn.conv` (give
    ``features``) or :func:`~kjax_core.nn.depthwise_conv`; ``layer_kwargs`` go to it (``name``,
    ``use_bias``, dtypes).

    The padding depends on the parity of the input size, which Keras reads from the *static*
    shape: a Keras model built for ``(None, None, 3)`` pads as for an even size whatever the size
    it is called on. This twin always knows the size, so it equals the Keras model built for
    that size (see :func:`~kjax_core.nn.correct_pad`); compare at odd sizes with a Keras model
    built for them.
    """
    if strides > 1:
        x = zero_pad(x, correct_pad(x, kernel_size))
        padding = "valid"
    else:
        padding = "same"
    return layer(x, kernel_size=kernel_size, strides=strides, padding=padding, **layer_kwargs)


def drop_connect(x: jax.Array, rate: float, *, train: bool, name: str) -> jax.Array:
    """Keras ``Dropout(rate, noise_shape=(None, 1, 1, 1))`` (drop connect, stochastic depth):
    in training, each sample's whole tensor is dropped with probability ``rate`` or kept and
    scaled by ``1 / (1 - rate)``; the identity in inference or at rate 0. Training needs a
    ``"dropout"`` rng, as any Flax dropout. (ResNet-RS and EfficientNetV2 pass a *survival*
    probability as Keras' rate; their twins pass the same number here.)

    A :class:`kjax_core.nn.Dropout` named ``name`` (no variables; the name places its rng
    stream), so the model's ``training`` option can leave it out of training."""
    if rate == 0 or not train:
        return x
    return Dropout(rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=False,
                      name=name)(x)


def squeeze_excite(
    x: jax.Array,
    reduced_filters: int,
    *,
    reduce_name: str,
    expand_name: str,
    activation_name: str = "relu",
    gate: str | Callable[[jax.Array], jax.Array] = "sigmoid",
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Squeeze-and-excitation as the Keras applications write it: GlobalAveragePooling2D (to
    1x1), Conv2D(reduced, 1, ``activation_name``) -> Conv2D(channels, 1, ``gate``), multiply the
    input. ``gate`` is a Keras activation name or a function: sigmoid in EfficientNet, ResNet-RS
    and RegNet, MobileNetV3's hard sigmoid (``"hard_sigmoid"``; its graph multiplies by 1/6 where
    Keras' activation divides by 6, one rounding apart)."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    gate_fn = activation(gate) if gate is None or isinstance(gate, str) else gate
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = activation(activation_name)(conv(s, reduced_filters, 1, name=reduce_name, **kw))
    s = gate_fn(conv(s, x.shape[-1], 1, name=expand_name, **kw))
    return x * s


class SqueezeExcite(Block):
    """:func:`squeeze_excite` as a submodule of its own, for Keras applications whose SE layers
    share a prefix that is a module here (ResNet-RS' ``<block>_se`` holds ``se_reduce`` and
    ``se_expand``)."""

    reduced_filters: int
    reduce_name: str = "se_reduce"
    expand_name: str = "se_expand"
    activation_name: str = "relu"
    gate: str | Callable[[jax.Array], jax.Array] = "sigmoid"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return squeeze_excite(x, self.reduced_filters, reduce_name=self.reduce_name,
                              expand_name=self.expand_name, activation_name=self.activation_name,
                              gate=self.gate, **self.dtypes)


class LayerScale(ShapeCheckedParams, Block):
    """ConvNeXt's LayerScale: ``x * gamma``, one factor per channel (the last axis). Keras' layer
    names its only weight from a per-process counter (``variable``, ``variable_1``, ...); the
    LayerScale layer rule takes it whatever its name into ``params/gamma``. ``init_value`` is
    Keras' ``init_values`` (what a fresh model starts from)."""

    init_value: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                           self.param_dtype)
        x, gamma = nn.dtypes.promote_dtype(x, gamma, dtype=self.dtype)
        return x * gamma
