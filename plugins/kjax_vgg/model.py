"""Flax twin of ``keras/src/applications/vgg16.py`` and ``vgg19.py``.

Submodules carry the Keras layer names (``block3_conv2``, ``fc1``, ``predictions``). With top the
head flattens the last feature map, so ``fc1``'s kernel fixes the input size: Keras builds it for
224x224 with imagenet weights, for any size it is given otherwise, and so does the twin (the size
of the images it is first called with).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
from flax import linen as nn

from kjax_core import nn as knn


class VGG(knn.Application):
    """VGG with Keras' option names; ``convs`` is the number of 3x3 convolutions per block."""

    convs: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.inputs(x)
        for block, (count, filters) in enumerate(zip(self.convs, (64, 128, 256, 512, 512)), 1):
            for i in range(1, count + 1):
                x = knn.conv(x, filters, 3, padding="same", name=f"block{block}_conv{i}",
                             **self.dtypes)
                x = nn.relu(x)
            x = knn.max_pool(self.tap(x), 2, 2)  # 'valid': an odd size drops its last row/column
        return self.flatten_top(x)


VGG16 = partial(VGG, convs=(2, 2, 3, 3, 3))
VGG19 = partial(VGG, convs=(2, 2, 4, 4, 4))
