"""EfficientNet B0-B7 parity against keras.applications on randomised, calibrated weights, and the
imagenet path offline, including the showcase command ``kjax translate efficientnetb3 -o out/``.

EfficientNet pads before its strided convolutions with Keras' correct_pad, which Keras computes
from the static input size (and as for an even size when the size is None): odd sizes are checked
against Keras models built for that concrete size (``input_shape=``), the size-agnostic Keras model
(``sizes=``) only at sizes where every strided layer sees an even size (multiples of 32).

The family's spec asks the parity harness (``ModelSpec.parity``) for BatchNorm statistics set in
model order on what each layer receives ("in_order"), so that their perturbations do not compound
through EfficientNet's depth, and for squeeze-excitation gates with small random kernels
("gate_scale"), which otherwise make the deep variants chaotic (see kjax_core.parity); at small
sizes the harness then calibrates on as many images as hold the pixels of 4 images of 224x224.

Big variants (B4-B7) are checked only at small sizes: B7 at 600x600 is far too slow here.
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

from helpers import leaves, run_cli, save_legacy_h5

# Keras count_params() with top and 1000 classes (it counts the Normalization layer's sample
# count, a scalar that never enters the computation; see test_parameter_count_and_every_leaf).
PARAMETERS = {
    "efficientnetb0": 5_330_571,
    "efficientnetb1": 7_856_239,
    "efficientnetb2": 9_177_569,
    "efficientnetb3": 12_320_535,
    "efficientnetb4": 19_466_823,
    "efficientnetb5": 30_562_527,
    "efficientnetb6": 43_265_143,
    "efficientnetb7": 66_658_687,
}
VARIANTS = list(PARAMETERS)
DEFAULT_SIZES = dict(zip(VARIANTS, (224, 240, 260, 300, 380, 456, 528, 600)))


def _show(reports):
    for report in reports:
        print(report.summary())
    return reports


def test_logits_default_size():
    """B0 at 224x224; B3 at its default 300x300 is checked with its imagenet graph in
    test_showcase_translate_efficientnetb3."""
    (report,) = _show(assert_parity("efficientnetb0", classifier_activation=None))
    assert report.input_shape == (224, 224, 3) and report.output_shape == (2, 1000)


@pytest.mark.parametrize("name,shape", [
    ("efficientnetb0", (67, 45)),
    ("efficientnetb1", (33, 97)),  # 33: just above Keras' minimum of 32
    ("efficientnetb2", (45, 67)),
    ("efficientnetb3", (97, 33)),
    ("efficientnetb4", (67, 45)),
    ("efficientnetb5", (33, 97)),
    ("efficientnetb6", (45, 67)),
    ("efficientnetb7", (33, 97)),
])
def test_logits_small_odd_size_every_variant(name, shape):
    (report,) = _show(assert_parity(name, input_shape=(*shape, 3), classifier_activation=None,
                                    classes=17))
    assert report.output_shape == (2, 17)


@pytest.mark.parametrize("name,shape,out", [
    ("efficientnetb0", (67, 45), (2, 3, 2, 1280)),
    ("efficientnetb2", (33, 97), (2, 2, 4, 1408)),
])
def test_feature_maps_small_odd_sizes(name, shape, out):
    (report,) = _show(assert_parity(name, include_top=False, input_shape=(*shape, 3)))
    assert report.output_shape == out


def test_size_agnostic_keras_model_at_multiples_of_32():
    """One Keras model built for (None, None, 3) pads as for even sizes at every strided layer;
    where every strided layer does see an even size it is what the Flax twin computes."""
    reports = _show(assert_parity("efficientnetb0", include_top=False, sizes=[(64, 96), (96, 128)]))
    assert [r.output_shape for r in reports] == [(2, 2, 3, 1280), (2, 3, 4, 1280)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = _show(assert_parity("efficientnetb1", include_top=False, pooling=pooling,
                                    input_shape=(75, 61, 3)))
    assert report.output_shape == (2, 1280)


def test_softmax_output():
    """Logits are what the parity tests compare; this checks the softmax head itself once."""
    (report,) = _show(assert_parity("efficientnetb0", input_shape=(65, 71, 3)))
    assert report.output_shape == (2, 1000)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_and_every_leaf(name):
    """The spec's parameter count is Keras' count_params(), and the Flax tree holds exactly as many
    numbers but one: the Normalization layer's sample count (what ``adapt`` saw), which Keras
    counts and which never enters the computation (the layer rule discards it)."""
    translation, keras_model = reference_model(name, input_shape=(64, 64, 3), prepare=False)
    assert keras_model.count_params() == PARAMETERS[name] == get_spec(name).parameters
    (normalization,) = [layer for layer in keras_model.layers
                        if type(layer).__name__ == "Normalization"]
    assert [tuple(w.shape) for w in normalization.weights] == [(3,), (3,), ()]  # mean, var, count
    flax_count = sum(np.size(v) for tree in translation.variables.values() for v in leaves(tree))
    assert flax_count == keras_model.count_params() - 1
    assert get_spec(name).input_size == (DEFAULT_SIZES[name], DEFAULT_SIZES[name], 3)


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
                                               classifier_activation=None, classes=10,
                                               calibration_batch=8)
    x = sample_images((4, 64, 96, 3), 21)
    # Dropout is random on both sides; compare the rest with every rate at 0.
    rates = [layer for layer in keras_model.layers if type(layer).__name__ == "Dropout"]
    assert {"top_dropout", "block2b_drop", "block6d_drop"} <= {layer.name for layer in rates}
    saved = [layer.rate for layer in rates]
    for layer in rates:
        layer.rate = 0.0
    quiet = translation.module.clone(dropout_rate=0.0, drop_connect_rate=0.0)
    try:
        updated = assert_train_step(translation, keras_model, x, "block3b_bn", ("block3b", "bn"),
                                    module=quiet)
    finally:
        for layer, rate in zip(rates, saved):
            layer.rate = rate
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
    # Keras' training pass updated its moving statistics as ours did: inference agrees after it.
    moved = {**translation.variables, **updated}
    assert relative_error(jax.jit(module.apply)(moved, x), keras_model(x)) < 1e-4


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
    report = compare(translation, translation.reference.model, sample_images((2, 300, 300, 3), 11))
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
