"""EfficientNetV2 family: efficientnetv2b0 .. b3, s, m, l, as ``keras.applications.efficientnet_v2``.

Registration only; the Flax module lives in ``kjax_efficientnetv2.model`` and is imported on use.
The models preprocess inside their graph (``include_preprocessing``: B0-B3 Rescaling 1/255 and a
constant ImageNet Normalization, S/M/L Rescaling to [-1, 1]), so they take raw [0, 255] RGB images
("none": ``efficientnet_v2.preprocess_input`` is the identity).
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top, default input size)
VARIANTS = tuple(
    (name, constructor, parameters, {"input_size": (size, size, 3)})
    for name, constructor, parameters, size in (
        ("efficientnetv2b0", "EfficientNetV2B0", 7_200_312, 224),
        ("efficientnetv2b1", "EfficientNetV2B1", 8_212_124, 240),
        ("efficientnetv2b2", "EfficientNetV2B2", 10_178_374, 260),
        ("efficientnetv2b3", "EfficientNetV2B3", 14_467_622, 300),
        ("efficientnetv2s", "EfficientNetV2S", 21_612_360, 384),
        ("efficientnetv2m", "EfficientNetV2M", 54_431_388, 480),
        ("efficientnetv2l", "EfficientNetV2L", 119_027_848, 480),
    )
)


@hookimpl
def kjax_register_models(register):
    register_family(register, "efficientnetv2", VARIANTS,
                    keras_module="keras.applications.efficientnet_v2",
                    flax_module="kjax_efficientnetv2.model", preprocessing="none",
                    options={"include_preprocessing": True})
