"""VGG: vgg16 and vgg19, as ``keras.applications.vgg16`` / ``vgg19``.

Registration only; the Flax module lives in ``kjax_vgg.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("vgg16", "VGG16", 138_357_544),
    ("vgg19", "VGG19", 143_667_240),
)


@hookimpl
def kjax_register_models(register):
    # vgg16/vgg19.preprocess_input: RGB -> BGR, ImageNet mean subtracted, no scaling
    register_family(register, "vgg", VARIANTS, keras_module="keras.applications",
                    flax_module="kjax_vgg.model", preprocessing="caffe")
