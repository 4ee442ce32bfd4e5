"""Keras' normalisation layers as Flax twins: BatchNormalization (Keras 3's and tf_keras'),
LayerNormalization, Normalization, and the constant in-graph preprocessing (Rescaling, Normalization
with given mean and variance), with the statistics helpers that keep sums and per-channel vectors in
(at least) float32."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from .layers import ShapeCheckedParams, trains

Dtype = Any

# ---------------------------------------------------------------- statistics in (at least) float32
#
# A bfloat16 model (``dtype=bfloat16``) computes in bfloat16 except in the helpers below, which
# work on statistics: sums over a batch need more than bfloat16's 8 bits, and per-channel vectors
# cost nothing to keep in float32. Each helper's float32 operations are the listed exceptions of
# tests/test_dtypes.py (which allows them by this file and these function names only); in a
# float64 model they, like everything else, compute in float64.


def statistics_dtype(dtype: Dtype) -> Any:
    """The dtype statistics are kept and combined in: ``dtype``, but at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def batch_moments(x: jax.Array, axes: Sequence[int], *, dtype: Dtype = None,
                  fast_variance: bool = True) -> tuple[jax.Array, jax.Array]:
    """Mean and (biased) variance of ``x`` over ``axes``, computed from ``x`` upcast to
    :func:`statistics_dtype` of ``dtype`` (default ``x.dtype``), as Flax's BatchNorm does
    (bfloat16 exception: batch statistics). ``fast_variance``: E[x^2] - E[x]^2 clipped at 0,
    Flax's default, in Flax's order of operations; else E[(x - E[x])^2]."""
    x = x.astype(statistics_dtype(dtype or x.dtype))
    axes = tuple(axes)
    mean = x.mean(axes)
    if fast_variance:
        var = jnp.maximum(0.0, jax.lax.square(x).mean(axes) - jax.lax.square(mean))
    else:
        var = jnp.mean(jnp.square(x - jnp.expand_dims(mean, axes)), axis=axes)
    return mean, var


def moving_average(old: jax.Array, new: jax.Array, momentum: float,
                   correction: float = 1.0) -> jax.Array:
    """``momentum * old + (1 - momentum) * new * correction``: a BatchNorm's moving statistic,
    kept in its statistics dtype (bfloat16 exception: per-channel statistics)."""
    step = (1 - momentum) * new
    if correction != 1.0:
        step = step * correction
    return momentum * old + step


def batch_norm_multiplier(var: jax.Array, epsilon: float, scale: jax.Array | None) -> jax.Array:
    """``rsqrt(var + epsilon) * scale``, per channel, in the statistics' dtype (bfloat16
    exception: per-channel statistics)."""
    mul = jax.lax.rsqrt(var + epsilon)
    return mul if scale is None else mul * scale


def normalization_std(var: jax.Array, epsilon: float) -> jax.Array:
    """Keras Normalization's divisor ``max(sqrt(variance), epsilon)``, per channel, in the
    statistics' dtype (bfloat16 exception: per-channel statistics)."""
    return jnp.maximum(jnp.sqrt(var), epsilon)


