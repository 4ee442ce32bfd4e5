"""EfficientNet family: efficientnetb0 .. efficientnetb7, as ``keras.applications.efficientnet``.

Registration only; the Flax module lives in ``kjax_efficientnet.model`` and is imported on use.
The models preprocess inside their graph (Rescaling 1/255, Normalization), so they take raw
[0, 255] RGB images ("none": ``efficientnet.preprocess_input`` is the identity). Keras adds one more
Rescaling (by 1/sqrt(ImageNet std)) only when built with ``weights="imagenet"``; the Flax twin's
``imagenet_rescaling`` follows through ``weights_options``.
"""

from kjax_core import ModelSpec, hookimpl

# (registry name, Keras constructor, default input size, Keras count_params() with top)
VARIANTS = (
    ("efficientnetb0", "EfficientNetB0", 224, 5_330_571),
    ("efficientnetb1", "EfficientNetB1", 240, 7_856_239),
    ("efficientnetb2", "EfficientNetB2", 260, 9_177_569),
    ("efficientnetb3", "EfficientNetB3", 300, 12_320_535),
    ("efficientnetb4", "EfficientNetB4", 380, 19_466_823),
    ("efficientnetb5", "EfficientNetB5", 456, 30_562_527),
    ("efficientnetb6", "EfficientNetB6", 528, 43_265_143),
    ("efficientnetb7", "EfficientNetB7", 600, 66_658_687),
)


@hookimpl
def kjax_register_models(register):
    for name, keras_name, size, parameters in VARIANTS:
        register(
            ModelSpec(
                name=name,
                family="efficientnet",
                keras_constructor=f"keras.applications.efficientnet:{keras_name}",
                flax_module=f"kjax_efficientnet.model:{keras_name}",
                input_size=(size, size, 3),
                min_input_size=32,
                parameters=parameters,
                preprocessing="none",
                weights_options={"imagenet": {"imagenet_rescaling": True}},
            )
        )
