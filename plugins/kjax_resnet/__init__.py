"""ResNet (v1) family: resnet50, resnet101, resnet152, as ``keras.applications.resnet``.

Registration only; the Flax module lives in ``kjax_resnet.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("resnet50", "ResNet50", 25_636_712),
    ("resnet101", "ResNet101", 44_707_176),
    ("resnet152", "ResNet152", 60_419_944),
)


@hookimpl
def kjax_register_models(register):
    register_family(register, "resnet", VARIANTS, keras_module="keras.applications.resnet",
                    flax_module="kjax_resnet.model", preprocessing="caffe")
