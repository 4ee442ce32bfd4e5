"""EfficientNet family: efficientnetb0 .. efficientnetb7, as ``keras.applications.efficientnet``.

Registration only; the Flax module lives in ``kjax_efficientnet.model`` and is imported on use.
The models preprocess inside their graph (Rescaling 1/255, Normalization), so they take raw
[0, 255] RGB images ("none": ``efficientnet.preprocess_input`` is the identity). Keras adds one more
Rescaling (by 1/sqrt(ImageNet std)) only when built with ``weights="imagenet"``; the Flax twin's
``imagenet_rescaling`` follows through ``weights_options``.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top, default input size)
VARIANTS = tuple(
    (name, constructor, parameters, {"input_size": (size, size, 3)})
    for name, constructor, parameters, size in (
        ("efficientnetb0", "EfficientNetB0", 5_330_571, 224),
        ("efficientnetb1", "EfficientNetB1", 7_856_239, 240),
        ("efficientnetb2", "EfficientNetB2", 9_177_569, 260),
        ("efficientnetb3", "EfficientNetB3", 12_320_535, 300),
        ("efficientnetb4", "EfficientNetB4", 19_466_823, 380),
        ("efficientnetb5", "EfficientNetB5", 30_562_527, 456),
        ("efficientnetb6", "EfficientNetB6", 43_265_143, 528),
        ("efficientnetb7", "EfficientNetB7", 66_658_687, 600),
    )
)


@hookimpl
def kjax_register_models(register):
    register_family(register, "efficientnet", VARIANTS,
                    keras_module="keras.applications.efficientnet",
                    flax_module="kjax_efficientnet.model", preprocessing="none",
                    weights_options={"imagenet": {"imagenet_rescaling": True}})
