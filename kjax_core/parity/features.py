"""Which Keras layers a feature pyramid (``features_only=True``) must equal, found from the Keras
graph alone, with no per-model table: see :mod:`kjax_core.nn.features` for the definition.

For each layer, in Keras model order: its output stride (the product of the strides of the
convolutions and poolings on its way from the input, the largest over its inputs), and whether it
dominates the output (every path from the input to the model's output passes through it). ``P<k>``
is the last dominating layer of stride ``2**k``, padding and cropping aside; a stride whose layers
all sit on parallel paths (NASNet's cells read the two previous cells) takes its deepest merging
layer (Concatenate or Add, furthest from the input: the last cell's output).
"""

from __future__ import annotations

import math
from typing import Any

SKIPPED = ("InputLayer", "ZeroPadding2D", "Cropping2D")  # they add no computation of their own
MERGES = ("Concatenate", "Add")


def _operations(model: Any) -> list[Any]:
    """The model's layers and, in Keras 3, its operations (``x + y`` is an operation, not a
    layer), in model order: every one after the ones it reads."""
    return list(getattr(model, "operations", None) or model.layers)


def _parents(operation: Any) -> list[Any]:
    """The layers (or operations) whose outputs ``operation`` reads, from its first call in the
    graph: Keras 3 ``Node.operation``, tf_keras ``Node.layer`` (a TFOpLambda's ``x + y`` reads
    ``y`` through its call arguments, which ``Node.parent_nodes`` covers)."""
    nodes = getattr(operation, "_inbound_nodes", None) or []
    if not nodes:
        return []
    return [getattr(parent, "operation", None) or parent.layer for parent in nodes[0].parent_nodes]


def _stride(operation: Any) -> int:
    """The factor by which ``operation`` divides the spatial size: its ``strides``; for a nested
    model (ConvNeXt's stem and downsampling layers are Sequential models), the product over its
    layers."""
    inner = getattr(operation, "layers", None)
    if inner is not None:
        return math.prod(_stride(layer) for layer in inner)
    strides = getattr(operation, "strides", None) or (1,)
    strides = (strides,) if isinstance(strides, int) else tuple(strides)
    return max(strides)


def keras_feature_layers(model: Any, max_level: int = 5) -> dict[str, str]:
    """``{"P1": layer name, ...}``: the Keras layers whose outputs ``features_only`` returns, for
    every level the model reaches up to ``max_level``, for a model built without top and pooling."""
    operations = _operations(model)
    stride: dict[int, int] = {}
    depth: dict[int, int] = {}  # the longest path from the input
    dominators: dict[int, set[int]] = {}
    for op in operations:
        parents = [p for p in _parents(op) if id(p) in dominators]
        stride[id(op)] = max((stride[id(p)] for p in parents), default=1) * _stride(op)
        depth[id(op)] = max((depth[id(p)] + 1 for p in parents), default=0)
        common = set.intersection(*(dominators[id(p)] for p in parents)) if parents else set()
        dominators[id(op)] = common | {id(op)}
    on_every_path = dominators[id(operations[-1])]
    found: dict[int, Any] = {}
    merges: dict[int, tuple[int, int, Any]] = {}
    for order, op in enumerate(operations):
        if type(op).__name__ in SKIPPED or len(op.output.shape) != 4:
            continue
        level = int(math.log2(stride[id(op)]))
        if not 1 <= level <= max_level:
            continue
        if id(op) in on_every_path:
            found[level] = op
        elif type(op).__name__ in MERGES:
            # The deepest merge: Keras orders layers of equal depth from the output arbitrarily
            # (NASNet's adjust block merges early, inside the next cell).
            merges[level] = max(merges.get(level, (-1, -1, None)), (depth[id(op)], order, op),
                                key=lambda item: item[:2])
    levels = sorted(set(found) | set(merges))
    return {f"P{k}": (found[k] if k in found else merges[k][2]).name for k in levels}


def keras_features(model: Any, layers: dict[str, str] | None = None) -> Any:
    """A Keras model from ``model``'s input to the outputs of its feature layers, a dict keyed
    ``P<k>`` (``layers``: :func:`keras_feature_layers` of ``model`` when not given)."""
    from .reference import _sub_model

    layers = layers or keras_feature_layers(model)
    by_name = {op.name: op for op in _operations(model)}
    return _sub_model(model, {level: by_name[name].output for level, name in layers.items()})
