"""NASNet-A: nasnetmobile and nasnetlarge, as ``keras.applications.nasnet``.

Registration only; the Flax module lives in ``kjax_nasnet.model`` and is imported on use.
"""

from kjax_core import ModelSpec, hookimpl

# (registry name, Keras constructor, default size, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("nasnetmobile", "NASNetMobile", 224, 5_326_716),
    ("nasnetlarge", "NASNetLarge", 331, 88_949_818),
)


@hookimpl
def kjax_register_models(register):
    for name, keras_name, size, parameters in VARIANTS:
        register(
            ModelSpec(
                name=name,
                family="nasnet",
                keras_constructor=f"keras.applications.nasnet:{keras_name}",
                flax_module=f"kjax_nasnet.model:{keras_name}",
                input_size=(size, size, 3),
                min_input_size=32,
                parameters=parameters,
                preprocessing="tf",  # nasnet.preprocess_input: scale to [-1, 1]
            )
        )
