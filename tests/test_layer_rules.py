"""Each built-in layer rule against the Keras layer it translates, on random weights and inputs.

Every case goes through the real translator (rule -> name matching -> strict assembly) into the
Flax twin that kjax_core.nn provides, then compares outputs.
"""

import numpy as np
import pytest
from flax import linen as nn

import keras
import tf_keras
from kjax_core import LayerRule
from kjax_core import nn as knn
from kjax_core.parity import randomize, relative_error
from kjax_core.plugins import registry
from kjax_core.translator import (
    assemble,
    convert_keras_layers,
    default_match,
    flax_modules,
    trace_flax,
)

SHAPE = (9, 7, 6)  # odd, non-square, more than one channel


class One(nn.Module):
    """A Flax module holding one twin layer, named like the Keras layer."""

    make: object
    train: bool = False

    @nn.compact
    def __call__(self, x):
        return self.make(x)


def translate_one(keras_model, module, shape=SHAPE):
    layers = convert_keras_layers(keras_model, registry().rules)
    target, order = trace_flax(module, shape)
    return assemble("test", layers, target, default_match(layers, flax_modules(target, order)))


def check(keras_layer, flax_fn, shape=SHAPE, package=keras, extra=None):
    inputs = package.Input(shape)
    keras_model = package.Model(inputs, keras_layer(inputs))
    randomize(keras_model, seed=3)
    if extra:
        extra(keras_model)
    module = One(flax_fn)
    variables = translate_one(keras_model, module, shape)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    expected = np.asarray(keras_model(x))
    actual = np.asarray(module.apply(variables, x))
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-5
    # The comparison can fail: outputs are not trivially equal for any weights.
    assert relative_error(actual, np.zeros_like(actual)) > 0.5
    return variables


L = keras.layers


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("strides,padding", [(1, "valid"), (2, "same"), (2, "valid")])
def test_conv2d(use_bias, strides, padding):
    check(
        L.Conv2D(5, 3, strides=strides, padding=padding, use_bias=use_bias, name="c"),
        lambda x: knn.conv(x, 5, 3, strides=strides, padding=padding, use_bias=use_bias, name="c"),
    )


def test_grouped_conv2d():
    check(
        L.Conv2D(4, 3, groups=2, name="c"),
        lambda x: knn.conv(x, 4, 3, groups=2, name="c"),
    )


def test_dense():
    check(L.Dense(4, name="d"), lambda x: nn.Dense(4, name="d")(x))


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("epsilon", [1e-3, 1.001e-5])
def test_batch_norm(center, scale, epsilon):
    variables = check(
        L.BatchNormalization(center=center, scale=scale, epsilon=epsilon, name="bn"),
        lambda x: knn.batch_norm(x, name="bn", train=False, epsilon=epsilon, center=center, scale=scale),
    )
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid")])
def test_depthwise_conv2d(multiplier, strides, padding):
    check(
        L.DepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=multiplier, name="dw"),
        lambda x: knn.depthwise_conv(
            x, 3, strides=strides, padding=padding, depth_multiplier=multiplier, name="dw"
        ),
    )


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("use_bias", [True, False])
def test_separable_conv2d(multiplier, use_bias):
    check(
        L.SeparableConv2D(5, 3, padding="same", depth_multiplier=multiplier, use_bias=use_bias, name="s"),
        lambda x: knn.SeparableConv2D(
            5, 3, padding="SAME", depth_multiplier=multiplier, use_bias=use_bias, name="s"
        )(x),
    )


def test_layer_normalization():
    check(
        L.LayerNormalization(epsilon=1e-3, name="ln"),
        lambda x: nn.LayerNorm(epsilon=1e-3, name="ln")(x),
    )


@pytest.mark.parametrize("invert", [False, True])
def test_normalization(invert):
    check(
        L.Normalization(axis=-1, invert=invert, name="norm"),
        lambda x: knn.Normalization(invert=invert, name="norm")(x),
    )


def test_tf_keras_names():
    """tf_keras layers name their weights differently (`depthwise_kernel:0`); the rules read both."""
    T = tf_keras.layers
    check(
        T.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        lambda x: knn.depthwise_conv(x, 3, depth_multiplier=2, name="dw"),
        package=tf_keras,
    )
    check(
        T.BatchNormalization(epsilon=1e-5, name="bn"),
        lambda x: knn.batch_norm(x, name="bn", train=False, epsilon=1e-5),
        package=tf_keras,
    )


@pytest.mark.parametrize(
    "rule_name,sabotage",
    [
        # The flattening order of a depthwise kernel with a multiplier: (m c) instead of (c m).
        ("DepthwiseConv2D", lambda v: {"params": {**v["params"], "kernel": np.reshape(
            np.swapaxes(np.reshape(v["params"]["kernel"], (3, 3, 1, 6, 2)), -1, -2), (3, 3, 1, 12))}}),
        # Mean and variance swapped.
        ("BatchNormalization", lambda v: {**v, "batch_stats": {
            "mean": v["batch_stats"]["var"], "var": v["batch_stats"]["mean"]}}),
    ],
)
def test_a_wrong_rule_fails_the_comparison(rule_name, sabotage, monkeypatch):
    """The checks above can fail: the same comparison rejects a subtly wrong rule."""
    rules = registry().rules
    original = rules[rule_name]
    monkeypatch.setitem(rules, rule_name, LayerRule(
        rule_name, lambda layer, weights: sabotage(original.convert(layer, weights))))
    with pytest.raises(AssertionError):
        if rule_name == "DepthwiseConv2D":
            check(L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
                  lambda x: knn.depthwise_conv(x, 3, depth_multiplier=2, name="dw"))
        else:
            check(L.BatchNormalization(name="bn"),
                  lambda x: knn.batch_norm(x, name="bn", train=False))
