"""MobileNetV3 (small, large): what the family does beyond the contract every model keeps
(tests/test_zoo.py): its options, in-graph preprocessing, and every imagenet file Keras ships.
Strided depthwise convolutions use Keras' correct-pad, which depends on the parity of the static
input size, so each size is compared with Keras built for it."""

import pytest

import kjax_core
from kjax_core import OptionError, WeightsError
from kjax_core.parity import assert_parity

from family_suite import FamilySuite
from helpers import show


class TestMobileNetV3(FamilySuite):
    representative = "mobilenetv3small"
    variants = ("mobilenetv3small", "mobilenetv3large")
    keras_any_size = False
    channels = 576
    train_batch_norm = ("expanded_conv_3_expand_bn", ("expanded_conv_3_expand_bn",))
    imagenet_files = {True: "weights_mobilenet_v3_small_224_1.0_float.h5",
                      False: "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"}
    keras_preprocessing = "keras.applications.mobilenet_v3"


@pytest.mark.parametrize("options", [
    dict(minimalistic=True),
    dict(alpha=0.75, include_preprocessing=False),
    dict(alpha=1.25, dropout_rate=0.0),  # alpha > 1 widens the head's last_point_ch too
])
def test_options(options):
    (report,) = show(assert_parity("mobilenetv3large", input_shape=(35, 45, 3),
                                   classifier_activation=None, float32=False, **options))
    assert report.output_shape == (2, 1000)


@pytest.mark.parametrize("alpha,minimalistic", [(1.0, False), (0.75, False), (1.0, True)])
@pytest.mark.parametrize("include_top", [True, False])
def test_every_imagenet_file(serve_weights, alpha, minimalistic, include_top):
    """The file Keras asks for each weight set it ships (offline: the download fails after)."""
    name = f"small{'_minimalistic' if minimalistic else ''}_224_{alpha}_float"
    fname = f"weights_mobilenet_v3_{name}{'' if include_top else '_no_top_v2'}.h5"
    with pytest.raises(WeightsError, match="could not download"):
        kjax_core.translate("mobilenetv3small", "imagenet", alpha=alpha,
                            minimalistic=minimalistic, include_top=include_top,
                            input_shape=(224, 224, 3))
    assert serve_weights["_asked"] == [fname]


def test_keras_refusals_come_first_on_one_line():
    with pytest.raises(OptionError) as error:
        kjax_core.translate("mobilenetv3large", "imagenet", alpha=0.75, minimalistic=True)
    assert "alpha can be one of" in str(error.value) and "\n" not in str(error.value)
