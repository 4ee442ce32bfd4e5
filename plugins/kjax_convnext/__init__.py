"""ConvNeXt family: convnexttiny .. convnextxlarge, as ``keras.applications.convnext``.

Registration only; the Flax module lives in ``kjax_convnext.model`` and is imported on use.
The models normalise inside their graph (``include_preprocessing``: Normalization with the
ImageNet mean and variance of [0, 255] pixels), so they take raw [0, 255] RGB images ("none":
``convnext.preprocess_input`` is the identity). Keras' variant constructors fix
``drop_path_rate`` (0) and ``layer_scale_init_value`` (1e-6), so they are no options here; the
Flax module has both as fields (``module.clone(drop_path_rate=0.1)`` for fine-tuning).
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top); all default to 224x224
VARIANTS = (
    ("convnexttiny", "ConvNeXtTiny", 28_589_128),
    ("convnextsmall", "ConvNeXtSmall", 50_223_688),
    ("convnextbase", "ConvNeXtBase", 88_591_464),
    ("convnextlarge", "ConvNeXtLarge", 197_767_336),
    ("convnextxlarge", "ConvNeXtXLarge", 350_196_968),
)


@hookimpl
def kjax_register_models(register):
    register_family(register, "convnext", VARIANTS, keras_module="keras.applications.convnext",
                    flax_module="kjax_convnext.model", preprocessing="none",
                    options={"include_preprocessing": True})
