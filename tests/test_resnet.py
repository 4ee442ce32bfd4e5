"""ResNet v1: what the family does beyond the contract every model keeps (tests/test_zoo.py):
the default size, pooling, train mode, bfloat16 and Keras' preprocessing. The imagenet path is in
tests/test_imagenet_offline.py."""

import numpy as np
import pytest

from kjax_core.parity import assert_parity, assert_train_step, reference_model

from helpers import show

VARIANTS = ["resnet50", "resnet101", "resnet152"]


def test_logits_default_size():
    (report,) = show(assert_parity("resnet50", classifier_activation=None))
    assert report.input_shape == (224, 224, 3) and report.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS[1:])
def test_logits_default_size_deep_variants(name):
    show(assert_parity(name, classifier_activation=None))


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_feature_maps_one_keras_model_for_any_size(name):
    reports = show(assert_parity(name, include_top=False, sizes=[(67, 45), (33, 97)]))
    assert [r.output_shape for r in reports] == [(2, 3, 2, 2048), (2, 2, 4, 2048)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("resnet50", include_top=False, pooling=pooling,
                                   sizes=[(75, 61)], float32=False))
    assert report.output_shape == (2, 2048)


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
    # 2.9e-1 on the in-order calibrated reference, 9.6e-2 with statistics from one training pass).
    # This checks that dtype reaches the computation and stays sane, not bf16 accuracy.
    error = relative_error(out, translation.module.apply(translation.variables, x))
    assert 1e-3 < error < 0.5


def test_preprocess_input_is_keras_caffe_mode():
    import keras

    import kjax_core
    from kjax_core.parity import sample_images

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.resnet.preprocess_input(images.copy())
    np.testing.assert_allclose(kjax_core.preprocess_input("resnet50", images), expected, rtol=1e-6)