class BatchNorm(ShapeCheckedParams, nn.BatchNorm):
    """``flax.linen.BatchNorm``'s fields, variables and arithmetic, with :class:`ShapeCheckedParams`
    and with the dtypes kept apart:

    - the moving statistics are stored in :func:`statistics_dtype` of ``param_dtype`` (float32,
      as Flax, unless the parameters are float64);
    - in training the batch mean/variance come from ``x`` upcast to at least float32
      (:func:`batch_moments`), the moving averages are updated in their own dtype;
    - the per-channel multiplier ``rsqrt(var + eps) * gamma`` is computed in the statistics'
      dtype, and the activations are normalised in the compute dtype ``dtype``. (Flax promotes
      ``x - mean`` to float32, so a bfloat16 model normalised every activation in float32.)

    In float32 every operation is Flax's (with ``use_fast_variance=False``), in Flax's order, so the
    results are Flax's bit for bit.
    ``axis_name``, ``mask`` (cross-device, masked statistics) and ``force_float32_reductions=False``
    are not supported. The batch variance is Keras' two-pass E[(x - E[x])^2] (``tf.nn.moments``,
    ``jnp.var``), not Flax's default E[x^2] - E[x]^2, which cancels in float32 where the mean is
    large against the spread: ResNet50's float32 gradients in training were 3.3x further from
    the float64 ones than Keras' own, 1x with this.
    """

    use_fast_variance: bool = False

    @nn.nowrap
    def moving_variance_correction(self, n: int) -> float:
        """The factor on the batch variance a training step moves the moving variance toward, for
        ``n`` values per channel: 1 (the biased variance), as Keras 3 and Flax."""
        return 1.0

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or self.axis_name is not None or not self.force_float32_reductions:
            raise NotImplementedError("kjax_core.nn.BatchNorm supports no mask, axis_name or "
                                      "force_float32_reductions=False")
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        # A model built with training="dropout" keeps its BatchNorms in inference mode.
        use_running_average = use_running_average or not trains(self, "batch_norm")
        axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        feature_axes = tuple(sorted(a % x.ndim for a in axis))
        reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
        feature_shape = [x.shape[a] for a in feature_axes]
        stats = statistics_dtype(self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats), feature_shape)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats), feature_shape)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = batch_moments(x, reduction_axes, dtype=self.dtype,
                                      fast_variance=self.use_fast_variance)
            if not self.is_initializing():
                n = x.size // max(1, math.prod(feature_shape))
                ra_mean.value = moving_average(ra_mean.value, mean, self.momentum)
                ra_var.value = moving_average(ra_var.value, var, self.momentum,
                                              self.moving_variance_correction(n))
        scale = bias = None
        if self.use_scale:
            scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
        mul = batch_norm_multiplier(var, self.epsilon, scale)
        dtype = nn.dtypes.canonicalize_dtype(*(a for a in (x, scale, bias) if a is not None),
                                             dtype=self.dtype)
        broadcast = [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)]

        def channels(v: jax.Array) -> jax.Array:  # cast first: reshaping moves no float32
            return v.astype(dtype).reshape(broadcast)

        y = (x.astype(dtype) - channels(mean)) * channels(mul)
        return y if bias is None else y + channels(bias)


class TFKerasBatchNorm(BatchNorm):
    """tf_keras' BatchNormalization (ResNet-RS, RegNet), which is :class:`BatchNorm` but for its
    training step: tf_keras runs TensorFlow's fused kernel (channels last, float32), which
    normalises with the biased batch variance but moves the moving variance toward the *unbiased*
    one, ``n / (n - 1)`` times it (``n`` values per channel); Keras 3 and Flax move it toward the
    biased one. The batch variance is computed as E[(x - E[x])^2]. Defaults are tf_keras' (epsilon
    1e-3, momentum 0.99); the families pass their own. Same variables as :class:`BatchNorm`, so
    the BatchNormalization layer rule and BatchNorm folding treat it alike.

    (tf_keras' float64 layer cannot use the fused kernel and moves toward the biased variance:
    this twin follows the float32 model users run, in every dtype.)
    """

    epsilon: float = 1e-3
    momentum: float = 0.99

    @nn.nowrap
    def moving_variance_correction(self, n: int) -> float:
        """``n / (n - 1)``: the unbiased batch variance, as TensorFlow's fused kernel."""
        return n / max(n - 1, 1)


def batch_norm(
    x: jax.Array,
    *,
    name: str,
    train: bool,
    epsilon: float = 1e-3,
    momentum: float = 0.99,
    center: bool = True,
    scale: bool = True,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Keras BatchNormalization (channels last). Keras' default epsilon is 1e-3; Flax's is 1e-5,
    so every family passes the epsilon its Keras source uses."""
    return BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        use_bias=center,
        use_scale=scale,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(x)


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array, *, epsilon: float = 1e-7,
              invert: bool = False) -> jax.Array:
    """Keras Normalization of ``x`` with the statistics ``mean`` / ``var``: the divisor computed
    in the statistics' dtype (:func:`normalization_std`), the rest in ``x.dtype``."""
    std = normalization_std(var, epsilon).astype(x.dtype)
    mean = mean.astype(x.dtype)
    return mean + x * std if invert else (x - mean) / std


class Normalization(nn.Module):
    """Keras Normalization: (x - mean) / max(sqrt(variance), 1e-7), statistics fixed in batch_stats
    (in :func:`statistics_dtype` of ``param_dtype``), computed in ``dtype`` (default: the input's).

    (Keras' ``backend.epsilon()`` is 1e-7.)
    """

    invert: bool = False
    epsilon: float = 1e-7
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels, stats = x.shape[-1], statistics_dtype(self.param_dtype)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), stats).value
        var = self.variable("batch_stats", "var", jnp.ones, (channels,), stats).value
        if self.dtype is not None:
            x = jnp.asarray(x, self.dtype)
        return normalize(x, mean, var, epsilon=self.epsilon, invert=self.invert)



