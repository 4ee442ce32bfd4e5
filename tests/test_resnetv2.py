"""ResNetV2: what the family does beyond the contract every model keeps (tests/test_zoo.py): the
default size, pooling, its layout (stride in the last block, zero-padded stem pool), the imagenet
path offline and Keras' preprocessing."""

import json

import jax
import numpy as np
import pytest

import kjax_core
from kjax_core.parity import assert_parity, compare, reference_model, sample_images

from helpers import assert_same_variables, run_cli, save_legacy_h5, show

SMALL_SIZES = [(67, 45), (33, 97)]  # odd, non-square; 33 is just above Keras' minimum of 32
VARIANTS = ["resnet50v2", "resnet101v2", "resnet152v2"]


def test_logits_default_size():
    (report,) = show(assert_parity("resnet50v2", classifier_activation=None))
    assert report.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS[1:])
def test_logits_default_size_deep_variants(name):
    show(assert_parity(name, classifier_activation=None))


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_feature_maps_one_keras_model_for_any_size(name):
    reports = show(assert_parity(name, include_top=False, sizes=SMALL_SIZES))
    assert [r.output_shape for r in reports] == [(2, 3, 2, 2048), (2, 2, 4, 2048)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("resnet50v2", include_top=False, pooling=pooling,
                                   sizes=[(75, 61)], float32=False))
    assert report.output_shape == (2, 2048)


def test_stride_sits_in_the_last_block_of_each_stack():
    """ResNetV2's layout, read off the translated tree: conv{2,3,4}_blockN (the last) carry the
    stride, block1 has the 1x1 conv shortcut, and the stem conv has a bias and no BatchNorm."""
    translation, _ = reference_model("resnet50v2", include_top=False, input_shape=(64, 64, 3),
                                     prepare=False)
    params = translation.variables["params"]
    assert set(params["conv1_conv"]) == {"kernel", "bias"} and "conv1_bn" not in params
    assert "0_conv" in params["conv2_block1"] and "0_conv" not in params["conv2_block3"]
    assert "bias" not in params["conv2_block1"]["2_conv"] and "post_bn" in params
    out = jax.eval_shape(translation.module.apply, translation.variables,
                         jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    assert out.shape == (1, 2, 2, 2048)  # 64 / 32: conv5 keeps its size


def test_stem_pool_pads_with_zeros():
    """pool1 pads the stem conv output (no BatchNorm, no relu, so partly negative) with zeros. On
    calibrated weights conv2_block1's preact relu zeroes the cells where zeros and -inf padding
    differ (measured: identical outputs), so the default parity cannot see a -inf padding; shifting
    that BatchNorm's beta up lets them through (-inf padding then measured 5e-2 here)."""
    translation, keras_model = reference_model("resnet50v2", include_top=False,
                                               input_shape=(None, None, 3), calibration_shape=(67, 45))
    layer = keras_model.get_layer("conv2_block1_preact_bn")
    gamma, beta, mean, var = layer.get_weights()
    layer.set_weights([gamma, beta + 4.0, mean, var])
    translation = kjax_core.translate("resnet50v2", None, keras_model=keras_model, include_top=False)
    (report,) = show([compare(translation, keras_model, sample_images((2, 67, 45, 3), 7))])
    assert report.ok, report.problems


@pytest.mark.parametrize(
    "include_top,fname",
    [
        (True, "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5"),
        (False, "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_imagenet_offline(tmp_path, serve_weights, include_top, fname, capsys):
    """The imagenet path with the file name Keras asks for, served locally (see conftest)."""
    options = dict(include_top=include_top)
    if include_top:
        options["classifier_activation"] = None
    size = (224, 224) if include_top else (75, 61)
    source, keras_model = reference_model(
        "resnet50v2", input_shape=None if include_top else (None, None, 3),
        calibration_shape=size, **options)
    serve_weights[fname] = save_legacy_h5(keras_model, tmp_path / fname)

    translation = kjax_core.translate("resnet50v2", "imagenet", **options)
    assert serve_weights["_asked"] == [fname]
    (report,) = show([compare(translation, keras_model, sample_images((2, *size, 3), 11),
                              float32=False)])
    assert report.ok, report.problems

    args = ["translate", "resnet50v2", "-o", tmp_path / "out", "--weights", "imagenet"]
    args += ["--classifier-activation", "none"] if include_top else ["--no-include-top"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    assert module == translation.module
    assert_same_variables(variables, translation.variables)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["weights"] == "imagenet" and config["preprocessing"] == "tf"


def test_preprocess_input_is_keras_tf_mode():
    import keras

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.resnet_v2.preprocess_input(images.copy())
    np.testing.assert_allclose(kjax_core.preprocess_input("resnet50v2", images), expected, rtol=1e-6)
