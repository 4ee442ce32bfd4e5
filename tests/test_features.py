"""Feature pyramids (``features_only=True``): the levels found from tapped shapes, the Keras
layers found from Keras' graph, the option's rules, and the path through translate/save/load.
Every registered model's pyramid is held to Keras in the contract (test_zoo)."""

import jax
import numpy as np
import pytest
import kjax_core
from kjax_core.errors import OptionError
from kjax_core.nn.features import feature_pyramid
from kjax_core.parity import compare, keras_feature_layers, reference_model, sample_images

from helpers import run_cli


def maps(*sizes):
    return [np.zeros((1, h, w, 1)) for h, w in sizes]


def levels(image, *sizes):
    return {k: v.shape[1:3] for k, v in feature_pyramid(image, maps(*sizes)).items()}


def test_levels_from_shapes():
    # ResNet50 at 224: the stem, then one map per stage; the last map of a level is kept.
    assert levels((224, 224), (112, 112), (56, 56), (56, 56), (28, 28), (14, 14), (7, 7)) == {
        "P1": (112, 112), "P2": (56, 56), "P3": (28, 28), "P4": (14, 14), "P5": (7, 7)}
    # InceptionV3 at its 75x75 minimum: valid stride-1 convolutions (37 -> 35, 17 -> 15) stay
    # on their level, a valid 3x3 stride 2 on 3x3 (-> 1) is one level.
    assert levels((75, 75), (37, 37), (35, 35), (15, 15), (7, 7), (3, 3), (1, 1)) == {
        "P1": (35, 35), "P2": (15, 15), "P3": (7, 7), "P4": (3, 3), "P5": (1, 1)}
    # 'same' stride 2 on 3 -> 2 is a level too; VGG's first block (stride 1) is no level.
    assert levels((33, 33), (33, 33), (17, 17), (9, 9), (5, 5), (3, 3), (2, 2)) == {
        "P1": (17, 17), "P2": (9, 9), "P3": (5, 5), "P4": (3, 3), "P5": (2, 2)}
    # ConvNeXt's stride-4 stem starts at P2; a side already at 1 does not hide the other's halving.
    assert levels((33, 97), (8, 24), (4, 12), (2, 6), (1, 3)) == {
        "P2": (8, 24), "P3": (4, 12), "P4": (2, 6), "P5": (1, 3)}


def test_taps_out_of_order_or_missing_fail():
    with pytest.raises(ValueError, match="tapped after"):
        feature_pyramid((64, 64), maps((16, 16), (32, 32)))
    with pytest.raises(ValueError, match="no feature maps"):
        feature_pyramid((64, 64), [])


def test_option_rules():
    with pytest.raises(OptionError, match="needs include_top=False and pooling=None"):
        kjax_core.create_model("resnet50", features_only=True)
    with pytest.raises(OptionError, match="needs include_top=False and pooling=None"):
        kjax_core.create_model("resnet50", include_top=False, pooling="avg", features_only=True)
    module = kjax_core.create_model("mobilenetv3small", include_top=False, features_only=True)
    images = np.zeros((1, 64, 96, 3), np.float32)
    variables = module.init(jax.random.PRNGKey(0), images)
    pyramid = module.apply(variables, images)
    assert {k: v.shape[1:3] for k, v in pyramid.items()} == {
        "P1": (32, 48), "P2": (16, 24), "P3": (8, 12), "P4": (4, 6), "P5": (2, 3)}
    # The same variables as the model without top: features_only changes what is returned only.
    plain = kjax_core.create_model("mobilenetv3small", include_top=False)
    assert jax.tree.structure(plain.init(jax.random.PRNGKey(0), images)) == jax.tree.structure(variables)
    np.testing.assert_array_equal(plain.apply(variables, images), pyramid["P5"])


def test_keras_layers_found_from_the_graph():
    """The layers the detection and segmentation literature takes from these Keras models."""
    from kjax_core.conversion.keras_model import build_keras_model, placeholder_initializers

    expected = {
        "resnet50": ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                     "conv5_block3_out"],
        # DeepLabV3+ and SSDLite read block_13_expand_relu (stride 16) from MobileNetV2.
        "mobilenetv2": ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                        "block_13_expand_relu", "out_relu"],
    }
    for name, layers in expected.items():
        spec = kjax_core.get_spec(name)
        with placeholder_initializers():
            model = build_keras_model(spec, {"include_top": False}, None, (96, 96, 3)).model
        assert list(keras_feature_layers(model).values()) == layers
        assert list(keras_feature_layers(model)) == ["P1", "P2", "P3", "P4", "P5"]


def test_a_map_tapped_at_the_wrong_layer_fails(monkeypatch):
    """ResNetV2 offers each block's output; offering instead the relu of a block's input (what
    the block's pre-activation computes first) at the stride-2 blocks puts P2..P4 one layer off
    Keras'. The judge, level by level, must fail it."""
    from flax import linen as nn

    from kjax_resnetv2 import model

    original = model.PreactBottleneck.__call__

    def tapping_too_late(self, x, train=False):
        if self.stride > 1:
            self.tap(nn.relu(x))
        return original(self, x, train)

    monkeypatch.setattr(model.PreactBottleneck, "__call__", tapping_too_late)
    translation, keras_model = reference_model("resnet50v2", input_shape=(45, 33, 3),
                                               include_top=False, features_only=True)
    report = compare(translation, keras_model, sample_images((2, 45, 33, 3), 7), float32=False)
    assert not report.matches and report.error64 > 1e-3, report.summary()


def test_translate_save_load_keep_features(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["translate", "mobilenet", "--weights", "none", "--no-include-top",
                            "--set", "alpha=0.25", "--set", "features_only=true", "-o", out], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(out)
    pyramid = module.apply(variables, np.zeros((2, 64, 64, 3), np.float32))
    assert sorted(pyramid) == ["P1", "P2", "P3", "P4", "P5"] and pyramid["P5"].shape == (2, 2, 2, 256)

    code, _, err = run_cli(["translate", "mobilenet", "--weights", "none", "--set",
                            "features_only=true", "-o", tmp_path / "refused"], capsys)
    assert code == 2 and err.count("\n") == 1 and "needs include_top=False" in err
    assert not (tmp_path / "refused").exists()
