"""ResNet-RS family: resnetrs50 .. resnetrs420, as ``tf_keras.applications.resnet_rs`` (Keras 3
dropped ResNet-RS; its reference and weights come from tf_keras).

Registration only; the Flax module lives in ``kjax_resnetrs.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (depth, Keras count_params() with top and 1000 classes, input sizes of the imagenet weight sets:
# tf_keras' DEPTH_TO_WEIGHT_VARIANTS; "imagenet" alone means the largest)
DEPTHS = (
    (50, 35_745_288, (160,)),
    (101, 63_724_296, (160, 192)),
    (152, 86_773_256, (192, 224, 256)),
    (200, 93_386_248, (256,)),
    (270, 130_104_520, (256,)),
    (350, 164_268_360, (256, 320)),
    (420, 192_262_216, (320,)),
)
VARIANTS = tuple(
    (f"resnetrs{depth}", f"ResNetRS{depth}", parameters,
     {"weights": ("imagenet", *(f"imagenet-i{size}" for size in sizes))})
    for depth, parameters, sizes in DEPTHS
)


@hookimpl
def kjax_register_models(register):
    # Rescaling and Normalization are in the graph; resnet_rs.preprocess_input is the identity
    # (with include_preprocessing=False the model expects what they produce).
    register_family(register, "resnetrs", VARIANTS, keras_module="tf_keras.applications.resnet_rs",
                    flax_module="kjax_resnetrs.model", preprocessing="none",
                    options={"include_preprocessing": True})
