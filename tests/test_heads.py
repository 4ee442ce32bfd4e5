"""The head every family shares (kjax_core.nn.classifier_head, behind Application.top), against the
Keras layers the applications end with, once for all families, in float64: with top, global average
pooling, Dense and the classifier activation (softmax or logits); without, pooling None, "avg" or
"max". The zoo contract (tests/test_zoo.py) checks each model's logits and feature maps."""

import jax
import numpy as np
import pytest

import keras
from flax import linen as nn
from kjax_core import nn as knn
from kjax_core.parity import relative_error

L = keras.layers


def _keras_head(include_top, pooling, activation, features, classes):
    inputs = keras.Input((5, 3, features), dtype="float64")
    if include_top:
        x = L.GlobalAveragePooling2D(dtype="float64")(inputs)
        x = L.Dense(classes, activation=activation, name="predictions", dtype="float64")(x)
    elif pooling == "avg":
        x = L.GlobalAveragePooling2D(dtype="float64")(inputs)
    elif pooling == "max":
        x = L.GlobalMaxPooling2D(dtype="float64")(inputs)
    else:
        x = inputs
    return keras.Model(inputs, x)


@pytest.mark.parametrize("include_top,pooling,activation", [
    (True, None, "softmax"), (True, None, None), (True, "max", None),  # pooling is ignored with top
    (False, None, None), (False, "avg", None), (False, "max", None),
])
def test_head_is_keras_head(include_top, pooling, activation):
    features, classes = 6, 4
    rng = np.random.default_rng(0)
    model = _keras_head(include_top, pooling, activation, features, classes)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape) for w in layer.weights])
    x = rng.normal(size=(2, 5, 3, features))
    expected = np.asarray(model(x))

    class Head(nn.Module):
        pooling: str | None
        activation: str | None

        @nn.compact
        def __call__(self, x):
            return knn.classifier_head(
                x, include_top=include_top, pooling=self.pooling, classes=classes,
                classifier_activation=self.activation, dtype=jax.numpy.float64,
                param_dtype=jax.numpy.float64)

    variables = {}
    if include_top:
        kernel, bias = model.get_layer("predictions").get_weights()
        variables = {"params": {"predictions": {"kernel": kernel, "bias": bias}}}
    swapped = {None: "softmax", "softmax": None} if include_top else {"avg": "max", "max": "avg"}
    with jax.enable_x64(True):
        actual = np.asarray(Head(pooling, activation).apply(variables, x))
        if include_top:  # the comparison can fail: another head gives another answer
            other = Head(pooling, swapped[activation]).apply(variables, x)
        elif pooling:
            other = Head(swapped[pooling], activation).apply(variables, x)
    assert actual.shape == expected.shape and actual.dtype == np.float64
    assert relative_error(actual, expected) < 1e-14
    if include_top or pooling:
        assert relative_error(other, expected) > 1e-2
