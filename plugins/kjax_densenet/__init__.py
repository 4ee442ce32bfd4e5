"""DenseNet family: densenet121, densenet169, densenet201, as ``keras.applications.densenet``.

Registration only; the Flax module lives in ``kjax_densenet.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (registry name, Keras constructor, Keras count_params() with top and 1000 classes)
VARIANTS = (
    ("densenet121", "DenseNet121", 8_062_504),
    ("densenet169", "DenseNet169", 14_307_880),
    ("densenet201", "DenseNet201", 20_242_984),
)


@hookimpl
def kjax_register_models(register):
    # densenet.preprocess_input: [0, 1], then the ImageNet mean and std
    register_family(register, "densenet", VARIANTS, keras_module="keras.applications.densenet",
                    flax_module="kjax_densenet.model", preprocessing="torch")
