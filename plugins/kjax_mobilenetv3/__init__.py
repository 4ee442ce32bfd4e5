"""MobileNetV3: mobilenetv3small and mobilenetv3large, as ``keras.applications.mobilenet_v3``.

Registration only; the Flax module lives in ``kjax_mobilenetv3.model`` and is imported on use.
Keras' options keep their names: ``alpha``, ``minimalistic``, ``dropout_rate``,
``include_preprocessing`` (the model rescales [0, 255] to [-1, 1] itself; Keras'
``preprocess_input`` is the identity). Keras ships imagenet weights for alpha 0.75 and 1.0, and
for the minimalistic variant at alpha 1.0, each with and without top (224 pixels).
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("mobilenetv3small", "MobileNetV3Small", 2_554_968),
    ("mobilenetv3large", "MobileNetV3Large", 5_507_432),
)


@hookimpl
def kjax_register_models(register):
    register_family(
        register, "mobilenetv3", VARIANTS, keras_module="keras.applications",
        flax_module="kjax_mobilenetv3.model",
        preprocessing="none",  # in the graph (include_preprocessing)
        options={"alpha": 1.0, "minimalistic": False, "dropout_rate": 0.2,
                 "include_preprocessing": True},
        weights_notes={"imagenet": "alpha 0.75 and 1.0, and minimalistic at alpha 1.0 "
                                   "(trained at 224 pixels)"},
    )
