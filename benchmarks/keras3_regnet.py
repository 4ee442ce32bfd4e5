"""RegNet built with Keras 3 layers, for the benchmark's Keras-on-JAX engine only.

Keras 3 dropped RegNet and Keras on JAX cannot run tf_keras models, so benchmarks/worker.py's
``keras-jax`` engine runs this graph instead: tf_keras' RegNet (same table, from kjax_regnet.model;
same layers, options and layer names) written with ``keras.layers``. Its grouped 3x3 convolutions
are Keras 3's Conv2D(groups=g), which Keras on JAX lowers to XLA's grouped convolution
(``feature_group_count``). :func:`check_against_tf_keras` copies a tf_keras model's weights into
it by layer name and compares the outputs.
"""

from __future__ import annotations

import numpy as np


def build(model: str, input_shape=(224, 224, 3), include_top: bool = True):
    """The Keras 3 functional model of ``model`` (``"regnetx016"``), random weights."""
    import keras
    from keras import layers

    from kjax_regnet.model import BN_EPSILON, BN_MOMENTUM, MODEL_CONFIGS, SE_RATIO, STEM_WIDTH

    depths, widths, group_width, block_type = MODEL_CONFIGS[model[len("regnet"):]]
    bn = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)

    def block(x, filters_in, filters_out, stride, name):
        skip = x
        if stride != 1:
            skip = layers.Conv2D(filters_out, 1, strides=stride, use_bias=False,
                                 name=f"{name}_skip_1x1")(x)
            skip = layers.BatchNormalization(name=f"{name}_skip_bn", **bn)(skip)
        y = layers.Conv2D(filters_out, 1, use_bias=False, name=f"{name}_conv_1x1_1")(x)
        y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_conv_1x1_1_bn", **bn)(y))
        y = layers.Conv2D(filters_out, 3, strides=stride, padding="same", use_bias=False,
                          groups=filters_out // group_width or 1, name=f"{name}_conv_3x3")(y)
        y = layers.ReLU()(layers.BatchNormalization(name=f"{name}_conv_3x3_bn", **bn)(y))
        if block_type == "Y":
            s = layers.GlobalAveragePooling2D(keepdims=True)(y)
            s = layers.Conv2D(int(filters_in * SE_RATIO), 1, activation="relu",
                              name=f"{name}_squeeze_and_excite_squeeze")(s)
            s = layers.Conv2D(filters_out, 1, activation="sigmoid",
                              name=f"{name}_squeeze_and_excite_excite")(s)
            y = layers.Multiply()([s, y])
        y = layers.Conv2D(filters_out, 1, use_bias=False, name=f"{name}_conv_1x1_2")(y)
        y = layers.BatchNormalization(name=f"{name}_conv_1x1_2_bn", **bn)(y)
        return layers.ReLU()(layers.Add()([y, skip]))

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255.0, name=f"{model}_prestem_rescaling")(inputs)
    x = layers.Conv2D(STEM_WIDTH, 3, strides=2, padding="same", use_bias=False,
                      name=f"{model}_stem_conv")(x)
    x = layers.ReLU()(layers.BatchNormalization(name=f"{model}_stem_bn", **bn)(x))
    filters_in = STEM_WIDTH
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        for i in range(depth):
            x = block(x, filters_in if i == 0 else width, width, 2 if i == 0 else 1,
                      f"{model}_Stage_{stage}_{block_type}Block_{i}")
        filters_in = width
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(1000, name="head_dense")(x)  # tf_keras applies no activation
    return keras.Model(inputs, x, name=model)


def check_against_tf_keras(model: str, size=(67, 45)) -> float:
    """Relative L2 between tf_keras' model and this one holding its (random) weights, float32."""
    import tf_keras
    from tf_keras.applications import regnet

    reference = getattr(regnet, f"RegNet{model[len('regnet'):].upper()}")(
        weights=None, include_top=False, input_shape=(*size, 3))
    rng = np.random.default_rng(0)
    for layer in reference.layers:  # off Keras' initial values (variances stay positive)
        layer.set_weights([w + 0.5 if "variance" in v.name
                           else w + rng.normal(0, 0.1, w.shape).astype(w.dtype)
                           for w, v in zip(layer.get_weights(), layer.weights)])
    ours = build(model, (*size, 3), include_top=False)
    by_name = {layer.name: layer for layer in ours.layers}
    for layer in reference.layers:
        if layer.weights:
            by_name[layer.name].set_weights(layer.get_weights())
    x = rng.uniform(0, 255, (2, *size, 3)).astype(np.float32)
    expected = np.asarray(reference(x))
    actual = np.asarray(ours(x))
    tf_keras.backend.clear_session()
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["regnetx002", "regnety002"]:
        print(name, f"{check_against_tf_keras(name):.2e}")
