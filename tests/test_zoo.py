"""The contract every registered model keeps, checked for each ``list_models()`` entry: a model a
plugin registers is covered here without a test of its own.

For each model, at small odd non-square sizes (size-parity bugs hide at 224; small keeps the zoo
cheap): Keras and kjax on the same randomised, calibrated weights, judged in float64 (within 1e-9;
kjax's float32 no worse than twice Keras' own float32 error), with top (logits, 1000 classes) and
without (as a feature pyramid: ``features_only``); the spec's parameter count is Keras' ``count_params()``; and the Flax tree holds exactly
the numbers of the Keras model (every weight used once, every leaf filled once) but those a layer
rule deliberately drops. What a family does beyond this (default size, pooling, train mode, the
imagenet path) is in its own test file.
"""

import numpy as np
import pytest

import kjax_core
from kjax_core.parity import compare, keras_feature_layers, reference_model, sample_images
from kjax_core.conversion.keras_layers import iter_keras_layers, short_name

from helpers import leaves

MODELS = kjax_core.list_models()

# Keras weights a layer rule discards because they never enter the computation:
# Normalization's sample count (what adapt() saw).
DISCARDED = {("Normalization", "count")}


def contract_sizes(spec):
    """(with top, without top) sizes: odd, non-square, just above the model's minimum."""
    low = spec.min_input_size | 1
    return (low + 2, low + 12), (low + 12, low)


def keras_count_at_default_size(spec, keras_model):
    """Keras' count_params() at the default input size, as ``spec.parameters`` states it. Most
    models count the same at any size; VGG's flattening head does not (fc1 grows with the size),
    so where the small model's count differs, Keras builds the model again at the default size."""
    count = keras_model.count_params()
    if count != spec.parameters:
        from kjax_core.conversion.keras_model import build_keras_model, placeholder_initializers

        with placeholder_initializers():
            count = build_keras_model(spec, spec.default_options(), None).model.count_params()
    return count


@pytest.mark.parametrize("name", MODELS)
def test_with_top_and_parameter_count(name):
    spec = kjax_core.get_spec(name)
    size, _ = contract_sizes(spec)
    translation, keras_model = reference_model(name, input_shape=(*size, spec.input_size[2]),
                                               classifier_activation=None)
    report = compare(translation, keras_model, sample_images((2, *size, spec.input_size[2]), 7))
    print(report.summary())
    assert report.ok, f"{report.summary()}: {'; '.join(report.problems)}"
    assert report.output_shape == (2, 1000)

    assert keras_count_at_default_size(spec, keras_model) == spec.parameters
    dropped = sum(int(np.prod(w.shape)) for layer in iter_keras_layers(keras_model)
                  for w in layer.weights
                  if (type(layer).__name__, short_name(w, layer.name)) in DISCARDED)
    flax_count = sum(np.size(v) for tree in translation.variables.values() for v in leaves(tree))
    assert flax_count == keras_model.count_params() - dropped


@pytest.mark.parametrize("name", MODELS)
def test_without_top_feature_pyramid(name):
    """Without top, as a backbone: ``features_only=True`` gives the maps P1..P5 of the Keras
    layers :func:`keras_feature_layers` finds in Keras' graph alone (float64 and float32), the
    last of them Keras' output without top and pooling."""
    spec = kjax_core.get_spec(name)
    _, size = contract_sizes(spec)
    translation, keras_model = reference_model(name, input_shape=(*size, spec.input_size[2]),
                                               include_top=False, features_only=True)
    report = compare(translation, keras_model, sample_images((2, *size, spec.input_size[2]), 7))
    print(report.summary(), keras_feature_layers(keras_model))
    assert report.ok, f"{report.summary()}: {'; '.join(report.problems)}"
    assert set(report.output_shape) >= {"P3", "P4", "P5"}
    assert all(len(shape) == 4 and shape[0] == 2 for shape in report.output_shape.values())
    assert keras_feature_layers(keras_model)["P5"] == keras_model.layers[-1].name
