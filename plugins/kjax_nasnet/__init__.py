"""NASNet-A: nasnetmobile and nasnetlarge, as ``keras.applications.nasnet``.

Registration only; the Flax module lives in ``kjax_nasnet.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes, default size)
VARIANTS = (
    ("nasnetmobile", "NASNetMobile", 5_326_716, {"input_size": (224, 224, 3)}),
    ("nasnetlarge", "NASNetLarge", 88_949_818, {"input_size": (331, 331, 3)}),
)


@hookimpl
def kjax_register_models(register):
    # nasnet.preprocess_input: scale to [-1, 1]
    register_family(register, "nasnet", VARIANTS, keras_module="keras.applications.nasnet",
                    flax_module="kjax_nasnet.model", preprocessing="tf")
