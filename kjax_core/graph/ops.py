"""The core's layer ops (see :class:`kjax_core.LayerOp`): for each Keras layer class, its
computation as Flax, built from the layer's ``get_config()``, transcribing Keras 3's ``call``.

Each builder takes ``(config, context)`` and returns ``op(*args, train, **kwargs)``. Weight-carrying
layers create their module (named ``context.name``) on the first call, when the input's channels
are known, and keep it: a layer Keras calls twice is one module called twice. Configurations an op
does not cover (channels first, dilated depthwise kernels, ...) fail with
:class:`kjax_core.errors.UnsupportedModelError` naming the layer, when the graph is first traced.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from .. import nn as knn
from ..nn.layers import pair
from ..errors import UnsupportedModelError
from ..plugin_system.types import OpContext

Config = Mapping[str, Any]


def _refuse(context: OpContext, kind: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"layer '{context.name}' ({kind}): {why}")


def _channels_last(config: Config, context: OpContext, kind: str) -> None:
    if config.get("data_format") not in (None, "channels_last"):
        raise _refuse(context, kind, f"data_format={config['data_format']!r}; kjax computes "
                                     "channels last only")


def _last_axis(config: Config, context: OpContext, kind: str) -> None:
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, 3):
        raise _refuse(context, kind, f"axis={config.get('axis')!r}; only the channel axis (-1) "
                                     "is supported")


def _activation(config: Config, context: OpContext, kind: str, key: str = "activation"):
    name = config.get(key, "linear")
    if not isinstance(name, str) or name not in knn.ACTIVATIONS:
        raise _refuse(context, kind, f"activation {name!r} has no Flax op (known: "
                                     f"{', '.join(sorted(k for k in knn.ACTIVATIONS if k))})")
    return knn.activation(name)


def _padding(config: Config, context: OpContext, kind: str) -> str:
    padding = str(config.get("padding", "valid")).upper()
    if padding not in ("VALID", "SAME"):
        raise _refuse(context, kind, f"padding={config.get('padding')!r}")
    return padding


def _lazy(make: Callable[[jax.Array], Any], after: Callable[[jax.Array], jax.Array] | None = None):
    """``op(x, train)`` applying the module ``make(x)`` builds on the first call (then kept)."""
    module = None

    def op(x: jax.Array, *, train: bool) -> jax.Array:
        nonlocal module
        if module is None:
            module = make(x)
        y = module(x)
        return after(y) if after is not None else y

    return op


# ---------------------------------------------------------------- weight-carrying layers


def conv2d(config: Config, context: OpContext):
    _channels_last(config, context, "Conv2D")
    padding = _padding(config, context, "Conv2D")
    return _lazy(lambda x: knn.conv_module(
        x.shape[-1], config["filters"], pair(config["kernel_size"]), name=context.name,
        strides=pair(config["strides"]), padding=padding, use_bias=config["use_bias"],
        groups=config.get("groups", 1), dilation=pair(config.get("dilation_rate", 1)),
        **context.dtypes), _activation(config, context, "Conv2D"))


def depthwise_conv2d(config: Config, context: OpContext):
    _channels_last(config, context, "DepthwiseConv2D")
    if pair(config.get("dilation_rate", 1)) != (1, 1):
        raise _refuse(context, "DepthwiseConv2D", "dilation_rate other than 1 is not supported")
    padding = _padding(config, context, "DepthwiseConv2D")
    return _lazy(lambda x: knn.DepthwiseConv(
        pair(config["kernel_size"]), strides=pair(config["strides"]), padding=padding,
        depth_multiplier=config["depth_multiplier"], use_bias=config["use_bias"],
        name=context.name, **context.dtypes), _activation(config, context, "DepthwiseConv2D"))


def separable_conv2d(config: Config, context: OpContext):
    kind = "SeparableConv2D"
    _channels_last(config, context, kind)
    strides = pair(config["strides"])
    if pair(config.get("dilation_rate", 1)) != (1, 1) or strides[0] != strides[1]:
        raise _refuse(context, kind, "dilation or unequal strides are not supported")
    return _lazy(lambda x: knn.SeparableConv2D(
        config["filters"], pair(config["kernel_size"]), strides=strides[0],
        padding=_padding(config, context, kind), depth_multiplier=config["depth_multiplier"],
        use_bias=config["use_bias"], name=context.name, **context.dtypes),
        _activation(config, context, kind))


def dense(config: Config, context: OpContext):
    return _lazy(lambda x: knn.Dense(config["units"], use_bias=config["use_bias"],
                                     name=context.name, **context.dtypes),
                 _activation(config, context, "Dense"))


def batch_normalization(config: Config, context: OpContext, kind: Any = knn.BatchNorm):
    _last_axis(config, context, "BatchNormalization")
    for option in ("renorm", "virtual_batch_size", "adjustment"):  # tf_keras' extras
        if config.get(option):
            raise _refuse(context, "BatchNormalization", f"{option}={config[option]!r} is not "
                                                         "supported")
    module = kind(momentum=config["momentum"], epsilon=config["epsilon"],
                  use_bias=config["center"], use_scale=config["scale"],
                  name=context.name, **context.dtypes)
    return lambda x, *, train: module(x, use_running_average=not train)


def tf_keras_batch_normalization(config: Config, context: OpContext):
    """tf_keras' BatchNormalization: Keras 3's but for the moving variance's training step
    (:class:`kjax_core.nn.TFKerasBatchNorm`)."""
    return batch_normalization(config, context, knn.TFKerasBatchNorm)


def layer_normalization(config: Config, context: OpContext):
    _last_axis(config, context, "LayerNormalization")
    if config.get("rms_scaling"):
        raise _refuse(context, "LayerNormalization", "rms_scaling=True is not supported")
    module = knn.LayerNorm(config["epsilon"], use_scale=config["scale"],
                           use_bias=config["center"], name=context.name, **context.dtypes)
    return lambda x, *, train: module(x)


def normalization(config: Config, context: OpContext):
    _last_axis(config, context, "Normalization")
    invert = bool(config.get("invert", False))
    if config.get("mean") is not None:  # constants given to the constructor: no weights
        mean, variance = config["mean"], config["variance"]
        return lambda x, *, train: knn.normalize_constant(x, mean, variance, invert=invert)
    module = knn.Normalization(invert=invert, name=context.name, **context.dtypes)
    return lambda x, *, train: module(x)


def layer_scale(config: Config, context: OpContext):
    module = knn.LayerScale(init_value=config.get("init_values", 1e-6), name=context.name,
                            **context.dtypes)
    return lambda x, *, train: module(x)


# ---------------------------------------------------------------- activations


def _stateless(fn: Callable[..., jax.Array]):
    return lambda *args, train, **kwargs: fn(*args, **kwargs)


def activation_layer(config: Config, context: OpContext):
    return _stateless(_activation(config, context, "Activation"))


def relu_layer(config: Config, context: OpContext):
    """Keras' ReLU layer (``keras.activations.relu``'s arithmetic, case by case)."""
    max_value, slope = config.get("max_value"), config.get("negative_slope", 0.0) or 0.0
    threshold = config.get("threshold", 0.0) or 0.0

    def relu(x: jax.Array) -> jax.Array:
        if slope and max_value is None and threshold == 0:
            return jax.nn.leaky_relu(x, slope)
        negative = jax.nn.relu(threshold - x) if slope else None
        clip = max_value is not None
        if threshold != 0:
            x = x * (x > threshold).astype(x.dtype)
        elif max_value == 6:
            x, clip = jax.nn.relu6(x), False
        else:
            x = jax.nn.relu(x)
        if clip:
            x = jnp.clip(x, 0, max_value)
        return x - slope * negative if slope else x

    return _stateless(relu)


def leaky_relu_layer(config: Config, context: OpContext):
    slope = config.get("negative_slope", config.get("alpha", 0.3))
    return _stateless(lambda x: jax.nn.leaky_relu(x, slope))


def softmax_layer(config: Config, context: OpContext):
    axis = config.get("axis", -1)
    return _stateless(lambda x: jax.nn.softmax(x, axis=axis))


# ---------------------------------------------------------------- merges


def _merge(fn: Callable[[jax.Array, jax.Array], jax.Array]):
    """Keras' merge layers fold their inputs left to right: ((a op b) op c)."""
    def merge(inputs: Sequence[jax.Array], *, train: bool) -> jax.Array:
        out = inputs[0]
        for x in inputs[1:]:
            out = fn(out, x)
        return out

    return merge


