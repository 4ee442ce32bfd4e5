"""DenseNet: what the family does beyond the contract every model keeps (tests/test_zoo.py): the
default size, pooling, parameter paths, the imagenet path offline and Keras' preprocessing."""

from kjax_core.parity import reference_model

from family_suite import FamilySuite

class TestDenseNet(FamilySuite):
    representative = "densenet121"
    variants = ("densenet121", "densenet169", "densenet201")
    # small_sizes: 67x45 reaches the transitions' 'valid' 2x2 pools at odd sizes (17x12 -> 8x6,
    # 4x3 -> 2x1), dropping a row or column as Keras does; 33x97 is just above Keras' minimum, 32.
    channels = 1024
    train_batch_norm = ("conv3_block2_1_bn", ("conv3_block2", "1_bn"))
    imagenet_files = {True: "densenet121_weights_tf_dim_ordering_tf_kernels.h5",
                      False: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    keras_preprocessing = "keras.applications.densenet"


def test_parameter_paths_are_keras_names():
    translation, _ = reference_model("densenet121", include_top=False, input_shape=(64, 64, 3),
                                     prepare=False)
    params = translation.variables["params"]
    assert params["conv2_block1"]["1_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert params["conv2_block6"]["2_conv"]["kernel"].shape == (3, 3, 128, 32)
    assert params["pool2"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert set(translation.variables["batch_stats"]["bn"]) == {"mean", "var"}
