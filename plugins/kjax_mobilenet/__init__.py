"""MobileNet (v1), as ``keras.applications.mobilenet``.

Registration only; the Flax module lives in ``kjax_mobilenet.model`` and is imported on use.
Keras' options keep their names: ``alpha`` (width), ``depth_multiplier``, ``dropout``. Keras ships
imagenet weights for alpha 0.25, 0.5, 0.75 and 1.0 at 128, 160, 192 and 224 pixels, and picks the
file from the input shape (a non-square or other size gets the 224 weights, with Keras' warning):
``kjax translate mobilenet --set alpha=0.5 --input-shape 160,160,3`` asks for
``mobilenet_5_0_160_tf.h5``.
"""

from kjax_core import hookimpl, register_family

@hookimpl
def kjax_register_models(register):
    register_family(
        register, "mobilenet", [("mobilenet", "MobileNet", 4_253_864)],  # count at alpha 1.0
        keras_module="keras.applications.mobilenet", flax_module="kjax_mobilenet.model",
        preprocessing="tf",  # mobilenet.preprocess_input: scale to [-1, 1]
        options={"alpha": 1.0, "depth_multiplier": 1, "dropout": 1e-3},
        weights_notes={"imagenet": "alpha 0.25, 0.5, 0.75 and 1.0 with depth_multiplier 1, at "
                                   "128, 160, 192 or 224 pixels (the 224 file for other sizes)"},
    )