def add(config: Config, context: OpContext):
    return _merge(jnp.add)


def subtract(config: Config, context: OpContext):
    return lambda inputs, *, train: inputs[0] - inputs[1]


def multiply(config: Config, context: OpContext):
    return _merge(jnp.multiply)


def average(config: Config, context: OpContext):
    merged = _merge(jnp.add)
    return lambda inputs, *, train: merged(inputs, train=train) / len(inputs)


def maximum(config: Config, context: OpContext):
    return _merge(jnp.maximum)


def minimum(config: Config, context: OpContext):
    return _merge(jnp.minimum)


def concatenate(config: Config, context: OpContext):
    axis = config.get("axis", -1)
    return lambda inputs, *, train: jnp.concatenate(inputs, axis=axis)


def custom_scale(config: Config, context: OpContext):
    """InceptionResNetV2's CustomScaleLayer: ``inputs[0] + inputs[1] * scale``."""
    scale = config["scale"]
    return lambda inputs, *, train: inputs[0] + inputs[1] * scale


# ---------------------------------------------------------------- spatial


def _pads(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' padding/cropping argument: ``n``, ``(rows, cols)`` or ``((t, b), (l, r))``."""
    if isinstance(value, int):
        return (value, value), (value, value)
    return pair(value[0]), pair(value[1])


def zero_padding2d(config: Config, context: OpContext):
    _channels_last(config, context, "ZeroPadding2D")
    padding = _pads(config["padding"])
    return _stateless(lambda x: knn.zero_pad(x, padding))


def cropping2d(config: Config, context: OpContext):
    _channels_last(config, context, "Cropping2D")
    (top, bottom), (left, right) = _pads(config["cropping"])
    return _stateless(lambda x: x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :])


