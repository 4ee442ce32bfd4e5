"""The core's layer ops, by Keras class: what ``kjax convert`` runs each layer of a Keras graph as.
Builders are named by ``"module:attr"`` (in :mod:`kjax_core.graph.ops`) so that registering them
imports neither JAX nor Flax."""

from __future__ import annotations

from ..plugin_system.types import LayerOp

_OPS = "kjax_core.graph.ops"

# Keras class -> builder in kjax_core.graph.ops. Layers first, then keras.ops operations ("ops.").
_TABLE = {
    # weight-carrying layers (their weights go through the layer rule of the same class)
    "Conv2D": "conv2d",
    "DepthwiseConv2D": "depthwise_conv2d",
    "SeparableConv2D": "separable_conv2d",
    "Dense": "dense",
    "BatchNormalization": "batch_normalization",
    "LayerNormalization": "layer_normalization",
    "Normalization": "normalization",
    "LayerScale": "layer_scale",  # ConvNeXt's
    # activations
    "Activation": "activation_layer",
    "ReLU": "relu_layer",
    "LeakyReLU": "leaky_relu_layer",
    "Softmax": "softmax_layer",
    # merges
    "Add": "add",
    "Subtract": "subtract",
    "Multiply": "multiply",
    "Average": "average",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "Concatenate": "concatenate",
    "CustomScaleLayer": "custom_scale",  # InceptionResNetV2's scaled residual
    # spatial
    "ZeroPadding2D": "zero_padding2d",
    "Cropping2D": "cropping2d",
    "MaxPooling2D": "max_pooling2d",
    "AveragePooling2D": "average_pooling2d",
    "GlobalAveragePooling2D": "global_average_pooling2d",
    "GlobalMaxPooling2D": "global_max_pooling2d",
    # shapes, preprocessing, regularisation
    "Flatten": "flatten",
    "Reshape": "reshape",
    "Permute": "permute",
    "Identity": "identity",
    "Rescaling": "rescaling",
    "Dropout": "dropout",
    "SpatialDropout2D": "spatial_dropout2d",
    "StochasticDepth": "stochastic_depth",  # ConvNeXt's
    # keras.ops on symbolic tensors (MobileNetV3's hard sigmoid: relu6(x + 3) * (1 / 6))
    "ops.Add": "ops_add",
    "ops.Subtract": "ops_subtract",
    "ops.Multiply": "ops_multiply",
    "ops.Divide": "ops_divide",
    "ops.TrueDivide": "ops_divide",
    # tf_keras (ResNet-RS, RegNet and models saved by tf_keras): its own BatchNormalization, and
    # TensorFlow functions called on symbolic tensors (RegNet's residual add and squeeze-excite)
    "tf_keras.BatchNormalization": "tf_keras_batch_normalization",
    "tf.__operators__.add": "tf_add",
    "tf.math.add": "tf_add",
    "tf.math.subtract": "tf_subtract",
    "tf.math.multiply": "tf_multiply",
    "tf.math.truediv": "tf_divide",
    "tf.math.divide": "tf_divide",
    "tf.nn.relu": "tf_relu",
    "tf.nn.relu6": "tf_relu6",
    "tf.math.sigmoid": "tf_sigmoid",
    "tf.nn.silu": "tf_silu",
    "tf.math.tanh": "tf_tanh",
}

BUILTIN_OPS = [LayerOp(keras_class, f"{_OPS}:{builder}") for keras_class, builder in _TABLE.items()]
