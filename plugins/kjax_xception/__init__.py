"""Xception, as ``keras.applications.xception``.

Registration only; the Flax module lives in ``kjax_xception.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

@hookimpl
def kjax_register_models(register):
    # xception.preprocess_input: scale to [-1, 1]
    register_family(register, "xception", [("xception", "Xception", 22_910_480)],
                    keras_module="keras.applications.xception",
                    flax_module="kjax_xception.model", input_size=(299, 299, 3),
                    min_input_size=71, preprocessing="tf")
