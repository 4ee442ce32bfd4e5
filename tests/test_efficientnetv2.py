"""EfficientNetV2 (b0-b3, s, m, l) beyond the contract every model keeps (tests/test_zoo.py): the
default size, pooling, the in-graph preprocessing of both kinds (B0-B3 normalise, S/M/L rescale to
[-1, 1]; the contract checks both with it, here without it), train mode with BatchNorm momentum 0.9
and stochastic depth, and the imagenet path offline.

Every strided convolution is 'same' (no correct_pad), so one Keras model built for any size is
what the Flax twin computes at every size.

Stochastic depth is random on both sides, so it is checked where it is exact: the rate of every
drop layer, by name, against Keras' (Keras divides by the repeats before depth scaling, which
only B1-B3 show), with the BatchNorm step compared at rate 0 (as assert_train_step requires);
the per-sample draw itself is knn.drop_connect, equal to Keras' Dropout(noise_shape=(None, 1, 1,
1)) in tests/test_blocks.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kjax_core.parity import (
    assert_parity, assert_train_step, reference_model, relative_error, sample_images,
)

from family_suite import FamilySuite
from helpers import show

VARIANTS = ("efficientnetv2b0", "efficientnetv2b1", "efficientnetv2b2", "efficientnetv2b3",
            "efficientnetv2s", "efficientnetv2m", "efficientnetv2l")


def flax_dropout_rates(module, variables, x):
    """{Keras-style name: rate} of every Flax Dropout a train-mode apply of ``module`` creates
    (traced only, not compiled): its path joined with ``_`` (``block2b_drop``)."""
    rates = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
            rates["_".join(context.module.path)] = context.module.rate
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"],
                                                 rngs={"dropout": jax.random.PRNGKey(0)}),
                       variables, x)
    return rates


class TestEfficientNetV2(FamilySuite):
    representative = "efficientnetv2b0"
    variants = VARIANTS
    # The top's channels differ by variant (b2 1408, b3 1536), so the shapes are not asserted.
    feature_shapes = None
    pooling_size = (75, 61)
    channels = 1280
    imagenet_files = {True: "efficientnetv2-b0.h5", False: "efficientnetv2-b0_notop.h5"}
    keras_preprocessing = "keras.applications.efficientnet_v2"

    def test_train_mode_matches_keras_training(self):
        """train=True: batch statistics, moving ones stepped with Keras' momentum 0.9 (compared
        with stochastic depth and top dropout at 0); with the real rates, the drops draw from the
        "dropout" rng."""
        translation, keras_model = reference_model(
            "efficientnetv2b0", input_shape=(64, 48, 3), classifier_activation=None, classes=10)
        x = sample_images((4, 64, 48, 3), 21)
        quiet = translation.module.clone(dropout_rate=0.0, drop_connect_rate=0.0)
        updated = assert_train_step(translation, keras_model, x, "block4b_bn", ("block4b", "bn"),
                                    module=quiet)
        before = translation.variables["batch_stats"]["block4b"]["bn"]["mean"]
        assert relative_error(updated["batch_stats"]["block4b"]["bn"]["mean"], before) > 1e-3

        module = translation.module
        apply = jax.jit(lambda v, x, key: module.apply(v, x, train=True, mutable=["batch_stats"],
                                                       rngs={"dropout": key})[0])
        first = apply(translation.variables, x, jax.random.PRNGKey(0))
        np.testing.assert_array_equal(first, apply(translation.variables, x,
                                                   jax.random.PRNGKey(0)))
        assert relative_error(first, apply(translation.variables, x, jax.random.PRNGKey(1))) > 1e-3

    def test_drop_rates_are_keras(self, name="efficientnetv2b3"):
        """Every stochastic-depth and top dropout rate, by layer name, is Keras' (b3: depth
        coefficient 1.4, where Keras' denominator, the unscaled repeats, shows)."""
        translation, keras_model = reference_model(name, input_shape=(64, 64, 3), prepare=False)
        expected = {layer.name: layer.rate for layer in keras_model.layers
                    if type(layer).__name__ == "Dropout"}
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        got = flax_dropout_rates(translation.module, translation.variables, x)
        assert got == pytest.approx(expected, rel=1e-15)
        assert "top_dropout" in expected
        if name == "efficientnetv2b3":  # 0.2 * 31 / 21: beyond drop_connect_rate
            assert expected["block6l_drop"] == pytest.approx(0.2 * 31 / 21)

    def test_without_preprocessing(self):
        """include_preprocessing=False: no Rescaling and Normalization in either graph (one
        switch for both kinds; S/M/L's Rescaling to [-1, 1] is in the contract's graphs)."""
        (report,) = show(assert_parity("efficientnetv2b0", include_top=False,
                                       include_preprocessing=False, sizes=[(49, 39)],
                                       float32=False))
        assert report.output_shape == (2, 2, 2, 1280)
