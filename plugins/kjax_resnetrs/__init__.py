"""ResNet-RS family: resnetrs50 .. resnetrs420, as ``tf_keras.applications.resnet_rs`` (Keras 3
dropped ResNet-RS; its reference and weights come from tf_keras).

Registration only; the Flax module lives in ``kjax_resnetrs.model`` and is imported on use.
"""

from kjax_core import ModelSpec, hookimpl

# (depth, Keras count_params() with top and 1000 classes, input sizes of the imagenet weight sets:
# tf_keras' DEPTH_TO_WEIGHT_VARIANTS; "imagenet" alone means the largest)
VARIANTS = (
    (50, 35_745_288, (160,)),
    (101, 63_724_296, (160, 192)),
    (152, 86_773_256, (192, 224, 256)),
    (200, 93_386_248, (256,)),
    (270, 130_104_520, (256,)),
    (350, 164_268_360, (256, 320)),
    (420, 192_262_216, (320,)),
)


@hookimpl
def kjax_register_models(register):
    for depth, parameters, sizes in VARIANTS:
        register(
            ModelSpec(
                name=f"resnetrs{depth}",
                family="resnetrs",
                keras_constructor=f"tf_keras.applications.resnet_rs:ResNetRS{depth}",
                flax_module=f"kjax_resnetrs.model:ResNetRS{depth}",
                parameters=parameters,
                # Rescaling and Normalization are in the graph; resnet_rs.preprocess_input is the
                # identity (with include_preprocessing=False the model expects what they produce).
                preprocessing="none",
                options={"include_preprocessing": True},
                weights=("imagenet", *(f"imagenet-i{size}" for size in sizes)),
            )
        )
