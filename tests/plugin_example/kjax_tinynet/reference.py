"""The Keras reference: a small functional CNN. Its layers keep Keras' automatic names
(``conv2d_3``, ``batch_normalization_7``...), which depend on a per-process counter."""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="kjax_tinynet")
class ChannelScale(layers.Layer):
    """Multiplies each channel by a learned factor."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def TinyNet(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
            classes=10, classifier_activation="softmax", width=8):
    inputs = keras.Input(input_shape or (None, None, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = ChannelScale()(x)
    x = layers.Conv2D(2 * width, 1)(x)
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(classes, activation=classifier_activation)(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, x, name="tinynet")
    if weights is not None:
        model.load_weights(weights)
    return model
