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
from kjax_core.conversion.matching import MATCHERS, creation_index, default_match, in_creation_order
from kjax_core.plugin_system.types import CORE_MATCHERS, ModelSpec

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
    """A plugin answering kjax_match_layers for its model 'net', None for 'quiet', and
    recording every call (it never checks whether a model is its own)."""

    calls = []

    @staticmethod
    def kjax_match_layers(model, keras_layers, flax_modules):
        _Matcher.calls.append(model)
        if model == "quiet":
            return None
        return {"a": ("a",), "b": ("b",), "c": ("a",)}  # sends the Dense into the conv


def test_a_plugin_can_decide_the_matching_of_its_own_models():
    from kjax_core import hookimpl
    from kjax_core.conversion.translate import translate_keras_model

    plugin = type("Matcher", (), {
        "kjax_match_layers": staticmethod(hookimpl(_Matcher.kjax_match_layers))})()
    manager = registry().manager
    manager.register(plugin, name="test-matcher")
    _Matcher.calls.clear()
    try:
        own = ModelSpec("net", "test", "x:y", "x:y", plugin="test-matcher")
        with pytest.raises(WeightsError, match="Flax leaf filled twice|from 'c'"):
            translate_keras_model(own, keras_net(), FlaxNet(), SHAPE)
        assert _Matcher.calls == ["net"]
        # None leaves it to the spec's matcher.
        quiet = ModelSpec("quiet", "test", "x:y", "x:y", plugin="test-matcher")
        translate_keras_model(quiet, keras_net(), FlaxNet(), SHAPE)
        # Another plugin's model: the hook is not even asked.
        other = ModelSpec("other", "test", "x:y", "x:y", plugin="kjax_core")
        translate_keras_model(other, keras_net(), FlaxNet(), SHAPE)
        assert _Matcher.calls == ["net", "quiet"]
    finally:
        manager.unregister(plugin)


def test_the_core_matchers_are_the_names_a_spec_may_give():
    assert tuple(MATCHERS) == CORE_MATCHERS


# ----------------------------------------------------------------- matching by creation order


def branchy_keras(engine):
    """Two parallel branches closed by a concatenation, every weight layer but the classifier
    named automatically. Keras lists a functional model's layers by graph depth: the deep branch
    (b1, bn, b2, b3) before the one-layer branch a, though a was created first."""
    layers = engine.layers
    inputs = engine.Input(SHAPE)
    a = layers.Conv2D(4, 1)(inputs)
    b = layers.Conv2D(4, 1)(inputs)  # same shape as a: a wrong order would pass the assembly
    b = layers.BatchNormalization()(b)
    b = layers.Conv2D(4, 3, padding="same")(b)
    b = layers.Conv2D(4, 3, padding="same")(b)
    x = layers.GlobalAveragePooling2D()(layers.Concatenate()([a, b]))
    return engine.Model(inputs, layers.Dense(3, name="predictions")(x))


class Branchy(nn.Module):
    """The Flax twin of branchy_keras, calling its submodules in the Keras source's order."""

    @nn.compact
    def __call__(self, x):
        import jax.numpy as jnp

        a = knn.conv(x, 4, 1, name="a")
        b = knn.conv(x, 4, 1, name="b1")
        b = knn.batch_norm(b, name="bn", train=False)
        b = knn.conv(b, 4, 3, padding="SAME", name="b2")
        b = knn.conv(b, 4, 3, padding="SAME", name="b3")
        x = jnp.concatenate([a, b], axis=-1).mean(axis=(1, 2))
        return nn.Dense(3, name="predictions")(x)


def _engine(name):
    if name == "keras":
        return keras
    import tf_keras

    return tf_keras


