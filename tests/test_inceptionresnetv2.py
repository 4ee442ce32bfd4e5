"""InceptionResNetV2: what the family does beyond the contract every model keeps
(tests/test_zoo.py). 406 of its 448 weight layers are named automatically by Keras and paired by
creation order (the spec's matcher), which the imagenet test checks on a model built after others
in the same process (Keras' counters offset)."""

from family_suite import FamilySuite


class TestInceptionResNetV2(FamilySuite):
    representative = "inceptionresnetv2"
    variants = ("inceptionresnetv2",)
    small_sizes = ((75, 91), (139, 107))  # 75 is Keras' minimum
    feature_shapes = ((2, 1, 1, 1536), (2, 3, 2, 1536))
    pooling_size = (123, 107)
    channels = 1536
    imagenet_files = {
        True: "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5",
        False: "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }
    keras_preprocessing = "keras.applications.inception_resnet_v2"
    test_logits_default_size_of_every_variant = None  # one variant
    # Its BatchNorms carry Keras' per-process auto-names but conv_7b_bn.
    train_batch_norm = ("conv_7b_bn", ("conv_7b_bn",))
    train_size = (75, 83)
