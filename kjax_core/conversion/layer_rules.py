"""Built-in layer rules: how the weights of common Keras layers become Flax leaves.

Each rule takes a Keras layer and a :class:`~kjax_core.plugin_system.types.WeightBag` and returns the variable
subtree of the Flax twin named in its docstring. Aliases cover Keras 3 / tf_keras naming differences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import WeightsError
from ..plugin_system.types import LayerRule

if TYPE_CHECKING:  # the rules are registered by `kjax list` too, which must not import numpy
    import numpy as np

    from ..plugin_system.types import WeightBag


def _with_bias(params: dict, weights: WeightBag) -> dict:
    bias = weights.take_optional("bias")
    if bias is not None:
        params["bias"] = bias
    return params


def conv(layer: Any, weights: WeightBag) -> dict:
    """Conv2D -> ``flax.linen.Conv``. Keras' (kh, kw, in/groups, out) is Flax's layout already,
    grouped convolutions included (``feature_group_count=groups``)."""
    return {"params": _with_bias({"kernel": weights.take("kernel")}, weights)}


def dense(layer: Any, weights: WeightBag) -> dict:
    """Dense -> ``flax.linen.Dense``; (in, out) in both."""
    return {"params": _with_bias({"kernel": weights.take("kernel")}, weights)}


def depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras depthwise (kh, kw, C, M) -> Flax grouped conv (kh, kw, 1, C*M).

    Output channel c*M + m of Keras is channel m of group c in Flax, so the flattening order is (c m).
    """
    from einops import rearrange

    return rearrange(kernel, "h w c m -> h w 1 (c m)")


def depthwise_conv(layer: Any, weights: WeightBag) -> dict:
    """DepthwiseConv2D -> ``flax.linen.Conv(C * depth_multiplier, feature_group_count=C)``
    (see :func:`kjax_core.nn.depthwise_conv`)."""
    kernel = depthwise_kernel(weights.take("kernel", "depthwise_kernel"))
    return {"params": _with_bias({"kernel": kernel}, weights)}


def separable_conv(layer: Any, weights: WeightBag) -> dict:
    """SeparableConv2D -> :class:`kjax_core.nn.SeparableConv2D`: a depthwise ``Conv`` named
    ``depthwise`` (no bias) followed by a 1x1 ``Conv`` named ``pointwise`` carrying the bias."""
    depthwise = {"kernel": depthwise_kernel(weights.take("depthwise_kernel"))}
    pointwise = _with_bias({"kernel": weights.take("pointwise_kernel")}, weights)
    return {"params": {"depthwise": depthwise, "pointwise": pointwise}}


def _scale_and_bias(weights: WeightBag) -> dict:
    """Keras' gamma/beta (each absent when scale/center is off) -> Flax's scale/bias."""
    params = {}
    for keras_name, flax_name in (("gamma", "scale"), ("beta", "bias")):
        value = weights.take_optional(keras_name)
        if value is not None:
            params[flax_name] = value
    return params


def batch_norm(layer: Any, weights: WeightBag) -> dict:
    """BatchNormalization -> ``flax.linen.BatchNorm`` (``use_scale``/``use_bias`` follow Keras'
    ``scale``/``center``): gamma -> scale, beta -> bias, moving mean/variance -> batch_stats."""
    params = _scale_and_bias(weights)
    stats = {"mean": weights.take("moving_mean"), "var": weights.take("moving_variance")}
    return {"params": params, "batch_stats": stats} if params else {"batch_stats": stats}


def layer_norm(layer: Any, weights: WeightBag) -> dict:
    """LayerNormalization -> :class:`kjax_core.nn.LayerNorm` (``use_scale``/``use_bias`` follow
    Keras' ``scale``/``center``; ``flax.linen.LayerNorm`` has the same variables): gamma -> scale,
    beta -> bias."""
    return {"params": _scale_and_bias(weights)}


def layer_scale(layer: Any, weights: WeightBag) -> dict:
    """ConvNeXt's LayerScale -> :class:`kjax_core.nn.LayerScale`: its only weight -> gamma. Keras
    names that weight from a per-process counter (``variable``, ``variable_1``, ...), so it is
    taken whatever its name."""
    names = weights.leftover()
    if len(names) != 1:
        raise WeightsError(f"LayerScale layer '{weights.layer_name}' should have one weight; "
                           f"it has {len(names)}: {', '.join(names) or 'none'}")
    return {"params": {"gamma": weights.take(names[0])}}


def normalization(layer: Any, weights: WeightBag) -> dict:
    """Normalization -> :class:`kjax_core.nn.Normalization`: mean/variance as fixed statistics in
    ``batch_stats``, flattened to the channel axis. ``count`` (the number of samples ``adapt`` saw)
    does not enter the computation."""
    weights.discard("count")
    import numpy as np

    mean = np.reshape(weights.take("mean"), (-1,))
    variance = np.reshape(weights.take("variance"), (-1,))
    return {"batch_stats": {"mean": mean, "var": variance}}


BUILTIN_RULES = [
    LayerRule("Conv2D", conv),
    LayerRule("Dense", dense),
    LayerRule("DepthwiseConv2D", depthwise_conv),
    LayerRule("SeparableConv2D", separable_conv),
    LayerRule("BatchNormalization", batch_norm),
    LayerRule("LayerNormalization", layer_norm),
    LayerRule("LayerScale", layer_scale),
    LayerRule("Normalization", normalization),
]