def _pooling(config: Config, context: OpContext, kind: str, pool):
    _channels_last(config, context, kind)
    window, padding = pair(config["pool_size"]), _padding(config, context, kind)
    strides = pair(config.get("strides") or config["pool_size"])
    return _stateless(lambda x: pool(x, window, strides, padding))


def max_pooling2d(config: Config, context: OpContext):
    return _pooling(config, context, "MaxPooling2D", knn.max_pool)


def average_pooling2d(config: Config, context: OpContext):
    return _pooling(config, context, "AveragePooling2D", knn.avg_pool)


def global_average_pooling2d(config: Config, context: OpContext):
    _channels_last(config, context, "GlobalAveragePooling2D")
    keepdims = bool(config.get("keepdims", False))
    return _stateless(lambda x: jnp.mean(x, axis=(1, 2), keepdims=keepdims))


def global_max_pooling2d(config: Config, context: OpContext):
    _channels_last(config, context, "GlobalMaxPooling2D")
    keepdims = bool(config.get("keepdims", False))
    return _stateless(lambda x: jnp.max(x, axis=(1, 2), keepdims=keepdims))


# ---------------------------------------------------------------- shapes, preprocessing, dropout


def flatten(config: Config, context: OpContext):
    _channels_last(config, context, "Flatten")
    return _stateless(lambda x: x.reshape(x.shape[0], -1))


def reshape(config: Config, context: OpContext):
    target = tuple(config["target_shape"])
    return _stateless(lambda x: x.reshape(x.shape[0], *target))


def permute(config: Config, context: OpContext):
    dims = tuple(config["dims"])
    return _stateless(lambda x: jnp.transpose(x, (0, *dims)))


def identity(config: Config, context: OpContext):
    return _stateless(lambda x: x)


