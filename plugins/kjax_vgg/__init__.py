"""VGG: vgg16 and vgg19, as ``keras.applications.vgg16`` / ``vgg19``.

Registration only; the Flax module lives in ``kjax_vgg.model`` and is imported on use.
"""

from kjax_core import ModelSpec, hookimpl

# (registry name, Keras module, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("vgg16", "vgg16", "VGG16", 138_357_544),
    ("vgg19", "vgg19", "VGG19", 143_667_240),
)


@hookimpl
def kjax_register_models(register):
    for name, module, keras_name, parameters in VARIANTS:
        register(
            ModelSpec(
                name=name,
                family="vgg",
                keras_constructor=f"keras.applications.{module}:{keras_name}",
                flax_module=f"kjax_vgg.model:{keras_name}",
                parameters=parameters,
                # vgg16/vgg19.preprocess_input: RGB -> BGR, ImageNet mean subtracted, no scaling
                preprocessing="caffe",
            )
        )
