"""Flax building blocks shared by the family plugins: the twins of the built-in layer rules and the
Keras behaviours that a naive port gets wrong (explicit zero padding before pooling, TF-style
average pooling, the classifier head).

Functions that create submodules (``conv``, ``batch_norm``, ...) must be called inside a parent's
``@nn.compact`` method; the submodule gets the Keras layer name so parameter paths are predictable.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
Pad = tuple[tuple[int, int], tuple[int, int]]

ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array]] = {
    None: lambda x: x,
    "linear": lambda x: x,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    # Keras' gelu is exact by default; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "hard_sigmoid": lambda x: jax.nn.relu6(x + 3.0) / 6.0,
}


def activation(name: str | None) -> Callable[[jax.Array], jax.Array]:
    """The function behind a Keras activation name (``classifier_activation`` and friends)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(map(str, ACTIVATIONS))}")
    return ACTIVATIONS[name]


def zero_pad(x: jax.Array, padding: Pad) -> jax.Array:
    """Keras ZeroPadding2D(((top, bottom), (left, right))) on NHWC."""
    return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))


def correct_pad(x: jax.Array, kernel_size: int | Sequence[int]) -> Pad:
    """Keras' ``imagenet_utils.correct_pad``: the ZeroPadding2D before a strided 'valid' conv in
    MobileNet and EfficientNet (one less row/column at the top/left for even sizes).

    Keras computes it from the *static* input size and, when the size is unknown (a model built
    for ``(None, None, 3)``), pads as for an even size. The Flax twin always knows the size, so it
    matches the Keras model built for that size; parity tests of these families must build Keras
    with a concrete size at odd sizes.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    height, width = x.shape[1:3]
    return ((kh // 2 - (1 - height % 2), kh // 2), (kw // 2 - (1 - width % 2), kw // 2))


def max_pool(x: jax.Array, window: int, strides: int, padding: str = "VALID") -> jax.Array:
    """Keras MaxPooling2D. 'SAME' pads with -inf as TF does; to reproduce a Keras model that pads
    with ZeroPadding2D first, call :func:`zero_pad` and pool 'VALID' (zeros, not -inf)."""
    return nn.max_pool(x, (window, window), (strides, strides), padding=padding)


def avg_pool(x: jax.Array, window: int, strides: int, padding: str = "VALID") -> jax.Array:
    """Keras AveragePooling2D; with 'SAME', padded cells are left out of the count as in TF.

    ``flax.linen.avg_pool(count_include_pad=False)``'s arithmetic, but its count of cells per window
    is pooled from ones in ``x.dtype``: Flax's ``jnp.ones`` is float32 and turned a bfloat16
    average into a float32 one."""
    window_shape, stride_shape = (window, window), (strides, strides)
    y = nn.pooling.pool(x, 0.0, jax.lax.add, window_shape, stride_shape, padding)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    return y / nn.pooling.pool(ones, 0.0, jax.lax.add, window_shape, stride_shape, padding)


class ShapeCheckedParams:
    """Mixin for a Flax module whose parameters are created as ``param(name, init, shape, ...)``:
    where the parameter exists (every ``apply``), its shape is compared with ``shape`` directly.
    Flax instead runs ``jax.eval_shape`` of the initializer for every parameter on every trace,
    which made tracing ResNet50 0.41 s instead of 0.14 s. Same error when the shape differs."""

    @nn.nowrap
    def param(self, name: str, init_fn: Callable, *init_args: Any, unbox: bool = True,
              **init_kwargs: Any) -> Any:
        scope = self.scope
        if scope is None or not init_args or not scope.has_variable("params", name):
            return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)
        scope.reserve(name, "params")
        value = scope.get_variable("params", name)
        shape = tuple(int(d) for d in init_args[0])
        if tuple(jnp.shape(value)) != shape:
            raise flax.errors.ScopeParamShapeError(name, scope.path_text, jnp.shape(value), shape)
        return flax.core.meta.unbox(value) if unbox else value


def kernel_and_bias(module: nn.Module, x: jax.Array, kernel_shape: Sequence[int]):
    """``(x, kernel, bias)`` of a conv-like module with ``nn.Conv``'s fields (``kernel_init``,
    ``bias_init``, ``use_bias``, ``dtype``, ``param_dtype``): ``kernel`` of ``kernel_shape``,
    ``bias`` (None without ``use_bias``) of its last dimension, all promoted to ``dtype``."""
    kernel = module.param("kernel", module.kernel_init, tuple(kernel_shape), module.param_dtype)
    bias = None
    if module.use_bias:
        bias = module.param("bias", module.bias_init, (kernel_shape[-1],), module.param_dtype)
    return nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)


class Conv(ShapeCheckedParams, nn.Conv):
    """``flax.linen.Conv`` (same variables and computation) with :class:`ShapeCheckedParams`."""


class Dense(ShapeCheckedParams, nn.Dense):
    """``flax.linen.Dense`` with :class:`ShapeCheckedParams`."""


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

    In float32 every operation is Flax's, in Flax's order, so the results are Flax's bit for bit.
    ``axis_name``, ``mask`` (cross-device, masked statistics) and ``force_float32_reductions=False``
    are not supported.
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or self.axis_name is not None or not self.force_float32_reductions:
            raise NotImplementedError("kjax_core.nn.BatchNorm supports no mask, axis_name or "
                                      "force_float32_reductions=False")
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
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
                ra_mean.value = moving_average(ra_mean.value, mean, self.momentum)
                ra_var.value = moving_average(ra_var.value, var, self.momentum)
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


class PointwiseConv(ShapeCheckedParams, nn.Module):
    """A 1x1 convolution (any stride; 'same' and 'valid' agree for 1x1) as a matrix product over
    the channel axis, with ``nn.Conv``'s variables: kernel (1, 1, in, out), bias (out,).

    XLA:CPU hands a convolution and a matrix product to different kernels; measured on 2 cores
    (jax 0.10.2) the product form makes DenseNet121 about 15% faster at batch 8 (ResNet50 a few
    percent). The result is the same to float32 rounding.
    """

    features: int
    strides: int = 1
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        x, kernel, bias = kernel_and_bias(self, x, (1, 1, x.shape[-1], self.features))
        y = jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
        return y if bias is None else y + bias


def depthwise_conv(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    *,
    name: str,
    strides: int = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    depth_multiplier: int = 1,
    use_bias: bool = True,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Keras DepthwiseConv2D. Its variables are those of a Flax grouped convolution (kernel
    (kh, kw, 1, C * depth_multiplier), one group per input channel); it is computed as a sum of
    shifted copies of the input (:class:`kjax_core.depthwise.DepthwiseConv`), which XLA:CPU runs
    about 20 times faster than a grouped convolution, with the same result to float32 rounding."""
    from .depthwise import DepthwiseConv

    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    return DepthwiseConv(
        tuple(kernel_size),
        strides=(strides, strides),
        padding=padding.upper() if isinstance(padding, str) else padding,
        depth_multiplier=depth_multiplier,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(x)


class SeparableConv2D(nn.Module):
    """Keras SeparableConv2D: depthwise conv (no bias) then 1x1 pointwise conv (with the bias)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int = 1
    padding: str = "VALID"
    depth_multiplier: int = 1
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = depthwise_conv(
            x, self.kernel_size, name="depthwise", strides=self.strides, padding=self.padding,
            depth_multiplier=self.depth_multiplier, use_bias=False, **kw,
        )
        return conv(x, self.features, 1, name="pointwise", use_bias=self.use_bias, **kw)


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


def classifier_head(
    x: jax.Array,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    name: str = "predictions",
    dropout_rate: float = 0.0,
    train: bool = False,
) -> jax.Array:
    """The top shared by the Keras applications: with ``include_top``, global average pooling,
    dropout ``top_dropout`` where the family has one (``dropout_rate`` > 0; active with ``train``)
    and a Dense named ``predictions``; without, optional global 'avg' or 'max' pooling."""
    if include_top:
        x = jnp.mean(x, axis=(1, 2))
        if dropout_rate > 0:
            x = nn.Dropout(dropout_rate, deterministic=not train, name="top_dropout")(x)
        x = Dense(classes, dtype=dtype, param_dtype=param_dtype, name=name)(x)
        return activation(classifier_activation)(x)
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    return x


class Block(nn.Module, kw_only=True):
    """Base of a family's modules: the compute and parameter dtypes (keyword-only, so a subclass's
    own fields may come without defaults and stay positional); ``**self.dtypes`` passes them on."""

    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @property
    def dtypes(self) -> dict[str, Dtype]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


class Application(Block, kw_only=True):
    """Base of a family's model: the options every Keras application has, with Keras' names and
    defaults, and the dtypes of :class:`Block`. A family subclasses it, adds its own fields,
    starts ``__call__`` with ``self.inputs(x)`` and ends it with ``self.top(x)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | None = "softmax"

    def inputs(self, x: jax.Array) -> jax.Array:
        """The images in the compute dtype: ``dtype``; without one, as any Flax layer would
        compute, the floating type of the images (float32 for integer images) promoted with
        ``param_dtype`` (float32 for float32 images and parameters)."""
        if self.dtype is not None:
            return jnp.asarray(x, self.dtype)
        x = jnp.asarray(x)
        floating = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        return x.astype(jnp.promote_types(floating, self.param_dtype))

    def top(self, x: jax.Array, *, dropout_rate: float = 0.0, train: bool = False) -> jax.Array:
        """Keras' head on the last feature map (see :func:`classifier_head`)."""
        return classifier_head(x, include_top=self.include_top, pooling=self.pooling,
                               classes=self.classes, classifier_activation=self.classifier_activation,
                               dropout_rate=dropout_rate, train=train, **self.dtypes)
