"""InceptionResNetV2, as ``keras.applications.inception_resnet_v2``.

Registration only; the Flax module lives in ``kjax_inceptionresnetv2.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

@hookimpl
def kjax_register_models(register):
    register_family(
        register, "inceptionresnetv2",
        [("inceptionresnetv2", "InceptionResNetV2", 55_873_736)],
        keras_module="keras.applications.inception_resnet_v2",
        flax_module="kjax_inceptionresnetv2.model", input_size=(299, 299, 3), min_input_size=75,
        preprocessing="tf",  # inception_resnet_v2.preprocess_input: scale to [-1, 1]
        # 406 of its 448 weight layers are conv2d_bn units Keras names automatically (a
        # per-process counter) and lists by graph depth; the twin calls them in the source's
        # creation order.
        matcher="creation_order",
    )
