"""NASNet-A (nasnetmobile, nasnetlarge): what the family does beyond the contract every model keeps
(tests/test_zoo.py). Keras builds another graph for unknown sizes (see kjax_nasnet.model), so each
size is compared with Keras built for it."""

from family_suite import FamilySuite


class TestNASNet(FamilySuite):
    representative = "nasnetmobile"
    variants = ("nasnetmobile", "nasnetlarge")
    keras_any_size = False
    pooling_size = (75, 61)
    channels = 1056
    train_batch_norm = ("separable_conv_1_bn_normal_left1_0",
                        ("separable_conv_1_bn_normal_left1_0",))
    imagenet_files = {True: "nasnet_mobile.h5", False: "nasnet_mobile_no_top.h5"}
    keras_preprocessing = "keras.applications.nasnet"
