"""VGG (vgg16, vgg19): what the family does beyond the contract every model keeps
(tests/test_zoo.py). With top, the head flattens the last feature map: the default size (7x7
there) checks the flattening order against Keras'."""

from family_suite import FamilySuite


class TestVGG(FamilySuite):
    representative = "vgg16"
    variants = ("vgg16", "vgg19")
    feature_shapes = ((2, 2, 1, 512), (2, 1, 3, 512))
    channels = 512
    imagenet_files = {True: "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                      False: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    keras_preprocessing = "keras.applications.vgg16"
    # No BatchNorm and no dropout: training mode computes what inference does (the contract's).
    test_train_mode_matches_keras_training = None
