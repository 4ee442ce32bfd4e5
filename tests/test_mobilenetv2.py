"""MobileNetV2 beyond the contract every model keeps (tests/test_zoo.py): every width Keras ships
weights for, and its imagenet path offline (file names depend on alpha and size).

MobileNetV2 pads before each strided depthwise conv with Keras' correct_pad, which Keras computes
from the static input size (and as for an even size when the size is None). So odd sizes are
checked against Keras models built for that concrete size (``input_shape=``); the size-agnostic
Keras model (``sizes=``) is checked at even sizes only.
"""

import json

import numpy as np
import pytest

import kjax_core
from kjax_core import get_spec
from kjax_core.parity import assert_parity, assert_train_step, compare, reference_model, sample_images
from kjax_core.preprocessing import apply_mode

from helpers import assert_same_variables, leaves, random_translation, run_cli, save_legacy_h5, show

# Keras count_params() with top and 1000 classes, per width multiplier.
PARAMETERS = {
    0.35: 1_691_208,
    0.5: 1_987_224,
    0.75: 2_663_064,
    1.0: 3_538_984,
    1.3: 5_431_048,
    1.4: 6_156_712,
}
ALPHAS = list(PARAMETERS)  # the widths Keras ships imagenet weights for


def test_logits_default_size():
    (report,) = show(assert_parity("mobilenetv2", classifier_activation=None))
    assert report.output_shape == (2, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.35, 1.4])
def test_logits_default_size_other_widths(alpha):
    show(assert_parity("mobilenetv2", alpha=alpha, classifier_activation=None))


@pytest.mark.parametrize("alpha", [a for a in ALPHAS if a != 1.0])
def test_logits_small_odd_size_every_width(alpha):
    """Width 1.0 is in the zoo contract (tests/test_zoo.py); the others here."""
    (report,) = show(assert_parity("mobilenetv2", alpha=alpha, input_shape=(67, 45, 3),
                                   classifier_activation=None, classes=17))
    assert report.output_shape == (2, 17)


def test_feature_maps_wide():
    """alpha > 1 widens the last conv."""
    (report,) = show(assert_parity("mobilenetv2", alpha=1.4, include_top=False,
                                   input_shape=(45, 67, 3), float32=False))
    assert report.output_shape == (2, 2, 3, 1792)


def test_size_agnostic_keras_model_at_even_sizes():
    """One Keras model built for (None, None, 3) pads as for even sizes at every strided block;
    where every strided block does see an even size (multiples of 32) it is what the Flax twin
    computes. (64x48 is not such a size: the last strided block sees 48 / 16 = 3 columns.)"""
    reports = show(assert_parity("mobilenetv2", include_top=False, sizes=[(64, 96), (96, 128)],
                                 float32=False))
    assert [r.output_shape for r in reports] == [(2, 2, 3, 1280), (2, 3, 4, 1280)]


def test_odd_sizes_differ_from_the_size_agnostic_keras_model():
    """The reason for concrete input shapes above: at an odd size, a Keras model built for
    (None, None, 3) pads as for an even size and even gives another output shape; the Flax twin
    computes what the Keras model built for that size computes."""
    translation, keras_model = reference_model("mobilenetv2", include_top=False,
                                               input_shape=(None, None, 3), prepare=False)
    x = apply_mode("tf", sample_images((1, 67, 45, 3), 3))
    assert keras_model(x).shape == (1, 2, 1, 1280)
    assert translation.module.apply(translation.variables, x).shape == (1, 3, 2, 1280)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_pooling(pooling):
    (report,) = show(assert_parity("mobilenetv2", include_top=False, pooling=pooling,
                                   input_shape=(75, 61, 3), float32=False))
    assert report.output_shape == (2, 1280)


