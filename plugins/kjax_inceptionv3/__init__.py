"""InceptionV3 family: inceptionv3, as ``keras.applications.inception_v3``.

Registration and layer matching only; the Flax module lives in ``kjax_inceptionv3.model`` and is
imported on use.
"""

from kjax_core import ModelSpec, hookimpl


@hookimpl
def kjax_register_models(register):
    register(
        ModelSpec(
            name="inceptionv3",
            family="inceptionv3",
            keras_constructor="keras.applications.inception_v3:InceptionV3",
            flax_module="kjax_inceptionv3.model:InceptionV3",
            input_size=(299, 299, 3),
            min_input_size=75,
            parameters=23_851_784,
            preprocessing="tf",  # inception_v3.preprocess_input: scale to [-1, 1]
        )
    )


def creation_order(name: str) -> int:
    """Where an automatically named Keras layer came in its kind's sequence: ``conv2d`` is 0,
    ``conv2d_17`` is 17. Only the order matters, never the number itself."""
    base, _, suffix = name.rpartition("_")
    return int(suffix) if base and suffix.isdigit() else 0


@hookimpl
def kjax_match_layers(model, keras_layers, flax_modules):
    """InceptionV3's conv2d_bn layers are named automatically, and Keras lists a functional
    model's layers by graph depth (deepest branch first within a block), not in the order the
    source creates them, which the Flax twin follows. So pair each kind in creation order: sort the
    Keras layers by their counter suffix (a numeric sort: the counter is per process, so the
    numbers are offset and ``conv2d_100`` follows ``conv2d_99``) and let the core's matching do the
    rest (``predictions`` by name; then order within each kind, counts checked)."""
    if model != "inceptionv3":
        return None
    from kjax_core.conversion.matching import default_match

    ordered = sorted(keras_layers, key=lambda layer: creation_order(layer.name))
    return default_match(ordered, flax_modules)
