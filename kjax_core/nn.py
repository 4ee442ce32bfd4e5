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
    """Keras AveragePooling2D; with 'SAME', padded cells are left out of the count as in TF."""
    return nn.avg_pool(
        x, (window, window), (strides, strides), padding=padding, count_include_pad=False
    )


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


class BatchNorm(ShapeCheckedParams, nn.BatchNorm):
    """``flax.linen.BatchNorm`` with :class:`ShapeCheckedParams`."""


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


class Normalization(nn.Module):
    """Keras Normalization: (x - mean) / max(sqrt(variance), 1e-7), statistics fixed in batch_stats.

    (Keras' ``backend.epsilon()`` is 1e-7.)
    """

    invert: bool = False
    epsilon: float = 1e-7

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32).value
        std = jnp.maximum(jnp.sqrt(var), self.epsilon).astype(x.dtype)
        mean = mean.astype(x.dtype)
        return mean + x * std if self.invert else (x - mean) / std


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
        """The images in the compute dtype (float32 unless ``dtype`` says otherwise)."""
        return jnp.asarray(x, self.dtype or jnp.float32)

    def top(self, x: jax.Array, *, dropout_rate: float = 0.0, train: bool = False) -> jax.Array:
        """Keras' head on the last feature map (see :func:`classifier_head`)."""
        return classifier_head(x, include_top=self.include_top, pooling=self.pooling,
                               classes=self.classes, classifier_activation=self.classifier_activation,
                               dropout_rate=dropout_rate, train=train, **self.dtypes)
