"""ResNet v1 parity against keras.applications on randomised, calibrated weights."""

import numpy as np
import pytest

from kjax_core import get_spec
from kjax_core.parity import assert_parity, reference_model

SMALL_SIZES = [(67, 45), (33, 97)]  # odd, non-square; 33 is just above Keras' minimum of 32


def test_resnet50_logits_default_size():
    (report,) = assert_parity("resnet50", classifier_activation=None)
    assert report.output_shape == (2, 1000)


def test_resnet50_softmax_default_size():
    (report,) = assert_parity("resnet50", input_shape=(97, 83, 3))
    assert report.output_shape == (2, 1000)


def test_resnet50_feature_maps_small_sizes():
    reports = assert_parity("resnet50", include_top=False, sizes=SMALL_SIZES)
    assert [r.output_shape for r in reports] == [(2, 3, 2, 2048), (2, 2, 4, 2048)]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_resnet50_pooling(pooling):
    (report,) = assert_parity("resnet50", include_top=False, pooling=pooling, sizes=[(75, 61)])
    assert report.output_shape == (2, 2048)


@pytest.mark.parametrize("name", ["resnet101", "resnet152"])
def test_deeper_resnets(name):
    assert_parity(name, input_shape=(97, 83, 3), classifier_activation=None, classes=17)
    assert_parity(name, include_top=False, pooling="max", sizes=[(71, 53)])


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152"])
def test_parameter_count_and_every_leaf(name):
    """The spec's parameter count is Keras' count_params(), and the Flax tree holds exactly as many
    numbers as the Keras model (every weight used once, every leaf filled once)."""
    translation, keras_model = reference_model(name, input_shape=(64, 64, 3), prepare=False)
    assert keras_model.count_params() == get_spec(name).parameters
    flax_count = sum(np.size(v) for tree in translation.variables.values()
                     for v in _leaves(tree))
    assert flax_count == keras_model.count_params()


def _leaves(tree):
    from kjax_core.translator import flatten

    return [v for _, v in flatten(tree)]