@pytest.mark.parametrize("engine_name", ["keras", "tf_keras"])
@pytest.mark.parametrize("offset", [0, 7, 97])
def test_creation_order_pairs_branches_whatever_the_counters(engine_name, offset):
    """Built first in a fresh session (``conv2d``, ``conv2d_1``, ...) or after other layers, with
    the counters crossing 9 -> 10 or 99 -> 100 (where a text sort fails) and offset differently per
    layer class: the creation-order matcher pairs every layer with its twin, the default one
    cannot."""
    from kjax_core.conversion.translate import translate_keras_model

    engine = _engine(engine_name)
    engine.backend.clear_session()
    for _ in range(offset):  # what other models built before in this process would leave
        engine.layers.Conv2D(1, 1)
    for _ in range(offset // 2):
        engine.layers.BatchNormalization()
    keras_model = branchy_keras(engine)
    randomize(keras_model, 3)
    convs = [layer.name for layer in keras_model.layers if type(layer).__name__ == "Conv2D"]
    assert convs != sorted(convs, key=lambda name: creation_index(name, "Conv2D")[1])
    module = Branchy()
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    expected = np.asarray(keras_model(x))

    spec = ModelSpec("branchy", "test", "x:y", "x:y", matcher="creation_order")
    variables = translate_keras_model(spec, keras_model, module, SHAPE)
    assert relative_error(module.apply(variables, x), expected) < 1e-5
    # The same matcher named by "module:attr", as a plugin's own matcher would be.
    by_ref = ModelSpec("branchy", "test", "x:y", "x:y",
                       matcher="kjax_core.conversion.matching:creation_order_match")
    assert _equal_trees(translate_keras_model(by_ref, keras_model, module, SHAPE), variables)
    # Model order pairs the deep branch's first conv with a: the shapes fail or the values do.
    default = ModelSpec("branchy", "test", "x:y", "x:y")
    try:
        wrong = translate_keras_model(default, keras_model, module, SHAPE)
    except WeightsError:
        return
    assert relative_error(module.apply(wrong, x), expected) > 1e-2


def _equal_trees(a, b):
    from flax import traverse_util

    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    return flat_a.keys() == flat_b.keys() and all(
        np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


def test_creation_order_moves_only_automatic_names():
    """Each prefix's layers are put in counter order (numeric) in the places that prefix held;
    chosen names, even ending in digits, stay where they were."""
    from kjax_core.plugin_system.types import KerasLayerInfo

    layers_ = [KerasLayerInfo(name, cls, {}) for name, cls in [
        ("conv2d_10", "Conv2D"), ("stem_1", "Conv2D"),
        ("batch_normalization_100", "BatchNormalization"),
        ("conv2d_9", "Conv2D"), ("depthwise_conv2d_3", "DepthwiseConv2D"),
        ("batch_normalization_99", "BatchNormalization"), ("conv2d", "Conv2D"),
        ("conv2d_bn_2", "Conv2D"), ("depthwise_conv2d_1", "DepthwiseConv2D")]]
    assert [layer.name for layer in in_creation_order(layers_)] == [
        "conv2d", "stem_1", "batch_normalization_99", "conv2d_9", "depthwise_conv2d_1",
        "batch_normalization_100", "conv2d_10", "conv2d_bn_2", "depthwise_conv2d_3"]


@pytest.mark.parametrize("engine_name", ["keras", "tf_keras"])
def test_auto_name_prefixes_are_keras_own(engine_name):
    """The prefix kjax expects is the name each Keras gives an unnamed layer of the class."""
    engine = _engine(engine_name)
    engine.backend.clear_session()
    for cls in (engine.layers.Conv2D, engine.layers.DepthwiseConv2D,
                engine.layers.SeparableConv2D, engine.layers.Conv2DTranspose):
        first, second = cls(2, 3), cls(2, 3)
        assert creation_index(first.name, cls.__name__)[1] == 0, first.name
        assert creation_index(second.name, cls.__name__)[1] == 1, second.name
    for cls in (engine.layers.BatchNormalization, engine.layers.LayerNormalization,
                engine.layers.PReLU, engine.layers.Normalization):
        first, second = cls(), cls()
        assert creation_index(first.name, cls.__name__)[1] == 0, first.name
        assert creation_index(second.name, cls.__name__)[1] == 1, second.name
    assert creation_index("conv2d_3", "Dense") is None


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
