"""ConvNeXt (tiny, small, base, large, xlarge) beyond the contract every model keeps
(tests/test_zoo.py): the default size, pooling (the head's LayerNormalization after it, as Keras),
the in-graph Normalization switched off, train mode with stochastic depth, and the imagenet path
offline.

ConvNeXt has no BatchNorm: train mode differs from inference only by stochastic depth, which
Keras' variants fix at 0 (Keras' ``ConvNeXt`` builder takes ``drop_path_rate``; the Flax module
has it as a field). Stochastic depth is random on both sides, so it is checked where it can be
exact: Keras' StochasticDepth layer against knn.drop_connect over many draws (each sample's result
is one of two exact values, at the frequencies the rate gives), and every block's rate, by name,
against a Keras model built with drop_path_rate > 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import kjax_core
from kjax_core import nn as knn
from kjax_core.parity import (
    assert_parity, reference_model, relative_error, sample_images,
)
from kjax_core.conversion.keras_layers import iter_keras_layers
from kjax_core.parity.reference import float64_module, float64_variables, keras_float64

from family_suite import FamilySuite
from helpers import show

VARIANTS = ("convnexttiny", "convnextsmall", "convnextbase", "convnextlarge", "convnextxlarge")


class TestConvNeXt(FamilySuite):
    representative = "convnexttiny"
    variants = VARIANTS
    # The channels differ by variant (768 .. 2048), so the shapes are not asserted.
    feature_shapes = None
    pooling_size = (75, 61)
    channels = 768
    imagenet_files = {True: "convnext_tiny.h5", False: "convnext_tiny_notop.h5"}
    keras_preprocessing = "keras.applications.convnext"

    def test_train_mode_matches_keras_training(self):
        """Without stochastic depth (Keras' variants), train=True computes what Keras'
        training=True does (LayerNorm has no batch statistics), in float64."""
        translation, keras_model = reference_model(
            "convnexttiny", input_shape=(None, None, 3), calibration_shape=(64, 48),
            include_top=False)
        x = sample_images((2, 64, 48, 3), 21).astype(np.float64)
        expected = np.asarray(keras_float64(translation, keras_model)(x, training=True))
        module = float64_module(translation.module)
        with jax.enable_x64(True):
            out = jax.jit(lambda v, x: module.apply(v, x, train=True))(
                float64_variables(translation.variables), x)
        assert relative_error(out, expected) < 1e-12

    def test_drop_path_rates_are_keras(self):
        """Keras' linear stochastic-depth schedule, layer by layer: a Keras ConvNeXt built with
        drop_path_rate=0.4 against the Flax module with the same field (traced, not run)."""
        from keras.src.applications.convnext import ConvNeXt

        keras_model = ConvNeXt(depths=[3, 3, 9, 3], projection_dims=[96, 192, 384, 768],
                               drop_path_rate=0.4, name="convnext_tiny", weights=None,
                               include_top=False, input_shape=(None, None, 3))
        expected = {layer.name: layer.drop_path_rate for layer in keras_model.layers
                    if type(layer).__name__ == "StochasticDepth"}
        assert len(expected) == 17  # the first block's rate is 0: an identity in Keras too

        module = kjax_core.create_model("convnexttiny", include_top=False).clone(
            drop_path_rate=0.4)
        rates = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
                rates["_".join(context.module.path)] = context.module.rate
            return next_fun(*args, **kwargs)

        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
        with nn.intercept_methods(record):
            jax.eval_shape(lambda v, x: module.apply(v, x, train=True,
                                                     rngs={"dropout": jax.random.PRNGKey(0)}),
                           variables, x)
        assert rates == pytest.approx(expected, rel=1e-15)

    def test_float64_twin_depthwise_is_keras(self):
        """The float64 twin computes Keras' Conv2D(groups=C) with TensorFlow's depthwise
        convolution (Keras' own route, an XLA grouped convolution, took 831 s at 224x224 in
        float64): the same as Keras' route, to float64 rounding."""
        translation, keras_model = reference_model("convnexttiny", input_shape=(35, 45, 3),
                                                   include_top=False)
        twin = keras_float64(translation, keras_model)
        swapped = [layer for layer in iter_keras_layers(twin) if "convolution_op" in vars(layer)]
        assert len(swapped) == 18  # every block's 7x7, nothing else
        x = sample_images((2, 35, 45, 3), 5).astype(np.float64)
        fast = np.asarray(twin(x, training=False))
        for layer in swapped:  # back to Keras' route (this twin is not used again)
            del layer.convolution_op
        assert relative_error(fast, twin(x, training=False)) < 1e-14

    def test_without_preprocessing(self):
        (report,) = show(assert_parity("convnexttiny", include_top=False,
                                       include_preprocessing=False, sizes=[(49, 39)],
                                       float32=False))
        assert report.output_shape == (2, 1, 1, 768)


@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_stochastic_depth_is_keras(rate):
    """Keras' StochasticDepth (floor(keep + U) per sample, x / keep) and knn.drop_connect over
    4000 samples: each sample is dropped (0) or kept as x / (1 - rate), exactly, and the dropped
    fractions agree with the rate within 5 binomial standard deviations on both sides."""
    from keras.src.applications.convnext import StochasticDepth

    n = 4000
    x = np.random.default_rng(0).uniform(1, 2, size=(n, 3, 2, 4)).astype(np.float32)
    keras_out = np.asarray(StochasticDepth(rate)(x, training=True))
    flax_out = np.asarray(_Drop(rate).apply({}, x, rngs={"dropout": jax.random.PRNGKey(3)}))
    sigma = np.sqrt(rate * (1 - rate) / n)
    for out in (keras_out, flax_out):
        dropped = np.all(out == 0, axis=(1, 2, 3))
        kept = np.all(out == x / np.float32(1 - rate), axis=(1, 2, 3))
        assert np.all(dropped ^ kept)
        assert abs(dropped.mean() - rate) < 5 * sigma
    np.testing.assert_array_equal(StochasticDepth(rate)(x, training=False), x)


class _Drop(nn.Module):
    """knn.drop_connect in training, as ConvNeXtBlock calls it."""

    rate: float

    @nn.compact
    def __call__(self, x):
        return knn.drop_connect(x, self.rate, train=True, name="drop")
