"""Xception: what the family does beyond the contract every model keeps (tests/test_zoo.py). Its
four strided shortcut convolutions and their BatchNorms are auto-named by Keras and matched in
order (see kjax_xception.model)."""

from family_suite import FamilySuite


class TestXception(FamilySuite):
    representative = "xception"
    variants = ("xception",)
    small_sizes = ((71, 75), (97, 83))  # odd, non-square; 71 is Keras' minimum
    feature_shapes = ((2, 3, 3, 2048), (2, 3, 3, 2048))
    pooling_size = (79, 73)
    channels = 2048
    train_batch_norm = ("block4_sepconv1_bn", ("block4_sepconv1_bn",))
    train_size = (75, 79)
    imagenet_files = {True: "xception_weights_tf_dim_ordering_tf_kernels.h5",
                      False: "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"}
    keras_preprocessing = "keras.applications.xception"
    test_logits_default_size_of_every_variant = None  # one variant
