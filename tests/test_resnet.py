"""ResNet v1 parity against keras.applications on randomised, calibrated weights."""

import numpy as np
import pytest

from kjax_core import get_spec
from kjax_core.parity import assert_parity, assert_train_step, reference_model

SMALL_SIZES = [(67, 45), (33, 97)]  # odd, non-square; 33 is just above Keras' minimum of 32
VARIANTS = ["resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_default_size(name):
    (report,) = assert_parity(name, classifier_activation=None)
    assert report.output_shape == (2, 1000)


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_small_odd_size(name):
    (report,) = assert_parity(name, input_shape=(97, 83, 3), classifier_activation=None, classes=17)
    assert report.output_shape == (2, 17)


@pytest.mark.parametrize("name", VARIANTS)
def test_feature_maps_small_sizes(name):
    reports = assert_parity(name, include_top=False, sizes=SMALL_SIZES)
    assert [r.output_shape for r in reports] == [(2, 3, 2, 2048), (2, 2, 4, 2048)]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(name, pooling):
    (report,) = assert_parity(name, include_top=False, pooling=pooling, sizes=[(75, 61)])
    assert report.output_shape == (2, 2048)


def test_softmax_output():
    """Logits are what the parity tests compare; this checks the softmax head itself once."""
    (report,) = assert_parity("resnet50", input_shape=(65, 71, 3))
    assert report.output_shape == (2, 1000)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_and_every_leaf(name):
    """The spec's parameter count is Keras' count_params(), and the Flax tree holds exactly as many
    numbers as the Keras model (every weight used once, every leaf filled once)."""
    translation, keras_model = reference_model(name, input_shape=(64, 64, 3), prepare=False)
    assert keras_model.count_params() == get_spec(name).parameters
    flax_count = sum(np.size(v) for tree in translation.variables.values()
                     for v in _leaves(tree))
    assert flax_count == keras_model.count_params()


def _leaves(tree):
    from kjax_core.translator import flatten

    return [v for _, v in flatten(tree)]


def test_train_mode_matches_keras_training():
    """train=True uses batch statistics and updates the moving ones as Keras' training=True does."""
    from kjax_core.parity import sample_images
    from kjax_core.preprocessing import apply_mode

    translation, keras_model = reference_model("resnet50", include_top=False, input_shape=(None, None, 3),
                                               calibration_shape=(64, 48))
    x = apply_mode("caffe", sample_images((4, 64, 48, 3), 21))
    assert_train_step(translation, keras_model, x, "conv3_block2_2_bn", ("conv3_block2", "2_bn"))


def test_bfloat16_compute_stays_close():
    import jax.numpy as jnp

    from kjax_core import create_model
    from kjax_core.parity import relative_error, sample_images
    from kjax_core.preprocessing import apply_mode

    translation, _ = reference_model("resnet50", include_top=False, pooling="avg",
                                     input_shape=(64, 64, 3))
    x = apply_mode("caffe", sample_images((2, 64, 64, 3), 4))
    low = create_model("resnet50", include_top=False, pooling="avg", dtype=jnp.bfloat16)
    out = low.apply(translation.variables, x)
    assert out.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits of mantissa; a randomised 50-layer net amplifies that to ~1e-1 (measured
    # 9.6e-2). This checks that dtype reaches the computation and stays sane, not bf16 accuracy.
    error = relative_error(out, translation.module.apply(translation.variables, x))
    assert 1e-3 < error < 0.25


def test_preprocess_input_is_keras_caffe_mode():
    import keras

    import kjax_core
    from kjax_core.parity import sample_images

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.resnet.preprocess_input(images.copy())
    np.testing.assert_allclose(kjax_core.preprocess_input("resnet50", images), expected, rtol=1e-6)
