"""MobileNetV2 family: mobilenetv2, as ``keras.applications.mobilenet_v2``.

Registration only; the Flax module lives in ``kjax_mobilenetv2.model`` and is imported on use.
The width multiplier is Keras' own option: ``--set alpha=0.35`` on the command line,
``create_model("mobilenetv2", alpha=0.35)`` in Python. Keras ships imagenet weights for alpha in
0.35, 0.5, 0.75, 1.0, 1.3 and 1.4 (and refuses other widths with ``weights="imagenet"``).
"""

from kjax_core import hookimpl, register_family

@hookimpl
def kjax_register_models(register):
    register_family(
        register, "mobilenetv2", [("mobilenetv2", "MobileNetV2", 3_538_984)],  # at alpha 1.0
        keras_module="keras.applications.mobilenet_v2", flax_module="kjax_mobilenetv2.model",
        preprocessing="tf", options={"alpha": 1.0},
        weights_notes={"imagenet": "alpha 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4, at 96, 128, 160, "
                                   "192 or 224 pixels (the 224 file for other sizes)"},
    )
