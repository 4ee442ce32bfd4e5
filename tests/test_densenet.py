"""DenseNet: what the family does beyond the contract every model keeps (tests/test_zoo.py): the
default size, pooling, parameter paths, the imagenet path offline and Keras' preprocessing."""

import numpy as np
import pytest

import kjax_core
from kjax_core.parity import assert_parity, compare, reference_model, sample_images

from helpers import save_legacy_h5, show

VARIANTS = ["densenet121", "densenet169", "densenet201"]
# Odd, non-square: 67x45 reaches the transitions' 'valid' 2x2 pools at odd sizes (17x12 -> 8x6,
# 4x3 -> 2x1), dropping a row or column as Keras does; 33x97 sits just above Keras' minimum of 32.
SMALL_SIZES = [(67, 45), (33, 97)]


def test_logits_default_size():
    (report,) = show(assert_parity("densenet121", classifier_activation=None))
    assert report.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS[1:])
def test_logits_default_size_deep_variants(name):
    show(assert_parity(name, classifier_activation=None))


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_feature_maps_one_keras_model_for_any_size(name):
    show(assert_parity(name, include_top=False, sizes=SMALL_SIZES))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("densenet121", include_top=False, pooling=pooling,
                                   sizes=[(75, 61)], float32=False))
    assert report.output_shape == (2, 1024)


def test_parameter_paths_are_keras_names():
    translation, _ = reference_model("densenet121", include_top=False, input_shape=(64, 64, 3),
                                     prepare=False)
    params = translation.variables["params"]
    assert params["conv2_block1"]["1_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert params["conv2_block6"]["2_conv"]["kernel"].shape == (3, 3, 128, 32)
    assert params["pool2"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert set(translation.variables["batch_stats"]["bn"]) == {"mean", "var"}


@pytest.mark.parametrize(
    "include_top,fname",
    [
        (True, "densenet121_weights_tf_dim_ordering_tf_kernels.h5"),
        (False, "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_imagenet_offline(tmp_path, serve_weights, include_top, fname):
    options = dict(include_top=include_top)
    if include_top:
        options["classifier_activation"] = None
    source, keras_model = reference_model("densenet121", **options)
    serve_weights[fname] = save_legacy_h5(keras_model, tmp_path / fname)

    translation = kjax_core.translate("densenet121", "imagenet", **options)
    assert serve_weights["_asked"] == [fname]
    size = (224, 224) if include_top else (75, 61)
    (report,) = show([compare(translation, keras_model, sample_images((2, *size, 3), 11),
                              float32=False)])
    assert report.ok, report.problems


def test_preprocess_input_is_keras_torch_mode():
    import keras

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.densenet.preprocess_input(images.copy())
    for name in VARIANTS:
        np.testing.assert_allclose(kjax_core.preprocess_input(name, images), expected, rtol=1e-6)
