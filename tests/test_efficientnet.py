"""EfficientNet B0-B7 beyond the contract every model keeps (tests/test_zoo.py): the default size,
the size-agnostic Keras model, pooling, train mode with drop connect, and the imagenet path
offline, including the showcase command ``kjax translate efficientnetb3 -o out/``.

EfficientNet pads before its strided convolutions with Keras' correct_pad, which Keras computes
from the static input size (and as for an even size when the size is None): odd sizes are checked
against Keras models built for that concrete size (``input_shape=``), the size-agnostic Keras model
(``sizes=``) only at sizes where every strided layer sees an even size (multiples of 32).
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

from helpers import run_cli, save_legacy_h5, show

VARIANTS = [f"efficientnetb{i}" for i in range(8)]
DEFAULT_SIZES = dict(zip(VARIANTS, (224, 240, 260, 300, 380, 456, 528, 600)))


def test_logits_default_size():
    """B0 at 224x224; B3 at its default 300x300 is checked with its imagenet graph in
    test_showcase_translate_efficientnetb3."""
    (report,) = show(assert_parity("efficientnetb0", classifier_activation=None))
    assert report.input_shape == (224, 224, 3) and report.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnetb1", "efficientnetb2", "efficientnetb4"])
def test_logits_default_size_bigger_variants(name):
    (report,) = show(assert_parity(name, classifier_activation=None))
    assert report.input_shape[:2] == (DEFAULT_SIZES[name],) * 2


def test_default_sizes():
    for name in VARIANTS:
        assert get_spec(name).input_size == (DEFAULT_SIZES[name], DEFAULT_SIZES[name], 3)


def test_size_agnostic_keras_model_at_multiples_of_32():
    """One Keras model built for (None, None, 3) pads as for even sizes at every strided layer;
    where every strided layer does see an even size it is what the Flax twin computes."""
    reports = show(assert_parity("efficientnetb0", include_top=False, sizes=[(64, 96), (96, 128)],
                                 float32=False))
    assert [r.output_shape for r in reports] == [(2, 2, 3, 1280), (2, 3, 4, 1280)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("efficientnetb1", include_top=False, pooling=pooling,
                                   input_shape=(75, 61, 3), float32=False))
    assert report.output_shape == (2, 1280)


def test_preprocess_input_is_keras_identity():
    import keras

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.efficientnet.preprocess_input(images.copy())
    np.testing.assert_array_equal(kjax_core.preprocess_input("efficientnetb0", images), expected)
    assert get_spec("efficientnetb3").preprocessing == "none"


def test_train_mode_matches_keras_training():
    """train=True: batch statistics, moving ones updated with Keras' momentum 0.99, and (with a
    "dropout" rng) drop-connect and top dropout as Keras' training=True applies them."""
    translation, keras_model = reference_model("efficientnetb0", input_shape=(64, 96, 3),
                                               classifier_activation=None, classes=10)
    x = sample_images((4, 64, 96, 3), 21)
    drops = {layer.name for layer in keras_model.layers if type(layer).__name__ == "Dropout"}
    assert {"top_dropout", "block2b_drop", "block6d_drop"} <= drops
    # Dropout is random on both sides: compared with every rate at 0 (assert_train_step).
    quiet = translation.module.clone(dropout_rate=0.0, drop_connect_rate=0.0)
    updated = assert_train_step(translation, keras_model, x, "block3b_bn", ("block3b", "bn"),
                                module=quiet)
    # The Normalization statistics are fixed, as in Keras.
    np.testing.assert_array_equal(updated["batch_stats"]["normalization"]["mean"],
                                  translation.variables["batch_stats"]["normalization"]["mean"])
    # With the real rates, dropout draws from the "dropout" rng.
    module = translation.module
    apply = jax.jit(lambda v, x, key: module.apply(v, x, train=True, mutable=["batch_stats"],
                                                   rngs={"dropout": key})[0])
    first = apply(translation.variables, x, jax.random.PRNGKey(0))
    again = apply(translation.variables, x, jax.random.PRNGKey(0))
    other = apply(translation.variables, x, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(first, again)
    assert relative_error(first, other) > 1e-2
    assert relative_error(first, jax.jit(lambda v, x: quiet.apply(
        v, x, train=True, mutable=["batch_stats"])[0])(translation.variables, x)) > 1e-2


def _imagenet_source(name, tmp_path, serve_weights, fname, input_shape, **options):
    """A "pretrained" Keras model of the graph Keras builds for weights="imagenet" (with the extra
    Rescaling), randomised and calibrated, saved as Keras ships it under ``fname``."""
    _, bare = reference_model(name, input_shape=input_shape, prepare=False, **options)
    serve_weights[fname] = save_legacy_h5(bare, tmp_path / fname)
    _, source = reference_model(name, weights="imagenet", input_shape=input_shape, **options)
    # Keras built the imagenet-only Rescaling after the Normalization.
    assert [type(layer).__name__ for layer in source.layers[1:4]] == [
        "Rescaling", "Normalization", "Rescaling"]
    save_legacy_h5(source, tmp_path / fname)
    serve_weights["_asked"].clear()
    return source


def test_showcase_translate_efficientnetb3(tmp_path, serve_weights, capsys):
    """`kjax translate efficientnetb3 -o out/`: imagenet weights with top at 300x300; the output
    loads back as a module with Keras' imagenet-only rescaling, computing what Keras computes."""
    fname = "efficientnetb3.h5"
    source = _imagenet_source("efficientnetb3", tmp_path, serve_weights, fname, None,
                              classifier_activation=None)

    translation = kjax_core.translate("efficientnetb3", "imagenet", classifier_activation=None)
    assert serve_weights["_asked"] == [fname]
    assert translation.module.imagenet_rescaling is True
    (report,) = show([compare(translation, translation.reference.model,
                              sample_images((2, 300, 300, 3), 11), float32=False)])
    assert report.ok, report.problems
    assert relative_error(translation.reference.model(sample_images((1, 300, 300, 3), 3)),
                          source(sample_images((1, 300, 300, 3), 3))) < 1e-6
    # Without the imagenet rescaling the same weights compute something else: the option matters.
    plain = kjax_core.create_model("efficientnetb3", classifier_activation=None)
    assert plain.imagenet_rescaling is False
    x = sample_images((2, 300, 300, 3), 11)
    assert relative_error(jax.jit(plain.apply)(translation.variables, x), source(x)) > 1e-2

    out = tmp_path / "out"
    code, stdout, err = run_cli(["translate", "efficientnetb3", "-o", f"{out}/"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(out)
    assert module.imagenet_rescaling is True
    probabilities = jax.jit(module.apply)(variables, x)
    logits = np.asarray(source(x), np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert relative_error(probabilities, expected) < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == "imagenet" and config["preprocessing"] == "none"
    assert config["input_shape"] == [300, 300, 3]


def test_imagenet_notop_odd_size_and_weights_file(tmp_path, serve_weights, capsys):
    """No-top imagenet weights at an odd size through the CLI; the same file passed as a PATH
    builds Keras' graph for a weights file, which has no imagenet rescaling, and so does kjax."""
    fname = "efficientnetb0_notop.h5"
    source = _imagenet_source("efficientnetb0", tmp_path, serve_weights, fname, (67, 45, 3),
                              include_top=False)
    code, stdout, err = run_cli(["translate", "efficientnetb0", "-o", tmp_path / "out",
                                 "--no-include-top", "--input-shape", "67,45,3"], capsys)
    assert code == 0, err
    assert serve_weights["_asked"] == [fname]
    module, variables = kjax_core.load(tmp_path / "out")
    assert module.imagenet_rescaling is True
    x = sample_images((2, 67, 45, 3), 12)
    assert relative_error(jax.jit(module.apply)(variables, x), source(x)) < 1e-4

    code, stdout, err = run_cli(["translate", "efficientnetb0", "-o", tmp_path / "file",
                                 "--weights", tmp_path / fname, "--no-include-top",
                                 "--input-shape", "67,45,3"], capsys)
    assert code == 0, err
    module, file_variables = kjax_core.load(tmp_path / "file")
    assert module.imagenet_rescaling is False
    _, keras_from_file = reference_model("efficientnetb0", weights=str(tmp_path / fname),
                                         include_top=False, input_shape=(67, 45, 3), prepare=False)
    assert relative_error(jax.jit(module.apply)(file_variables, x), keras_from_file(x)) < 1e-4
    assert relative_error(keras_from_file(x), source(x)) > 1e-2  # Keras' graphs differ too
