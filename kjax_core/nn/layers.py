"""Keras' basic layers as Flax twins: activations, padding, pooling, Conv and Dense modules (with the
parameter shape check that spares Flax's eval_shape on every trace), 1x1 convolutions as products.

Functions that create submodules must be called inside a parent's ``@nn.compact`` method; the
submodule gets the Keras layer name so parameter paths are predictable.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any
Pad = tuple[tuple[int, int], tuple[int, int]]


# The parts of a model that ``train=True`` puts in training mode, by the model's ``training``
# option (kjax_core.nn.Application): both, BatchNorm only (deterministic training: no dropout), or
# dropout only (BatchNorm keeps and uses its moving statistics, as Keras' BatchNormalization does
# with ``trainable=False``: a frozen backbone).
TRAINING_MODES = ("all", "batch_norm", "dropout")


def enclosing_application(module: Any) -> Any:
    """The nearest module above ``module`` (or itself) that is a kjax model
    (:class:`kjax_core.nn.Application`), or None: the model whose options govern a layer, also
    when the model is a submodule of a user's own module."""
    while isinstance(module, nn.Module):
        if getattr(module, "is_kjax_application", False):
            return module
        module = module.parent
    return None


def trains(module: Any, part: str) -> bool:
    """Whether ``part`` ("batch_norm" or "dropout") follows ``train=True`` in the model that
    ``module`` belongs to (its ``training`` option; outside a kjax model, always)."""
    application = enclosing_application(module)
    mode = getattr(application, "training", "all") if application is not None else "all"
    return mode in ("all", part)


class Dropout(nn.Dropout):
    """``flax.linen.Dropout``, kept off where the model's ``training`` option leaves dropout out
    of training (:data:`TRAINING_MODES`); otherwise Flax's, rng stream and mask included."""

    def __call__(self, inputs: jax.Array, deterministic: bool | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        off = deterministic if self.deterministic is None else self.deterministic
        if off or not trains(self, "dropout"):
            return inputs
        return super().__call__(inputs, deterministic, rng=rng)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """Keras 3's ``hard_sigmoid``: ``relu6(x + 3) / 6`` (tf_keras' was ``clip(0.2 x + 0.5)``).
    MobileNetV3 writes its own in the graph, ``relu6(x + 3) * (1 / 6)``: one rounding apart."""
    return jax.nn.relu6(x + 3.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
    """Keras' ``hard_silu`` (alias ``hard_swish``): ``x * hard_sigmoid(x)``."""
    return x * hard_sigmoid(x)


def gelu(x: jax.Array) -> jax.Array:
    """Keras' ``gelu``, exact (erf); ``jax.nn.gelu`` defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def _identity(x: jax.Array) -> jax.Array:
    return x


def _softmax(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x, axis=-1)


# Keras activation names (the strings ``keras.activations.get`` takes) -> their Flax functions.
ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array]] = {
    None: _identity,
    "linear": _identity,
    "softmax": _softmax,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "gelu": gelu,
    "hard_sigmoid": hard_sigmoid,
    "hard_silu": hard_swish,
    "hard_swish": hard_swish,
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


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """A Keras size argument (``3`` or ``(3, 5)``) as (height, width)."""
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def max_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int],
             padding: str = "VALID") -> jax.Array:
    """Keras MaxPooling2D. 'SAME' pads with -inf as TF does; to reproduce a Keras model that pads
    with ZeroPadding2D first, call :func:`zero_pad` and pool 'VALID' (zeros, not -inf)."""
    return nn.max_pool(x, pair(window), pair(strides), padding=padding)


def avg_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int],
             padding: str = "VALID") -> jax.Array:
    """Keras AveragePooling2D; with 'SAME', padded cells are left out of the count as in TF.

    ``flax.linen.avg_pool(count_include_pad=False)``'s arithmetic, but its count of cells per window
    is pooled from ones in ``x.dtype``: Flax's ``jnp.ones`` is float32 and turned a bfloat16
    average into a float32 one."""
    window_shape, stride_shape = pair(window), pair(strides)
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


class ConvModule(ShapeCheckedParams, nn.Module, kw_only=True):
    """Base of kjax's own conv-like modules (pointwise, depthwise, grouped): ``nn.Conv``'s
    bias, dtype and initializer fields (keyword-only, so a subclass's own fields may come first
    and positional), for :func:`kernel_and_bias`."""

    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros


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



class PointwiseConv(ConvModule):
    """A 1x1 convolution (any stride; 'same' and 'valid' agree for 1x1) as a matrix product over
    the channel axis, with ``nn.Conv``'s variables: kernel (1, 1, in, out), bias (out,).

    XLA:CPU hands a convolution and a matrix product to different kernels; measured on 2 cores
    (jax 0.10.2) the product form makes DenseNet121 about 15% faster at batch 8 (ResNet50 a few
    percent). The result is the same to float32 rounding.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        x, kernel, bias = kernel_and_bias(self, x, (1, 1, x.shape[-1], self.features))
        y = jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
        return y if bias is None else y + bias

