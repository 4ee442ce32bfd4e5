"""Each built-in layer rule against the Keras layer it translates, on random weights and inputs.

Every case goes through the real translator (rule -> name matching -> strict assembly) into the
Flax twin that kjax_core.nn provides, then compares outputs, twice:

- in float64 (Keras layer and input built with ``dtype="float64"``, Flax with float64 dtypes under
  ``jax.enable_x64``), where a correct rule and twin agree to rounding, within
  :data:`TOLERANCE` ``["float64"]`` = 1e-12;
- in float32, the precision models are used in, within 1e-5.

The comparison is shown able to fail, twice over:

- in every case (:func:`check`), the output of another input, and the output with any one
  translated leaf changed (each element scaled by a random factor around 1), are far outside the
  tolerance: every leaf the rule produces reaches the compared output;
- for every built-in rule (:data:`SABOTAGES`, checked to cover ``kjax_core.conversion.layer_rules.BUILTIN_RULES``),
  a deliberately wrong conversion that keeps every shape (a flipped or transposed kernel, swapped
  statistics, gamma and beta swapped, the depthwise multiplier axes swapped, a LayerScale's factors
  reversed) makes this same parity
  assertion fail, by orders of magnitude, in both precisions.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import keras
import tf_keras
from kjax_core import LayerRule
from kjax_core import nn as knn
from kjax_core.conversion.layer_rules import BUILTIN_RULES
from kjax_core.parity import randomize, relative_error
from kjax_core.plugin_system.registry import registry
from kjax_core.conversion.assembly import assemble
from kjax_core.conversion.flax_side import flax_modules, trace_flax
from kjax_core.conversion.keras_layers import convert_keras_layers
from kjax_core.conversion.matching import default_match

from helpers import output_moves

SHAPE = (9, 7, 6)  # odd, non-square, more than one channel
PRECISIONS = ("float64", "float32")
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
# A wrong leaf or another input must move the output this many tolerances away, at least.
MARGIN = 100.0

L = keras.layers
T = tf_keras.layers


class One(nn.Module):
    """A Flax module holding one twin layer, named like the Keras layer."""

    make: object
    train: bool = False

    @nn.compact
    def __call__(self, x):
        return self.make(x)


def flax_dtypes(precision: str) -> dict[str, Any]:
    """What a twin is built with: float64 compute and parameters, or kjax's float32 defaults."""
    return {"dtype": jnp.float64, "param_dtype": jnp.float64} if precision == "float64" else {}


def translate_one(keras_model, module, shape=SHAPE):
    layers = convert_keras_layers(keras_model, registry().rules)
    target, order = trace_flax(module, shape)
    return assemble("test", layers, target, default_match(layers, flax_modules(target, order)))


class ParityFailure(AssertionError):
    """The layer-level parity assertion failed: ``error`` above ``tolerance`` (NaN counts as
    infinitely far)."""

    def __init__(self, error: float, tolerance: float, precision: str):
        super().__init__(f"layer parity: error {error:.3g} > tolerance {tolerance:g} ({precision})")
        self.error = float("inf") if np.isnan(error) else error
        self.tolerance = tolerance


def check(keras_layer: Callable[[str], Any], flax_fn: Callable[[Any, dict], Any], precision: str,
          shape=SHAPE, package=keras, prepare: Callable[[Any], None] | None = None):
    """Build the Keras layer (``keras_layer(dtype)``) in ``precision`` and randomise its weights,
    translate them into the Flax twin (``flax_fn(x, dtypes)``), assert parity (else
    :class:`ParityFailure`), then that the assertion can fail: the output of another input, and
    the output with any one translated leaf changed (:func:`helpers.perturbed`), are each more than
    :data:`MARGIN` tolerances from the Keras output."""
    tolerance = TOLERANCE[precision]
    with jax.enable_x64(precision == "float64"):
        inputs = package.Input(shape, dtype=precision)
        keras_model = package.Model(inputs, keras_layer(precision)(inputs))
        randomize(keras_model, seed=3)
        if prepare:
            prepare(keras_model)
        module = One(lambda x: flax_fn(x, flax_dtypes(precision)))
        variables = translate_one(keras_model, module, shape)
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2, *shape)).astype(precision)
        expected = np.asarray(keras_model(x))
        assert expected.dtype == precision, expected.dtype  # Keras computed in that precision
        apply = jax.jit(module.apply)
        actual = np.asarray(apply(variables, x))
        assert actual.dtype == precision and actual.shape == expected.shape, (actual.dtype,
                                                                              actual.shape)
        error = relative_error(actual, expected)
        if not error < tolerance:
            raise ParityFailure(error, tolerance, precision)

        # The comparison can fail: another input, or any one leaf changed, is far outside it.
        other = rng.normal(size=x.shape).astype(precision)
        moved = output_moves(apply, variables, x, expected, other, rng)
    blind = {what: e for what, e in moved.items() if not e > MARGIN * tolerance}
    assert len(moved) > 1 and not blind, f"the comparison cannot see: {blind}"
    return variables