class LayerNorm(ShapeCheckedParams, nn.Module):
    """Keras LayerNormalization over the last axis, with Keras' arithmetic and variables
    ``scale`` (gamma) and ``bias`` (beta), each absent without ``use_scale`` / ``use_bias``
    (Keras' ``scale`` / ``center``), as the LayerNormalization layer rule produces them.

    ``epsilon`` has no default: Keras' is 1e-3, Flax's LayerNorm's 1e-6, ConvNeXt passes 1e-6.
    Keras computes ``mean, var = moments(x)`` (the variance as E[(x - mean)^2]), ``inv =
    rsqrt(var + epsilon) * gamma`` and ``x * inv + (beta - mean * inv)``; so does this twin (Flax's
    LayerNorm computes ``(x - mean) * inv + beta`` with the variance as E[x^2] - mean^2). The
    per-position mean and variance are computed in at least float32 (:func:`batch_moments`), as
    Keras does, then the activations in the compute dtype ``dtype`` (default: the input's promoted
    with the parameters').
    """

    epsilon: float
    use_scale: bool = True
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = bias = None
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
        dtype = nn.dtypes.canonicalize_dtype(*(a for a in (x, scale, bias) if a is not None),
                                             dtype=self.dtype)
        mean, var = batch_moments(x, (x.ndim - 1,), dtype=dtype, fast_variance=False)
        inv = batch_norm_multiplier(var, self.epsilon, None)
        # the statistics meet the activations in the compute dtype
        mean, inv = mean.astype(dtype)[..., None], inv.astype(dtype)[..., None]
        if scale is not None:
            inv = inv * scale.astype(dtype)
        shift = -mean * inv
        if bias is not None:
            shift = shift + bias.astype(dtype)
        return x.astype(dtype) * inv + shift


# ------------------------------------------------------------- constant in-graph preprocessing
#
# Rescaling and Normalization with constants given to the Keras constructor (no weights: the
# translator carries nothing, the Flax twin holds them). The constants are built in the dtype of
# the computation, never float32 always: a float64 apply must hold no float32 constant.


def rescaling(x: jax.Array, scale: float | Sequence[float],
              offset: float | Sequence[float] = 0.0) -> jax.Array:
    """Keras Rescaling: ``x * scale + offset`` (a number, or one per channel), the constants
    in ``x.dtype``. ``x`` must already be in the compute dtype (Keras casts the input first).
    (Keras on TensorFlow rounds the constants through float32 even in a float64 model;
    ``kjax_core.parity`` makes its float64 reference exact.)"""
    y = x * jnp.asarray(scale, x.dtype)
    if not isinstance(offset, (int, float)) or offset != 0:  # Keras adds 0.0: the same values
        y = y + jnp.asarray(offset, x.dtype)
    return y


def normalize_constant(x: jax.Array, mean: Sequence[float], variance: Sequence[float], *,
                       epsilon: float = 1e-7, invert: bool = False) -> jax.Array:
    """Keras Normalization built with constant ``mean`` and ``variance`` (one per channel):
    :func:`normalize` with the constants in :func:`statistics_dtype` of ``x.dtype`` (float32 in
    a float32 or bfloat16 model, as Keras, float64 in a float64 one). ``epsilon``: Keras'
    ``backend.epsilon()``."""
    stats = statistics_dtype(x.dtype)
    return normalize(x, jnp.asarray(mean, stats), jnp.asarray(variance, stats), epsilon=epsilon,
                     invert=invert)
