"""InceptionV3 family: inceptionv3, as ``keras.applications.inception_v3``.

Registration only; the Flax module lives in ``kjax_inceptionv3.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

@hookimpl
def kjax_register_models(register):
    register_family(
        register, "inceptionv3", [("inceptionv3", "InceptionV3", 23_851_784)],
        keras_module="keras.applications.inception_v3", flax_module="kjax_inceptionv3.model",
        input_size=(299, 299, 3), min_input_size=75,
        preprocessing="tf",  # inception_v3.preprocess_input: scale to [-1, 1]
        # Its conv2d_bn layers are named automatically and Keras lists them by graph depth (the
        # deepest branch of a block first); the Flax twin calls them in the order the Keras
        # source creates them.
        matcher="creation_order",
    )
