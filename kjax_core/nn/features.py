"""Feature pyramids (``features_only=True``): the maps a detection or segmentation head takes.

``P<k>`` is the map at output stride ``2**k`` (k = 1..5, keras-hub's ``pyramid_outputs`` names):
the output of the last Keras layer at that resolution, in Keras model order, that the whole model
passes through (the last layer of a chain; in a branching block, the block's output, not a layer of
one branch). NASNet's cells each read the two cells before them, so its graph has no such layer
at strides 4 to 16; there ``P<k>`` is the last cell's output (the deepest Concatenate or Add).
:func:`kjax_core.parity.keras_feature_layers` finds these layers in a Keras model; the tests hold
each family's Flax twin to them.

A family offers its maps with :meth:`kjax_core.nn.Block.tap` (from any submodule) at those points;
each tap replaces the map kept for its resolution, so a tap after every block is enough where the
block outputs are the points. :func:`feature_pyramid` turns the taps into levels from their shapes.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax

MAX_LEVEL = 5  # stride 32, the deepest level every Keras application reaches


def _levels_down(before: int, after: int) -> int:
    """How many halvings take a spatial size from ``before`` to ``after``, given a tap at every
    resolution the model passes through. A stride-2 layer divides by 1.5 to 3 (3 -> 2 'same',
    3 -> 1 'valid' 3x3); a valid stride-1 convolution shrinks a map by less than 1.3 (Inception's
    stem at its 75x75 minimum: 17 -> 15); ConvNeXt's 4x4 stride-4 stem by 4 or more (33 -> 8)."""
    ratio = before / after
    if ratio < 1.3:
        return 0
    return max(1, round(math.log2(ratio) - 0.25))


def feature_pyramid(image_size: Sequence[int], taps: Sequence[jax.Array]) -> dict[str, jax.Array]:
    """``{"P1": map, ..., "P5": map}`` from the maps tapped in call order: each map's level follows
    from how far its height and width fell since the previous tap (the larger of the two, so a
    side already at 1 does not hide a halving of the other); the last map of each level is kept.
    Taps at the input's resolution (VGG's first block) and beyond P5 are left out."""
    if not taps:
        raise ValueError("features_only: the model offered no feature maps (Block.tap)")
    pyramid: dict[str, jax.Array] = {}
    level, previous = 0, tuple(image_size)
    for x in taps:
        size = tuple(x.shape[1:3])
        if any(a > b for a, b in zip(size, previous)):
            raise ValueError(f"features_only: a {size[0]}x{size[1]} map was tapped after a "
                             f"{previous[0]}x{previous[1]} one; taps must follow the model's order")
        level += max(_levels_down(b, a) for a, b in zip(size, previous))
        previous = size
        if 1 <= level <= MAX_LEVEL:
            pyramid[f"P{level}"] = x
    return pyramid
