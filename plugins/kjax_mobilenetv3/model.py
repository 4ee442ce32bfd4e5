"""Flax twin of ``keras/src/applications/mobilenet_v3.py``.

Submodules carry the Keras layer names, flat as in Keras: ``conv``, ``expanded_conv_3_expand``,
``expanded_conv_3_depthwise_bn``, ``expanded_conv_3_squeeze_excite_conv_1``, ``conv_1``,
``conv_2``, ``logits`` (the first block's prefix is ``expanded_conv_``). Strided depthwise
convolutions use Keras' correct-pad, which depends on the parity of the input size (see
:func:`kjax_core.nn.correct_pad_conv`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
from flax import linen as nn

from kjax_core import nn as knn

EPSILON = 1e-3
MOMENTUM = 0.999

# Each block: (expansion, filters at alpha 1, kernel ("k": the model's, 5 or 3 when
# minimalistic), stride, squeeze-excite, activation ("a": the model's, hard_swish or relu; "relu")).
SMALL = ((1, 16, 3, 2, True, "relu"), (72 / 16, 24, 3, 2, False, "relu"),
         (88 / 24, 24, 3, 1, False, "relu"), (4, 40, "k", 2, True, "a"), (6, 40, "k", 1, True, "a"),
         (6, 40, "k", 1, True, "a"), (3, 48, "k", 1, True, "a"), (3, 48, "k", 1, True, "a"),
         (6, 96, "k", 2, True, "a"), (6, 96, "k", 1, True, "a"), (6, 96, "k", 1, True, "a"))
LARGE = ((1, 16, 3, 1, False, "relu"), (4, 24, 3, 2, False, "relu"), (3, 24, 3, 1, False, "relu"),
         (3, 40, "k", 2, True, "relu"), (3, 40, "k", 1, True, "relu"),
         (3, 40, "k", 1, True, "relu"), (6, 80, 3, 2, False, "a"), (2.5, 80, 3, 1, False, "a"),
         (2.3, 80, 3, 1, False, "a"), (2.3, 80, 3, 1, False, "a"), (6, 112, 3, 1, True, "a"),
         (6, 112, 3, 1, True, "a"), (6, 160, "k", 2, True, "a"), (6, 160, "k", 1, True, "a"),
         (6, 160, "k", 1, True, "a"))


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """MobileNetV3's own, in its graph: ``ReLU(6)(x + 3) * (1 / 6)`` (Keras' activation divides)."""
    return jax.nn.relu6(x + 3.0) * (1.0 / 6.0)


class MobileNetV3(knn.Application):
    """MobileNetV3 with Keras' option names; ``blocks`` and ``last_point_ch`` pick the size."""

    blocks: tuple = LARGE
    last_point_ch: int = 1280
    alpha: float = 1.0
    minimalistic: bool = False
    dropout_rate: float = 0.2
    include_preprocessing: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        bn = partial(knn.batch_norm, train=train, epsilon=EPSILON, momentum=MOMENTUM, **kw)
        kernel, model_activation = (3, nn.relu) if self.minimalistic else (5, knn.hard_swish)
        se_ratio = None if self.minimalistic else 0.25

        def inverted_res_block(x, expansion, filters, kernel_size, stride, se, activation,
                               block_id):
            shortcut, infilters = x, x.shape[-1]
            prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
            expanded = knn.make_divisible(infilters * expansion)
            if block_id:
                x = knn.conv(x, expanded, 1, padding="same", use_bias=False,
                             name=f"{prefix}expand", **kw)
                x = activation(bn(x, name=f"{prefix}expand_bn"))
                if stride > 1:
                    self.tap(x)  # the last map before the strided depthwise
            x = knn.correct_pad_conv(x, kernel_size, strides=stride, layer=knn.depthwise_conv,
                                     use_bias=False, name=f"{prefix}depthwise", **kw)
            x = activation(bn(x, name=f"{prefix}depthwise_bn"))
            if se and se_ratio:
                x = knn.squeeze_excite(x, knn.make_divisible(expanded * se_ratio),
                                       reduce_name=f"{prefix}squeeze_excite_conv",
                                       expand_name=f"{prefix}squeeze_excite_conv_1",
                                       gate=hard_sigmoid, **kw)
            x = knn.conv(x, filters, 1, padding="same", use_bias=False, name=f"{prefix}project",
                         **kw)
            x = bn(x, name=f"{prefix}project_bn")
            return self.tap(shortcut + x if stride == 1 and infilters == filters else x)

        x = self.inputs(x)
        if self.include_preprocessing:
            x = knn.rescaling(x, 1.0 / 127.5, -1.0)
        x = knn.conv(x, 16, 3, strides=2, padding="same", use_bias=False, name="conv", **kw)
        x = self.tap(model_activation(bn(x, name="conv_bn")))
        for block_id, (expansion, filters, k, stride, se, act) in enumerate(self.blocks):
            activation: Callable = nn.relu if act == "relu" else model_activation
            x = inverted_res_block(x, expansion, knn.make_divisible(filters * self.alpha),
                                   kernel if k == "k" else k, stride, se, activation, block_id)
        last_conv_ch = knn.make_divisible(x.shape[-1] * 6)
        last_point_ch = self.last_point_ch
        if self.alpha > 1.0:
            last_point_ch = knn.make_divisible(last_point_ch * self.alpha)
        x = knn.conv(x, last_conv_ch, 1, padding="same", use_bias=False, name="conv_1", **kw)
        x = model_activation(bn(x, name="conv_1_bn"))
        return self.conv_top(x, logits_name="logits", hidden_features=last_point_ch,
                             hidden_name="conv_2", hidden_activation=model_activation,
                             dropout_rate=self.dropout_rate, train=train)


MobileNetV3Small = partial(MobileNetV3, blocks=SMALL, last_point_ch=1024)
MobileNetV3Large = partial(MobileNetV3, blocks=LARGE, last_point_ch=1280)
