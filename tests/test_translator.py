"""The strict translator: nothing lost, nothing filled twice, everything that does not fit named."""

import keras
import numpy as np
import pytest
from flax import linen as nn
from keras import layers

from kjax_core import LayerRule, WeightsError
from kjax_core import nn as knn
from kjax_core.parity import randomize, relative_error
from kjax_core.plugin_system.registry import registry
from kjax_core.conversion.assembly import assemble
from kjax_core.conversion.flax_side import flax_modules, trace_flax
from kjax_core.conversion.keras_layers import convert_keras_layers
from kjax_core.conversion.matching import default_match

SHAPE = (11, 9, 3)


def keras_net(names=("a", "b", "c")):
    inputs = keras.Input(SHAPE)
    x = layers.Conv2D(5, 3, name=names[0])(inputs)
    x = layers.BatchNormalization(name=names[1])(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name=names[2])(x))


class FlaxNet(nn.Module):
    names: tuple = ("a", "b", "c")
    features: int = 5
    extra: bool = False
    dense: bool = True

    @nn.compact
    def __call__(self, x):
        x = knn.conv(x, self.features, 3, name=self.names[0])
        x = knn.batch_norm(x, name=self.names[1], train=False)
        if self.extra:
            x = knn.conv(x, self.features, 1, name="extra")
        x = x.mean(axis=(1, 2))
        return nn.Dense(4, name=self.names[2])(x) if self.dense else x


def translate(keras_model, module, rules=None):
    converted = convert_keras_layers(keras_model, rules or registry().rules)
    target, order = trace_flax(module, SHAPE)
    return assemble("net", converted, target, default_match(converted, flax_modules(target, order)))


def test_a_fitting_translation_computes_the_same():
    model = keras_net()
    randomize(model, 1)
    module = FlaxNet()
    variables = translate(model, module)
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    assert relative_error(module.apply(variables, x), model(x)) < 1e-5


def test_unmatched_keras_layer_is_named():
    with pytest.raises(WeightsError, match="Keras layer 'c' matches no Flax module"):
        translate(keras_net(), FlaxNet(dense=False))


def test_unfilled_flax_leaf_is_named():
    with pytest.raises(WeightsError, match="Flax leaf params/extra/kernel not filled"):
        translate(keras_net(), FlaxNet(extra=True))


def test_shape_mismatch_is_named_with_both_shapes():
    with pytest.raises(WeightsError) as error:
        translate(keras_net(), FlaxNet(features=6))
    message = str(error.value)
    assert "shape mismatch params/a/kernel: Keras 'a' gives (3, 3, 3, 5), Flax expects (3, 3, 3, 6)" in message
    # One error lists every problem, with counts.
    assert "shape mismatches" in message and "params/b/scale" in message


def test_a_rule_that_leaves_a_weight_unused_fails():
    rules = dict(registry().rules)
    rules["BatchNormalization"] = LayerRule(
        "BatchNormalization",
        lambda layer, w: {"params": {"scale": w.take("gamma"), "bias": w.take("beta")},
                          "batch_stats": {"mean": w.take("moving_mean"),
                                          "var": np.ones(5, np.float32)}},
    )
    with pytest.raises(WeightsError, match="rule left weights of 'b' unused: moving_variance"):
        translate(keras_net(), FlaxNet(), rules)


def test_a_layer_without_rule_fails():
    class Odd(layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1],))

        def call(self, x):
            return x * self.w

    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, Odd(name="odd")(inputs))
    with pytest.raises(WeightsError, match="no layer rule for Keras class Odd"):
        convert_keras_layers(model, registry().rules)


def test_automatic_names_pair_by_order_within_kind():
    keras_model = keras_net(names=("conv2d_17", "batch_normalization_3", "dense_9"))
    randomize(keras_model, 2)
    module = FlaxNet(names=("stem", "norm", "head"))
    variables = translate(keras_model, module)
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    assert relative_error(module.apply(variables, x), keras_model(x)) < 1e-5


def test_order_matching_refuses_to_guess_when_counts_differ():
    keras_model = keras_net(names=("conv2d_17", "batch_normalization_3", "dense_9"))
    with pytest.raises(WeightsError, match="unfilled Flax leaves"):
        translate(keras_model, FlaxNet(names=("stem", "norm", "head"), extra=True))


def test_flax_leaf_dtype_follows_param_dtype():
    import jax.numpy as jnp

    class Half(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = knn.conv(x, 5, 3, name="a", param_dtype=jnp.bfloat16)
            x = knn.batch_norm(x, name="b", train=False)
            return nn.Dense(4, name="c")(x.mean(axis=(1, 2)))

    variables = translate(keras_net(), Half())
    assert variables["params"]["a"]["kernel"].dtype == jnp.bfloat16


class _Matcher:
    """A plugin answering kjax_match_layers for model 'net' only."""

    calls = []

    @staticmethod
    def kjax_match_layers(model, keras_layers, flax_modules):
        _Matcher.calls.append(model)
        if model != "net":
            return None
        return {"a": ("a",), "b": ("b",), "c": ("a",)}  # sends the Dense into the conv


def test_a_plugin_can_decide_the_matching():
    from kjax_core import hookimpl
    from kjax_core.conversion.translate import translate_keras_model

    plugin = type("Matcher", (), {
        "kjax_match_layers": staticmethod(hookimpl(_Matcher.kjax_match_layers))})()
    manager = registry().manager
    manager.register(plugin, name="test-matcher")
    try:
        with pytest.raises(WeightsError, match="Flax leaf filled twice|from 'c'"):
            translate_keras_model("net", keras_net(), FlaxNet(), SHAPE)
        assert _Matcher.calls == ["net"]
        # For other models it answers None and the default matching runs.
        translate_keras_model("other", keras_net(), FlaxNet(), SHAPE)
    finally:
        manager.unregister(plugin)


def test_a_subclass_does_not_borrow_its_base_class_rule():
    """tf_keras' Conv2DTranspose is a Conv2D with another kernel layout: no silent fallback."""
    import tf_keras

    inputs = tf_keras.Input(SHAPE)
    model = tf_keras.Model(inputs, tf_keras.layers.Conv2DTranspose(3, 3, name="up")(inputs))
    with pytest.raises(WeightsError, match="no layer rule for Keras class Conv2DTranspose"):
        convert_keras_layers(model, registry().rules)


def test_flax_automatic_names_are_not_confused_with_keras_ones():
    """Keras' dense_1, dense_2 and Flax's Dense_0, Dense_1 count differently; pairing is by order."""
    keras.layers.Dense(1)  # advance Keras' counter
    inputs = keras.Input((6,))
    x = layers.Dense(5)(inputs)
    keras_model = keras.Model(inputs, layers.Dense(5)(layers.Dense(5)(x)))
    randomize(keras_model, 4)

    class Auto(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = nn.Dense(5)(x)
            return x

    converted = convert_keras_layers(keras_model, registry().rules)
    target, order = trace_flax(Auto(), (6,))
    variables = assemble("auto", converted, target, default_match(converted, flax_modules(target, order)))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    assert relative_error(Auto().apply(variables, x), keras_model(x)) < 1e-5
