"""ResNetV2 family: resnet50v2, resnet101v2, resnet152v2, as ``keras.applications.resnet_v2``.

Registration only; the Flax module lives in ``kjax_resnetv2.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("resnet50v2", "ResNet50V2", 25_613_800),
    ("resnet101v2", "ResNet101V2", 44_675_560),
    ("resnet152v2", "ResNet152V2", 60_380_648),
)


@hookimpl
def kjax_register_models(register):
    # resnet_v2.preprocess_input: mode "tf", scale to [-1, 1]
    register_family(register, "resnetv2", VARIANTS, keras_module="keras.applications.resnet_v2",
                    flax_module="kjax_resnetv2.model", preprocessing="tf")
