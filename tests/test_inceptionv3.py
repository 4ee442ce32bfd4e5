"""InceptionV3 beyond the contract every model keeps (tests/test_zoo.py).

Its conv2d_bn layers are named automatically by Keras, so they are paired by creation order (the
core's "creation_order" matcher, named by its spec); the tests below also show that a pairing error
between branches of the same shape could not pass.
"""

import copy

import numpy as np
import pytest

from kjax_core.parity import compare, reference_model, sample_images
from kjax_core.conversion.keras_layers import iter_keras_layers
from kjax_core.conversion.matching import creation_index

from family_suite import FamilySuite

# Odd, non-square. 139x107 ends at 3x2 after mixed8 (so the 1x3 / 3x1 convolutions of mixed9 and
# mixed10 see neighbours); 75 is Keras' minimum and 75x91 ends at 1x1; 123x107 ends at 2x2.
SMALL_SIZES = [(139, 107), (75, 91)]


class TestInceptionV3(FamilySuite):
    representative = "inceptionv3"
    variants = ("inceptionv3",)
    small_sizes = SMALL_SIZES
    feature_shapes = ((2, 3, 2, 2048), (2, 1, 1, 2048))
    pooling_size = (123, 107)
    channels = 2048
    imagenet_files = {True: "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                      False: "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    keras_preprocessing = "keras.applications.inception_v3"
    test_logits_default_size_of_every_variant = None  # one variant
    # Its BatchNorms carry Keras' per-process auto-names; the training pass is the contract's.
    test_train_mode_matches_keras_training = None


def test_batch_norm_without_scale():
    """conv2d_bn: Conv2D without bias, BatchNormalization(scale=False): no gamma anywhere."""
    translation, _ = reference_model("inceptionv3", include_top=False, input_shape=(75, 75, 3),
                                     prepare=False)
    unit = translation.variables["params"]["mixed0"]["branch5x5_2"]
    assert set(unit["conv"]) == {"kernel"} and set(unit["bn"]) == {"bias"}
    assert unit["conv"]["kernel"].shape == (5, 5, 48, 64)


def test_keras_lists_layers_by_depth_so_matching_uses_creation_order():
    """Why the spec asks for the creation-order matcher: Keras lists the layers of a functional
    model by graph depth (mixed0's deepest branch, branch3x3dbl, first), not in the order the source
    creates them, which the Flax twin follows. The translation still pairs each Keras layer with its
    own unit, with the counters offset (conv2d_7 .. conv2d_100: numeric order, not text order)."""
    import keras

    # Offset the per-process name counters, whatever ran before.
    for _ in range(7):
        keras.layers.Conv2D(1, 1)
    translation, keras_model = reference_model("inceptionv3", include_top=False,
                                               input_shape=(75, 75, 3), prepare=False)
    convs = [layer for layer in iter_keras_layers(keras_model) if type(layer).__name__ == "Conv2D"]
    suffixes = [creation_index(layer.name, "Conv2D")[1] for layer in convs]
    assert suffixes != sorted(suffixes)
    first = min(suffixes)
    by_creation = {s - first: layer for s, layer in zip(suffixes, convs)}
    params = translation.variables["params"]
    # The 6th conv2d_bn created is mixed0's branch1x1; the 9th its branch3x3dbl_1, of equal shape.
    np.testing.assert_array_equal(params["mixed0"]["branch1x1"]["conv"]["kernel"],
                                  by_creation[5].kernel.numpy())
    np.testing.assert_array_equal(params["mixed0"]["branch3x3dbl_1"]["conv"]["kernel"],
                                  by_creation[8].kernel.numpy())
    np.testing.assert_array_equal(params["mixed10"]["branch_pool"]["conv"]["kernel"],
                                  by_creation[93].kernel.numpy())


@pytest.fixture(scope="module")
def reference_139x107():
    translation, keras_model = reference_model(
        "inceptionv3", include_top=False, input_shape=(None, None, 3), calibration_shape=(139, 107))
    images = sample_images((2, 139, 107, 3), 7)
    assert compare(translation, keras_model, images, float32=False).ok
    return translation, keras_model, images


@pytest.mark.parametrize(
    "block,a,b",
    [
        ("mixed0", "branch1x1", "branch3x3dbl_1"),  # both 1x1 192 -> 64
        ("mixed4", "branch7x7_2", "branch7x7dbl_3"),  # both 1x7 128 -> 128
        ("mixed9", "branch3x3_2a", "branch3x3dbl_3a"),  # both 1x3 384 -> 384
    ],
)
def test_swapped_branches_of_equal_shape_fail(reference_139x107, block, a, b):
    """Units of equal shape that a wrong order could swap silently: the comparison catches it."""
    translation, keras_model, images = reference_139x107
    swapped = copy.deepcopy(translation.variables)
    for tree in swapped.values():
        tree[block][a], tree[block][b] = tree[block][b], tree[block][a]
    broken = copy.copy(translation)
    broken.variables = swapped
    report = compare(broken, keras_model, images, float32=False)
    print(f"{block} {a} <-> {b}: float64 error {report.error64:.2e}")
    assert report.error64 > 1e-3