@pytest.mark.parametrize("alpha", ALPHAS + [0.6])  # 0.6: a width without imagenet weights
def test_parameter_count_and_every_leaf(alpha):
    """Keras' count_params() per width (the spec's is alpha 1.0), and the Flax tree holds exactly
    as many numbers as the Keras model (every weight used once, every leaf filled once)."""
    translation, keras_model = reference_model("mobilenetv2", alpha=alpha, input_shape=(64, 64, 3),
                                               prepare=False)
    if alpha in PARAMETERS:
        assert keras_model.count_params() == PARAMETERS[alpha]
    flax_count = sum(np.size(v) for tree in translation.variables.values() for v in leaves(tree))
    assert flax_count == keras_model.count_params()
    assert get_spec("mobilenetv2").parameters == PARAMETERS[1.0]


def test_alpha_option_types():
    """alpha is a float option as in Keras; an integer is taken as that float, a word is refused."""
    assert get_spec("mobilenetv2").options == {"alpha": 1.0}
    model = kjax_core.create_model("mobilenetv2", alpha=1)
    assert model.alpha == 1.0 and isinstance(model.alpha, float)
    assert kjax_core.create_model("mobilenetv2", alpha=0.35).alpha == 0.35
    with pytest.raises(kjax_core.errors.OptionError, match="takes a float"):
        kjax_core.create_model("mobilenetv2", alpha="wide")


def test_train_mode_matches_keras_training():
    """train=True uses batch statistics and updates the moving ones with Keras' momentum 0.999."""
    translation, keras_model = reference_model("mobilenetv2", include_top=False,
                                               input_shape=(None, None, 3), calibration_shape=(64, 96))
    x = apply_mode("tf", sample_images((4, 64, 96, 3), 21))
    assert_train_step(translation, keras_model, x, "block_5_depthwise_BN", ("block_5", "depthwise_BN"))


def test_preprocess_input_is_keras_tf_mode():
    import keras

    images = sample_images((2, 9, 7, 3), 1)
    expected = keras.applications.mobilenet_v2.preprocess_input(images.copy())
    np.testing.assert_allclose(kjax_core.preprocess_input("mobilenetv2", images), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "alpha,include_top,size,fname",
    [
        (1.0, True, (224, 224), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
        (0.35, False, (96, 96), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"),
        # A size Keras has no weights for: it loads the 224 file (and warns).
        (1.4, False, (75, 61), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224_no_top.h5"),
    ],
)
def test_imagenet_offline(tmp_path, serve_weights, capsys, alpha, include_top, size, fname):
    options = dict(alpha=alpha, include_top=include_top)
    if include_top:
        options["classifier_activation"] = None
    direct, keras_model = random_translation("mobilenetv2", (*size, 3), **options)
    serve_weights[fname] = save_legacy_h5(keras_model, tmp_path / fname)

    translation = kjax_core.translate("mobilenetv2", "imagenet", input_shape=(*size, 3), **options)
    assert serve_weights["_asked"] == [fname]
    assert translation.reference.weights_file == str(tmp_path / fname)
    assert_same_variables(translation.variables, direct.variables)

    # Through the CLI (alpha chosen as Keras chooses it) and back.
    args = ["translate", "mobilenetv2", "-o", tmp_path / "out", "--set", f"alpha={alpha}",
            "--input-shape", f"{size[0]},{size[1]},3"]
    args += ["--classifier-activation", "none"] if include_top else ["--no-include-top"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    assert module.alpha == alpha and module == translation.module
    assert_same_variables(variables, translation.variables)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["weights"] == "imagenet" and config["preprocessing"] == "tf"
    assert config["options"]["alpha"] == alpha


def test_imagenet_refuses_widths_keras_has_no_weights_for(tmp_path, serve_weights, capsys):
    code, out, err = run_cli(["translate", "mobilenetv2", "-o", tmp_path / "out",
                              "--set", "alpha=0.6"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "alpha must be one of" in err and "Traceback" not in err
    assert serve_weights["_asked"] == []  # refused before any download
    assert not (tmp_path / "out").exists()
    # Without imagenet weights any width is a model.
    code, out, err = run_cli(["translate", "mobilenetv2", "-o", tmp_path / "out", "--set", "alpha=0.6",
                              "--weights", "none", "--no-include-top", "--input-shape", "64,64,3"], capsys)
    assert code == 0, err
    assert kjax_core.load(tmp_path / "out")[0].alpha == 0.6
