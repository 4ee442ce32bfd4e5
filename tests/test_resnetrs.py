"""ResNet-RS (tf_keras.applications.resnet_rs; Keras 3 dropped it) beyond the contract every model
keeps (tests/test_zoo.py): the default size, pooling, the in-graph preprocessing, tf_keras'
BatchNorm training update, drop connect, the named weight sets and the imagenet path offline.

The deep variants used to need a damped reference (the last BatchNorm of each residual branch
halved) because the random trunk was chaotic; with the harness' in-order calibration they are
exact in float64 without it (resnetrs152 at 35x33: 1.4e-13).
"""

import json

import jax
import numpy as np
import pytest

import kjax_core
from kjax_core import get_spec
from kjax_core.parity import (
    assert_parity, assert_train_step, compare, reference_model, relative_error, sample_images,
)

from helpers import assert_same_variables, random_translation, run_cli, show

DEPTHS = (50, 101, 152, 200, 270, 350, 420)
SMALL_SIZES = [(33, 97), (67, 45)]  # odd, non-square; calibrated at the first


def _check(reports):
    show(reports)
    failed = [f"{r.summary()}: {'; '.join(r.problems)}" for r in reports if not r.ok]
    assert not failed, "\n".join(failed)
    return reports


def test_logits_default_size():
    (report,) = show(assert_parity("resnetrs50", classifier_activation=None))
    assert report.output_shape == (2, 1000)


@pytest.mark.slow
def test_feature_maps_one_keras_model_for_any_size():
    reports = show(assert_parity("resnetrs50", include_top=False, sizes=SMALL_SIZES))
    assert [r.output_shape for r in reports] == [(2, 2, 4, 2048), (2, 3, 2, 2048)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("resnetrs50", include_top=False, pooling=pooling,
                                   sizes=[(75, 61)], float32=False))
    assert report.output_shape == (2, 2048)


def test_without_preprocessing():
    (report,) = show(assert_parity("resnetrs50", include_top=False, include_preprocessing=False,
                                   sizes=[(49, 39)]))
    assert report.output_shape == (2, 2, 2, 2048)


def test_preprocessing_is_in_the_graph():
    """Rescaling(1/255) and Normalization(ImageNet mean, variance) are constants in tf_keras (the
    Normalization layer has no weights), so the translator carries nothing: the Flax twin must hold
    them itself. Dropping them is visible."""
    translation, keras_model = reference_model("resnetrs50", include_top=False,
                                               input_shape=(None, None, 3), calibration_shape=(41, 37))
    assert [layer.weights for layer in keras_model.layers
            if type(layer).__name__ in ("Rescaling", "Normalization")] == [[], []]
    x = sample_images((2, 41, 37, 3), 3)
    _check([compare(translation, keras_model, x, float32=False)])
    bare = kjax_core.create_model("resnetrs50", include_top=False, include_preprocessing=False)
    assert relative_error(bare.apply(translation.variables, x), keras_model(x)) > 1e-2


def test_train_mode_matches_keras_training():
    """train=True normalises with batch statistics and sets the moving ones as tf_keras'
    training=True does (momentum 0.0; the moving variance is the unbiased batch variance: with
    8x6 values per channel x 4 images, n / (n - 1) = 1.0052, far above the tolerance)."""
    translation, keras_model = reference_model("resnetrs50", include_top=False,
                                               input_shape=(None, None, 3), calibration_shape=(64, 48))
    x = sample_images((4, 64, 48, 3), 21)
    # tf_keras' float64 BatchNorm is not fused and moves toward the biased variance: the steps
    # are judged against its float32 model, the one users run (outputs still in float64).
    updated = assert_train_step(translation, keras_model, x, "BlockGroup3__block_1__batch_norm_2",
                                ("BlockGroup3_", "block_1", "_batch_norm_2"), statistics="float32")
    # momentum 0: the moving statistics are the batch's, unbiased, not a step toward them
    after = updated["batch_stats"]["BlockGroup3_"]["block_1"]["_batch_norm_2"]
    before = translation.variables["batch_stats"]["BlockGroup3_"]["block_1"]["_batch_norm_2"]
    assert relative_error(after["var"], before["var"]) > 1e-2


