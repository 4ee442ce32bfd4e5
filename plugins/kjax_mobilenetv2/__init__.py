"""MobileNetV2 family: mobilenetv2, as ``keras.applications.mobilenet_v2``.

Registration only; the Flax module lives in ``kjax_mobilenetv2.model`` and is imported on use.
The width multiplier is Keras' own option: ``--set alpha=0.35`` on the command line,
``create_model("mobilenetv2", alpha=0.35)`` in Python. Keras ships imagenet weights for alpha in
0.35, 0.5, 0.75, 1.0, 1.3 and 1.4 (and refuses other widths with ``weights="imagenet"``).
"""

from kjax_core import ModelSpec, hookimpl


@hookimpl
def kjax_register_models(register):
    register(
        ModelSpec(
            name="mobilenetv2",
            family="mobilenetv2",
            keras_constructor="keras.applications.mobilenet_v2:MobileNetV2",
            flax_module="kjax_mobilenetv2.model:MobileNetV2",
            input_size=(224, 224, 3),
            min_input_size=32,
            parameters=3_538_984,  # alpha 1.0
            preprocessing="tf",
            options={"alpha": 1.0},
            weights_notes={"imagenet": "alpha 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4, at 96, 128, 160, "
                                       "192 or 224 pixels (the 224 file for other sizes)"},
        )
    )