precisions = pytest.mark.parametrize("precision", PRECISIONS)


@precisions
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("strides,padding", [(1, "valid"), (2, "same"), (2, "valid")])
def test_conv2d(use_bias, strides, padding, precision):
    check(
        lambda dt: L.Conv2D(5, 3, strides=strides, padding=padding, use_bias=use_bias, name="c",
                            dtype=dt),
        lambda x, kw: knn.conv(x, 5, 3, strides=strides, padding=padding, use_bias=use_bias,
                               name="c", **kw),
        precision,
    )


@precisions
def test_grouped_conv2d(precision):
    check(
        lambda dt: L.Conv2D(4, 3, groups=2, name="c", dtype=dt),
        lambda x, kw: knn.conv(x, 4, 3, groups=2, name="c", **kw),
        precision,
    )


@precisions
def test_dense(precision):
    check(lambda dt: L.Dense(4, name="d", dtype=dt),
          lambda x, kw: nn.Dense(4, name="d", **kw)(x), precision)


@precisions
@pytest.mark.parametrize("center,scale",
                         [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("epsilon", [1e-3, 1.001e-5])
def test_batch_norm(center, scale, epsilon, precision):
    variables = check(
        lambda dt: L.BatchNormalization(center=center, scale=scale, epsilon=epsilon, name="bn",
                                        dtype=dt),
        lambda x, kw: knn.batch_norm(x, name="bn", train=False, epsilon=epsilon, center=center,
                                     scale=scale, **kw),
        precision,
    )
    assert set(variables["batch_stats"]["bn"]) == {"mean", "var"}


@precisions
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid")])
def test_depthwise_conv2d(multiplier, strides, padding, precision):
    check(
        lambda dt: L.DepthwiseConv2D(3, strides=strides, padding=padding,
                                     depth_multiplier=multiplier, name="dw", dtype=dt),
        lambda x, kw: knn.depthwise_conv(x, 3, strides=strides, padding=padding,
                                         depth_multiplier=multiplier, name="dw", **kw),
        precision,
    )


@precisions
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("use_bias", [True, False])
def test_separable_conv2d(multiplier, use_bias, precision):
    check(
        lambda dt: L.SeparableConv2D(5, 3, padding="same", depth_multiplier=multiplier,
                                     use_bias=use_bias, name="s", dtype=dt),
        lambda x, kw: knn.SeparableConv2D(5, 3, padding="SAME", depth_multiplier=multiplier,
                                          use_bias=use_bias, name="s", **kw)(x),
        precision,
    )


@precisions
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_layer_normalization(center, scale, precision):
    check(
        lambda dt: L.LayerNormalization(epsilon=1e-3, center=center, scale=scale, name="ln",
                                        dtype=dt),
        lambda x, kw: knn.LayerNorm(epsilon=1e-3, use_bias=center, use_scale=scale, name="ln",
                                    **kw)(x),
        precision,
    )


def _layer_scale(dt, name="ls"):
    """ConvNeXt's LayerScale (Keras names its weight ``variable``, ``variable_1``, ...)."""
    from keras.src.applications.convnext import LayerScale

    return LayerScale(1e-6, SHAPE[-1], name=name, dtype=dt)


@precisions
def test_layer_scale(precision):
    """Two in one model: their weights have different counter names, each is taken."""
    check(
        lambda dt: lambda x: _layer_scale(dt, "ls2")(_layer_scale(dt, "ls1")(x)),
        lambda x, kw: knn.LayerScale(name="ls2", **kw)(knn.LayerScale(name="ls1", **kw)(x)),
        precision,
    )


@precisions
@pytest.mark.parametrize("invert", [False, True])
def test_normalization(invert, precision):
    check(
        lambda dt: L.Normalization(axis=-1, invert=invert, name="norm", dtype=dt),
        lambda x, kw: knn.Normalization(invert=invert, name="norm", **kw)(x),
        precision,
    )


@precisions
def test_tf_keras_names(precision):
    """tf_keras layers name their weights differently (`depthwise_kernel:0`); the rules read
    both."""
    check(
        lambda dt: T.DepthwiseConv2D(3, depth_multiplier=2, name="dw", dtype=dt),
        lambda x, kw: knn.depthwise_conv(x, 3, depth_multiplier=2, name="dw", **kw),
        precision,
        package=tf_keras,
    )
    check(
        lambda dt: T.BatchNormalization(epsilon=1e-5, name="bn", dtype=dt),
        lambda x, kw: knn.batch_norm(x, name="bn", train=False, epsilon=1e-5, **kw),
        precision,
        package=tf_keras,
    )


def test_the_leaf_check_sees_a_leaf_that_does_not_matter():
    """A bias left at Keras' default (zero) passes parity whatever the rule does with it; the
    check that every leaf reaches the output reports it."""
    def zero_bias(model):
        layer = model.get_layer("c")
        layer.set_weights([layer.get_weights()[0], np.zeros_like(layer.get_weights()[1])])

    with pytest.raises(AssertionError, match="cannot see") as failure:
        check(lambda dt: L.Conv2D(5, 3, name="c", dtype=dt),
              lambda x, kw: knn.conv(x, 5, 3, name="c", **kw), "float64", prepare=zero_bias)
    blind = str(failure.value).splitlines()[0]
    assert "['bias']" in blind and "['kernel']" not in blind, blind


# ------------------------------------------------------------- a wrong rule fails the comparison


def _params(edit):
    """A sabotage editing the ``params`` of a rule's result."""
    return lambda v: {**v, "params": edit(dict(v["params"]))}


def _stats(edit):
    return lambda v: {**v, "batch_stats": edit(dict(v["batch_stats"]))}


def _swap(a, b):
    def edit(tree):
        tree[a], tree[b] = tree[b], tree[a]
        return tree
    return edit


def _kernel(fn, where=()):
    """Apply ``fn`` to ``params[*where]["kernel"]``."""
    def edit(tree):
        node = tree
        for key in where:
            node[key] = dict(node[key])
            node = node[key]
        node["kernel"] = fn(node["kernel"])
        return tree
    return edit


def _multiplier_axes_swapped(kernel):
    """Flattening a depthwise kernel (kh, kw, C, M) as (m c) instead of (c m)."""
    kh, kw, _, cm = kernel.shape
    channels = SHAPE[-1]
    blocks = np.reshape(kernel, (kh, kw, 1, channels, cm // channels))
    return np.reshape(np.swapaxes(blocks, -1, -2), kernel.shape)


def _reversed(name):
    def edit(tree):
        tree[name] = tree[name][::-1].copy()
        return tree
    return edit


# (rule, what is wrong, Keras layer, Flax twin, sabotage of the rule's result). Every shape stays
# right, so strict assembly accepts the result: only the parity comparison can catch it.
SABOTAGES = [
    ("Conv2D", "kernel flipped spatially (convolution instead of correlation)",
     lambda dt: L.Conv2D(5, 3, name="c", dtype=dt),
     lambda x, kw: knn.conv(x, 5, 3, name="c", **kw),
     _params(_kernel(lambda k: k[::-1, ::-1].copy()))),
    ("Conv2D", "kernel's spatial axes transposed (kh <-> kw)",
     lambda dt: L.Conv2D(5, 3, padding="same", name="c", dtype=dt),
     lambda x, kw: knn.conv(x, 5, 3, padding="same", name="c", **kw),
     _params(_kernel(lambda k: np.swapaxes(k, 0, 1).copy()))),
    ("Dense", "kernel transposed (PyTorch's (out, in) layout)",
     lambda dt: L.Dense(SHAPE[-1], name="d", dtype=dt),
     lambda x, kw: nn.Dense(SHAPE[-1], name="d", **kw)(x),
     _params(_kernel(lambda k: k.T.copy()))),
    ("BatchNormalization", "moving mean and variance swapped",
     lambda dt: L.BatchNormalization(name="bn", dtype=dt),
     lambda x, kw: knn.batch_norm(x, name="bn", train=False, **kw),
     _stats(_swap("mean", "var"))),
    ("BatchNormalization", "gamma and beta swapped",
     lambda dt: L.BatchNormalization(name="bn", dtype=dt),
     lambda x, kw: knn.batch_norm(x, name="bn", train=False, **kw),
     _params(_swap("scale", "bias"))),
    ("BatchNormalization", "moving statistics in reversed channel order",
     lambda dt: L.BatchNormalization(name="bn", dtype=dt),
     lambda x, kw: knn.batch_norm(x, name="bn", train=False, **kw),
     _stats(lambda t: _reversed("var")(_reversed("mean")(t)))),
    ("DepthwiseConv2D", "depth multiplier axes swapped ((m c) instead of (c m))",
     lambda dt: L.DepthwiseConv2D(3, depth_multiplier=2, name="dw", dtype=dt),
     lambda x, kw: knn.depthwise_conv(x, 3, depth_multiplier=2, name="dw", **kw),
     _params(_kernel(_multiplier_axes_swapped))),
    ("DepthwiseConv2D", "kernel flipped spatially",
     lambda dt: L.DepthwiseConv2D(3, name="dw", dtype=dt),
     lambda x, kw: knn.depthwise_conv(x, 3, name="dw", **kw),
     _params(_kernel(lambda k: k[::-1, ::-1].copy()))),
    ("SeparableConv2D", "depthwise part's multiplier axes swapped",
     lambda dt: L.SeparableConv2D(5, 3, depth_multiplier=2, name="s", dtype=dt),
     lambda x, kw: knn.SeparableConv2D(5, 3, depth_multiplier=2, name="s", **kw)(x),
     _params(_kernel(_multiplier_axes_swapped, where=("depthwise",)))),
    ("SeparableConv2D", "pointwise kernel's input channels reversed",
     lambda dt: L.SeparableConv2D(5, 3, name="s", dtype=dt),
     lambda x, kw: knn.SeparableConv2D(5, 3, name="s", **kw)(x),
     _params(_kernel(lambda k: k[:, :, ::-1].copy(), where=("pointwise",)))),
    ("LayerNormalization", "gamma and beta swapped",
     lambda dt: L.LayerNormalization(epsilon=1e-3, name="ln", dtype=dt),
     lambda x, kw: knn.LayerNorm(epsilon=1e-3, name="ln", **kw)(x),
     _params(_swap("scale", "bias"))),
    ("LayerScale", "gamma in reversed channel order",
     _layer_scale,
     lambda x, kw: knn.LayerScale(name="ls", **kw)(x),
     _params(_reversed("gamma"))),
    ("Normalization", "mean and variance swapped",
     lambda dt: L.Normalization(axis=-1, name="norm", dtype=dt),
     lambda x, kw: knn.Normalization(name="norm", **kw)(x),
     _stats(_swap("mean", "var"))),
    ("Normalization", "statistics in reversed channel order",
     lambda dt: L.Normalization(axis=-1, name="norm", dtype=dt),
     lambda x, kw: knn.Normalization(name="norm", **kw)(x),
     _stats(lambda t: _reversed("var")(_reversed("mean")(t)))),
]


def test_every_builtin_rule_has_a_sabotage():
    assert {rule.keras_class for rule in BUILTIN_RULES} <= {s[0] for s in SABOTAGES}


@precisions
@pytest.mark.parametrize("rule_name,what,keras_layer,flax_fn,sabotage", SABOTAGES,
                         ids=[f"{s[0]}: {s[1]}" for s in SABOTAGES])
def test_a_wrong_rule_fails_the_comparison(rule_name, what, keras_layer, flax_fn, sabotage,
                                           precision, monkeypatch):
    """The checks above can fail: the same parity assertion rejects a subtly wrong rule."""
    rules = registry().rules
    original = rules[rule_name]
    monkeypatch.setitem(rules, rule_name, LayerRule(
        rule_name, lambda layer, weights: sabotage(original.convert(layer, weights))))
    with pytest.raises(ParityFailure) as failure:
        check(keras_layer, flax_fn, precision)
    # ... and not narrowly: the wrong rule is orders of magnitude outside the tolerance.
    assert failure.value.error > MARGIN * failure.value.tolerance, (what, str(failure.value))
