"""EfficientNetV2 family: efficientnetv2b0 .. b3, s, m, l, as ``keras.applications.efficientnet_v2``.

Registration only; the Flax module lives in ``kjax_efficientnetv2.model`` and is imported on use.
The models preprocess inside their graph (``include_preprocessing``: B0-B3 Rescaling 1/255 and a
constant ImageNet Normalization, S/M/L Rescaling to [-1, 1]), so they take raw [0, 255] RGB images
("none": ``efficientnet_v2.preprocess_input`` is the identity).
"""

from kjax_core import ModelSpec, hookimpl

# (registry name, Keras constructor, default input size, Keras count_params() with top)
VARIANTS = (
    ("efficientnetv2b0", "EfficientNetV2B0", 224, 7_200_312),
    ("efficientnetv2b1", "EfficientNetV2B1", 240, 8_212_124),
    ("efficientnetv2b2", "EfficientNetV2B2", 260, 10_178_374),
    ("efficientnetv2b3", "EfficientNetV2B3", 300, 14_467_622),
    ("efficientnetv2s", "EfficientNetV2S", 384, 21_612_360),
    ("efficientnetv2m", "EfficientNetV2M", 480, 54_431_388),
    ("efficientnetv2l", "EfficientNetV2L", 480, 119_027_848),
)


@hookimpl
def kjax_register_models(register):
    for name, keras_name, size, parameters in VARIANTS:
        register(
            ModelSpec(
                name=name,
                family="efficientnetv2",
                keras_constructor=f"keras.applications.efficientnet_v2:{keras_name}",
                flax_module=f"kjax_efficientnetv2.model:{keras_name}",
                input_size=(size, size, 3),
                min_input_size=32,
                parameters=parameters,
                preprocessing="none",
                options={"include_preprocessing": True},
            )
        )
