"""ResNetV2: what the family does beyond the contract every model keeps (tests/test_zoo.py): the
default size, pooling, its layout (stride in the last block, zero-padded stem pool), the imagenet
path offline and Keras' preprocessing."""

import jax
import numpy as np

import kjax_core
from kjax_core.parity import compare, reference_model, sample_images

from family_suite import FamilySuite
from helpers import show

class TestResNetV2(FamilySuite):
    representative = "resnet50v2"
    variants = ("resnet50v2", "resnet101v2", "resnet152v2")
    feature_shapes = ((2, 3, 2, 2048), (2, 2, 4, 2048))
    channels = 2048
    train_batch_norm = ("conv3_block2_preact_bn", ("conv3_block2", "preact_bn"))
    imagenet_files = {True: "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5",
                      False: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    keras_preprocessing = "keras.applications.resnet_v2"


def test_stride_sits_in_the_last_block_of_each_stack():
    """ResNetV2's layout, read off the translated tree: conv{2,3,4}_blockN (the last) carry the
    stride, block1 has the 1x1 conv shortcut, and the stem conv has a bias and no BatchNorm."""
    translation, _ = reference_model("resnet50v2", include_top=False, input_shape=(64, 64, 3),
                                     prepare=False)
    params = translation.variables["params"]
    assert set(params["conv1_conv"]) == {"kernel", "bias"} and "conv1_bn" not in params
    assert "0_conv" in params["conv2_block1"] and "0_conv" not in params["conv2_block3"]
    assert "bias" not in params["conv2_block1"]["2_conv"] and "post_bn" in params
    out = jax.eval_shape(translation.module.apply, translation.variables,
                         jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    assert out.shape == (1, 2, 2, 2048)  # 64 / 32: conv5 keeps its size


def test_stem_pool_pads_with_zeros():
    """pool1 pads the stem conv output (no BatchNorm, no relu, so partly negative) with zeros. On
    calibrated weights conv2_block1's preact relu zeroes the cells where zeros and -inf padding
    differ (measured: identical outputs), so the default parity cannot see a -inf padding; shifting
    that BatchNorm's beta up lets them through (-inf padding then measured 5e-2 here)."""
    translation, keras_model = reference_model("resnet50v2", include_top=False,
                                               input_shape=(None, None, 3), calibration_shape=(67, 45))
    layer = keras_model.get_layer("conv2_block1_preact_bn")
    gamma, beta, mean, var = layer.get_weights()
    layer.set_weights([gamma, beta + 4.0, mean, var])
    translation = kjax_core.translate("resnet50v2", None, keras_model=keras_model, include_top=False)
    (report,) = show([compare(translation, keras_model, sample_images((2, 67, 45, 3), 7))])
    assert report.ok, report.problems
