"""The Keras side of a translation: walk a Keras model's layers in order and run each weight-carrying
layer's weights through the layer rule of its class."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import numpy as np
from flax import traverse_util

from ..errors import WeightsError
from ..plugin_system.types import KerasLayerInfo, WeightBag, signature
from .assembly import summary


def iter_keras_layers(model: Any) -> Iterator[Any]:
    """The layers of a Keras model in model order, descending into nested models."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.weights and hasattr(layer, "inputs"):
            yield from iter_keras_layers(layer)
        else:
            yield layer


def short_name(weight: Any, layer_name: str) -> str:
    """A weight's name within its layer (``gamma``), for Keras 3 paths and tf_keras names."""
    raw = getattr(weight, "path", None) or weight.name
    parts = raw.split(":")[0].split("/")
    if layer_name in parts:
        parts = parts[len(parts) - parts[::-1].index(layer_name):]
    return "/".join(parts)


def weight_array(weight: Any) -> np.ndarray:
    """The value of one Keras weight as a numpy array, without a copy where the backend allows:
    a view of the JAX array (Keras 3 on JAX) or of a tensor read from the TensorFlow variable
    (Keras 3 on TensorFlow, tf_keras; the variable copies itself if it is written later, so the
    view keeps the value it had). ``layer.get_weights()`` copies every weight."""
    value = weight
    if type(weight).__module__.startswith("keras."):  # Keras 3 Variable: its backend value
        value = weight.value
    if hasattr(value, "read_value") and hasattr(value, "handle"):  # tf.Variable
        value = value.read_value()
    array = np.asarray(value)
    if array.shape != tuple(weight.shape):  # not what was expected: take Keras' own copy
        array = np.asarray(weight.numpy())
    return array


def weight_arrays(layer: Any) -> list[np.ndarray]:
    """:func:`weight_array` of each of ``layer.weights``, in order (as ``get_weights``)."""
    return [weight_array(w) for w in layer.weights]


def find_rule(layer: Any, rules: Mapping[str, Any]) -> Any | None:
    """The rule for the layer's own class. Never a base class's: tf_keras' Conv2DTranspose is a
    Conv2D whose kernel is laid out differently, and a silent fallback would mistranslate it."""
    return rules.get(type(layer).__name__)


def convert_keras_layers(
    model: Any, rules: Mapping[str, Any], progress: Callable[[str], None] | None = None
) -> list[KerasLayerInfo]:
    """Run every weight-carrying layer through its rule. Fails if a layer has no rule or a rule
    leaves any of the layer's weights unused."""
    infos, problems = [], []
    seen: set[str] = set()
    for layer in iter_keras_layers(model):
        if not layer.weights:
            continue
        if layer.name in seen:
            problems.append(f"two Keras layers are named '{layer.name}'")
            continue
        seen.add(layer.name)
        rule = find_rule(layer, rules)
        if rule is None:
            problems.append(
                f"no layer rule for Keras class {type(layer).__name__} (layer '{layer.name}')"
            )
            continue
        names = [short_name(w, layer.name) for w in layer.weights]
        if len(set(names)) != len(names):
            problems.append(f"layer '{layer.name}' has repeated weight names {names}")
            continue
        bag = WeightBag(layer.name, dict(zip(names, weight_arrays(layer))))
        try:
            variables = rule.convert(layer, bag)
        except WeightsError as error:
            problems.append(str(error))
            continue
        unused = bag.leftover()
        if unused:
            problems.append(
                f"the {rule.keras_class} rule left weights of '{layer.name}' unused: "
                + ", ".join(unused)
            )
            continue
        leaves = [
            (path[0], path[1:], np.ndim(value)) for path, value in traverse_util.flatten_dict(variables).items()
        ]
        infos.append(KerasLayerInfo(layer.name, type(layer).__name__, variables, signature(leaves)))
        if progress:
            progress(layer.name)
    if problems:
        raise WeightsError(summary("cannot read the Keras model", problems))
    return infos