def test_drop_connect_drops_whole_residual_branches_in_training():
    """Dropout(survival_probability, noise_shape=(None, 1, 1, 1)): in training each sample's whole
    residual branch is dropped (output = its identity shortcut) or kept and scaled; in inference
    nothing is dropped. tf_keras uses the survival probability as the drop rate; so does the twin."""
    from kjax_resnetrs.model import BottleneckBlock

    block = BottleneckBlock(16, strides=1, use_projection=False, survival_probability=0.5)
    x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(1), (32, 5, 4, 64)))
    variables = block.init(jax.random.PRNGKey(0), x)
    out, _ = block.apply(variables, x, True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(2)})
    dropped = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
    assert 4 < dropped.sum() < 28  # rate 0.5 over 32 samples
    kept = np.asarray(out)[~dropped] != np.asarray(x)[~dropped]
    assert kept.mean() > 0.5  # a kept branch changes most of the map, not scattered elements
    assert not np.any(np.all(np.asarray(block.apply(variables, x)) == np.asarray(x), axis=(1, 2, 3)))


def test_weight_sets_are_the_tf_keras_variants():
    from tf_keras.src.applications import resnet_rs

    for depth in DEPTHS:
        sizes = resnet_rs.DEPTH_TO_WEIGHT_VARIANTS[depth]
        assert get_spec(f"resnetrs{depth}").weights == ("imagenet", *(f"imagenet-i{s}" for s in sizes))


# ----------------------------------------------------------------------------------- imagenet offline


def test_imagenet_offline_with_top(tmp_path, serve_weights, capsys):
    """weights="imagenet" is tf_keras' largest variant (resnetrs50: i160); the file is served under
    the name tf_keras asks for, written as tf_keras writes HDF5 weights."""
    fname = "resnet-rs-50-i160.h5"
    direct, keras_model = random_translation("resnetrs50", classifier_activation=None)
    keras_model.save_weights(str(tmp_path / fname))
    serve_weights[fname] = tmp_path / fname

    translation = kjax_core.translate("resnetrs50", "imagenet", classifier_activation=None)
    assert serve_weights["_asked"] == [fname]
    assert translation.reference.weights_file == str(tmp_path / fname)
    assert_same_variables(translation.variables, direct.variables)

    code, out, err = run_cli(["translate", "resnetrs50", "-o", tmp_path / "out", "--weights",
                              "imagenet-i160", "--classifier-activation", "none"], capsys)
    assert code == 0, err
    assert set(serve_weights["_asked"]) == {fname}  # the float64 twin asked for it too
    module, variables = kjax_core.load(tmp_path / "out")
    assert module == translation.module
    assert_same_variables(variables, translation.variables)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["weights"] == "imagenet-i160" and config["preprocessing"] == "none"


def test_imagenet_offline_named_sets_without_top(tmp_path, serve_weights, capsys):
    """resnetrs101 has i160 and i192: "imagenet-i160" asks for that file, "imagenet" for i192."""
    fname = "resnet-rs-101-i160_notop.h5"
    direct, keras_model = random_translation("resnetrs101", include_top=False)
    keras_model.save_weights(str(tmp_path / fname))
    serve_weights[fname] = tmp_path / fname

    translation = kjax_core.translate("resnetrs101", "imagenet-i160", include_top=False)
    assert serve_weights["_asked"] == [fname]
    assert_same_variables(translation.variables, direct.variables)

    code, out, err = run_cli(["translate", "resnetrs101", "-o", tmp_path / "out", "--no-include-top"],
                             capsys)
    assert code == 1 and "could not download the imagenet weights of resnetrs101" in err
    assert serve_weights["_asked"][-1] == "resnet-rs-101-i192_notop.h5"
    code, out, err = run_cli(["translate", "resnetrs101", "-o", tmp_path / "out", "--no-include-top",
                              "--weights", "imagenet-i160"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    assert module == translation.module
    assert_same_variables(variables, translation.variables)

    code, out, err = run_cli(["translate", "resnetrs101", "-o", tmp_path / "other", "--weights",
                              "imagenet-i224"], capsys)
    assert code == 1 and "no weight set 'imagenet-i224'" in err and "imagenet-i192" in err


def test_preprocess_input_is_the_identity():
    from tf_keras.applications import resnet_rs

    images = sample_images((2, 9, 7, 3), 1)
    expected = resnet_rs.preprocess_input(images.copy())
    np.testing.assert_array_equal(kjax_core.preprocess_input("resnetrs50", images), expected)
