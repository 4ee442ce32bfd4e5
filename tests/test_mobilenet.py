"""MobileNet (v1): what the family does beyond the contract every model keeps (tests/test_zoo.py):
its options (alpha, depth_multiplier), and the imagenet file Keras picks by alpha and input size."""

import pytest

import kjax_core
from kjax_core import OptionError, WeightsError
from kjax_core.parity import assert_parity

from family_suite import FamilySuite
from helpers import show


class TestMobileNet(FamilySuite):
    representative = "mobilenet"
    variants = ("mobilenet",)
    feature_shapes = ((2, 3, 2, 1024), (2, 2, 4, 1024))
    channels = 1024
    train_batch_norm = ("conv_pw_3_bn", ("conv_pw_3_bn",))
    imagenet_files = {True: "mobilenet_1_0_224_tf.h5", False: "mobilenet_1_0_224_tf_no_top.h5"}
    keras_preprocessing = "keras.applications.mobilenet"
    test_logits_default_size_of_every_variant = None  # one variant (widths: below)


def test_width_and_depth_multiplier():
    (report,) = show(assert_parity("mobilenet", alpha=0.5, depth_multiplier=2, include_top=False,
                                   sizes=[(35, 45)], float32=False))
    assert report.output_shape == (2, 1, 1, 512)


@pytest.mark.parametrize("alpha,size,include_top,fname", [
    (0.25, 128, True, "mobilenet_2_5_128_tf.h5"),
    (0.5, 160, False, "mobilenet_5_0_160_tf_no_top.h5"),
    (0.75, 192, True, "mobilenet_7_5_192_tf.h5"),
    # not one of Keras' sizes (allowed without top): its 224 weights, with Keras' warning
    (1.0, 161, False, "mobilenet_1_0_224_tf_no_top.h5"),
])
def test_imagenet_file_follows_alpha_and_size(serve_weights, alpha, size, include_top, fname):
    """Keras names the file by alpha and input size; kjax passes both, so Keras asks for it
    (offline here: the download fails after)."""
    with pytest.raises(WeightsError, match="could not download"):
        kjax_core.translate("mobilenet", "imagenet", alpha=alpha, include_top=include_top,
                            input_shape=(size, size, 3))
    assert serve_weights["_asked"] == [fname]


def test_keras_refusals_come_first_on_one_line():
    with pytest.raises(OptionError) as error:
        kjax_core.translate("mobilenet", "imagenet", alpha=0.3)
    assert "alpha can be one of" in str(error.value) and "\n" not in str(error.value)
