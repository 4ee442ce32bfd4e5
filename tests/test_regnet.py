"""RegNetX and RegNetY (tf_keras.applications.regnet; Keras 3 dropped them): what the family does
beyond the contract every model keeps (tests/test_zoo.py): the default size, pooling, tf_keras'
BatchNorm training update, the in-graph Rescaling on and off, the ``model_name`` option that
prefixes every layer name, the head tf_keras names from a per-process counter and whose
``classifier_activation`` it ignores, and the imagenet path offline for an X and a Y model."""

import numpy as np
import pytest

import family_suite
import kjax_core
from kjax_core.parity import assert_train_step, compare, reference_model, sample_images

from family_suite import FamilySuite
from helpers import assert_same_variables, random_translation, show

SIZES = ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120", "160", "320")


def _save_h5(keras_model, path):
    """tf_keras' own HDF5 weights writer (by layer, as the Keras Applications files); Keras 3's
    legacy writer, helpers.save_legacy_h5, does not take tf_keras models."""
    keras_model.save_weights(str(path))
    return path


@pytest.fixture
def tf_keras_h5(monkeypatch):
    monkeypatch.setattr(family_suite, "save_legacy_h5", _save_h5)


def _check(reports):
    show(reports)
    failed = [f"{r.summary()}: {'; '.join(r.problems)}" for r in reports if not r.ok]
    assert not failed, "\n".join(failed)
    return reports


class TestRegNet(FamilySuite):
    representative = "regnety002"  # Y: the X block plus squeeze-excite
    variants = ("regnety002", *(f"regnety{s}" for s in SIZES[1:]), *(f"regnetx{s}" for s in SIZES))
    pooling_size = (75, 61)
    channels = 368
    imagenet_files = {True: "regnety002.h5", False: "regnety002_notop.h5"}
    keras_preprocessing = "tf_keras.applications.regnet"

    def test_imagenet_offline(self, tmp_path, serve_weights, imagenet, tf_keras_h5):
        super().test_imagenet_offline(tmp_path, serve_weights, imagenet)

    def test_train_mode_matches_keras_training(self):
        """train=True normalises with batch statistics and moves the moving ones as tf_keras'
        fused BatchNorm (momentum 0.9, toward the unbiased batch variance); the steps are judged
        against tf_keras' float32 model, whose float64 BatchNorm is not fused. Without the
        in-graph Rescaling (include_preprocessing=False; X without it: below)."""
        size = (64, 48)
        translation, keras_model = reference_model(
            "regnety002", include_top=False, include_preprocessing=False,
            input_shape=(None, None, 3), calibration_shape=size)
        assert not any(type(layer).__name__ == "Rescaling" for layer in keras_model.layers)
        x = sample_images((4, *size, 3), 21) / 255
        assert_train_step(translation, keras_model, x, "regnety002_Stage_1_YBlock_0_conv_3x3_bn",
                          ("regnety002_Stage_1", "YBlock_0", "conv_3x3_bn"), statistics="float32")


def test_without_preprocessing_and_another_model_name():
    """include_preprocessing=False drops the Rescaling(1/255); model_name renames every layer on
    both sides (tf_keras prefixes its layers with it), so they still match by name."""
    size = (49, 39)
    translation, keras_model = reference_model(
        "regnetx002", include_top=False, include_preprocessing=False, model_name="mine",
        input_shape=(None, None, 3), calibration_shape=size)
    assert not any(type(layer).__name__ == "Rescaling" for layer in keras_model.layers)
    assert keras_model.layers[1].name == "mine_stem_conv"
    assert "mine_Stage_2" in translation.variables["params"]
    (report,) = _check([compare(translation, keras_model, sample_images((2, *size, 3), 13))])
    assert report.output_shape == (2, 2, 2, 368)


def test_names_and_head():
    """Built after other RegNets (tf_keras' per-process counters moved on): the PreStem Rescaling
    is named from model_name, not a counter, and has no weights (the twin holds 1/255 itself);
    the head's Dense is "<n>head_dense" from a counter, paired here as the only Dense. The head
    applies no activation: classifier_activation="softmax" (the default) is checked by tf_keras
    but not applied, and the twin returns the same logits."""
    from tf_keras.applications import regnet

    regnet.RegNetX002(weights=None)
    regnet.RegNetX002(weights=None)
    size = (35, 45)
    translation, keras_model = reference_model("regnetx002", input_shape=(*size, 3),
                                               calibration_shape=size)
    (rescaling,) = [layer for layer in keras_model.layers if type(layer).__name__ == "Rescaling"]
    assert rescaling.name == "regnetx002_prestem_rescaling" and rescaling.weights == []
    (dense,) = [layer for layer in keras_model.layers if type(layer).__name__ == "Dense"]
    assert dense.name != "1head_dense" and dense.name.endswith("head_dense")
    np.testing.assert_array_equal(translation.variables["params"]["head_dense"]["kernel"],
                                  dense.get_weights()[0])

    assert translation.options["classifier_activation"] == "softmax"
    x = sample_images((2, *size, 3), 5)
    _check([compare(translation, keras_model, x)])
    out = np.asarray(translation.module.apply(translation.variables, x))
    assert not np.allclose(out.sum(axis=1), 1.0)  # logits, as Keras'


def test_imagenet_offline_x_without_top(tmp_path, serve_weights):
    """The X family's imagenet path: tf_keras asks get_file for "regnetx002_notop.h5"."""
    fname = "regnetx002_notop.h5"
    direct, keras_model = random_translation("regnetx002", (None, None, 3), include_top=False)
    serve_weights[fname] = _save_h5(keras_model, tmp_path / fname)
    translation = kjax_core.translate("regnetx002", "imagenet", include_top=False)
    assert serve_weights["_asked"] == [fname]
    assert translation.reference.weights_file == str(tmp_path / fname)
    assert_same_variables(translation.variables, direct.variables)
