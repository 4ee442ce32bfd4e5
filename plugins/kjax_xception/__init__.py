"""Xception, as ``keras.applications.xception``.

Registration only; the Flax module lives in ``kjax_xception.model`` and is imported on use.
"""

from kjax_core import ModelSpec, hookimpl


@hookimpl
def kjax_register_models(register):
    register(
        ModelSpec(
            name="xception",
            family="xception",
            keras_constructor="keras.applications.xception:Xception",
            flax_module="kjax_xception.model:Xception",
            input_size=(299, 299, 3),
            min_input_size=71,
            parameters=22_910_480,
            preprocessing="tf",  # xception.preprocess_input: scale to [-1, 1]
        )
    )