def rescaling(config: Config, context: OpContext):
    scale, offset = config["scale"], config.get("offset", 0.0)
    return _stateless(lambda x: knn.rescaling(x, scale, offset))


def dropout(config: Config, context: OpContext):
    """Keras Dropout; a ``noise_shape`` of ones and Nones (EfficientNet's drop connect,
    ``(None, 1, 1, 1)``) shares the mask along the axes of the ones."""
    noise = config.get("noise_shape")
    if noise is not None and any(d not in (None, 1) for d in noise):
        raise _refuse(context, "Dropout", f"noise_shape {noise} is not supported")
    shared = tuple(i for i, d in enumerate(noise or ()) if d == 1)
    module = knn.Dropout(config["rate"], broadcast_dims=shared, name=context.name)
    return lambda x, *, train: module(x, deterministic=not train)


def spatial_dropout2d(config: Config, context: OpContext):
    _channels_last(config, context, "SpatialDropout2D")
    module = knn.Dropout(config["rate"], broadcast_dims=(1, 2), name=context.name)
    return lambda x, *, train: module(x, deterministic=not train)


def stochastic_depth(config: Config, context: OpContext):
    """ConvNeXt's StochasticDepth: each sample's branch dropped with probability
    ``drop_path_rate`` in training, the rest scaled by ``1 / (1 - rate)``."""
    rate = config["drop_path_rate"]
    return lambda x, *, train: knn.drop_connect(x, rate, train=train, name=context.name)


# ---------------------------------------------------------------- keras.ops operations


def ops_add(config: Config, context: OpContext):
    return _stateless(lambda a, b: jnp.add(a, b))


def ops_subtract(config: Config, context: OpContext):
    return _stateless(lambda a, b: jnp.subtract(a, b))


def ops_multiply(config: Config, context: OpContext):
    return _stateless(lambda a, b: jnp.multiply(a, b))


def ops_divide(config: Config, context: OpContext):
    return _stateless(lambda a, b: jnp.divide(a, b))


# ---------------------------------------------------------------- tf_keras' TFOpLambda functions
# A TensorFlow function called on tf_keras' symbolic tensors (``x + y``, ``tf.nn.relu(x)``) is a
# TFOpLambda layer recording the function's name and its arguments: the first positional, the
# others by TensorFlow's parameter names (``tf.math.multiply(a, b)`` is ``(a,), {"y": b}``).


def _tf_function(fn: Callable[..., jax.Array], names: Sequence[str], arity: int):
    """``op`` calling ``fn`` with the tensors given positionally, then those given by ``names``
    (TensorFlow's parameter names; a unary function has two spellings, ``x`` and ``features``)."""
    def op(*args, train, **kwargs):
        values = list(args) + [kwargs.pop(name) for name in names if name in kwargs]
        if kwargs or len(values) != arity:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} ({len(values)} values)")
        return fn(*values)

    return op


def _tf_binary(fn: Callable[[Any, Any], jax.Array]):
    return _tf_function(fn, ("x", "y"), 2)


def _tf_unary(fn: Callable[[jax.Array], jax.Array]):
    return _tf_function(fn, ("x", "features"), 1)


def tf_add(config: Config, context: OpContext):
    return _tf_binary(jnp.add)


def tf_subtract(config: Config, context: OpContext):
    return _tf_binary(jnp.subtract)


def tf_multiply(config: Config, context: OpContext):
    return _tf_binary(jnp.multiply)


def tf_divide(config: Config, context: OpContext):
    return _tf_binary(jnp.divide)


def tf_relu(config: Config, context: OpContext):
    return _tf_unary(jax.nn.relu)


def tf_relu6(config: Config, context: OpContext):
    return _tf_unary(jax.nn.relu6)


def tf_sigmoid(config: Config, context: OpContext):
    return _tf_unary(jax.nn.sigmoid)


def tf_silu(config: Config, context: OpContext):
    return _tf_unary(jax.nn.silu)


def tf_tanh(config: Config, context: OpContext):
    return _tf_unary(jnp.tanh)
