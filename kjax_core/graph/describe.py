"""A Keras model's graph as plain data (JSON): what :class:`kjax_core.graph.KerasGraph` runs, and
what ``config.json`` keeps so that ``kjax_core.load`` rebuilds the module without Keras.

::

    {"name": "model", "inputs": [{"tensor": 0, "shape": [null, 224, 224, 3], "name": "input"}],
     "layers": {"conv": {"class": "Conv2D", "config": {...}},          # one entry per layer
                "backbone": {"class": "Functional", "graph": {...}}},  # a nested model
     "steps": [{"layer": "conv", "args": [{"tensor": 0}], "kwargs": {}, "outputs": [1]}, ...],
     "outputs": {"tensor": 7}}

Steps are Keras' own order of execution (``Functional._run_through_graph``: nodes by decreasing
depth). A layer called twice appears once in ``layers`` and twice in ``steps``. Tensors in a call's
arguments are ``{"tensor": n}``; other arguments are kept as given (numbers, strings, lists).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError

TENSOR = "tensor"


def _class(operation: Any) -> str:
    """The op key of a Keras operation: a layer's class name; ``"ops.<class>"`` for a Keras 3
    keras.ops operation that is not a layer (``x + 3.0``); ``"tf.<function>"`` for the tf_keras
    layer that records a TensorFlow function called on symbolic tensors (``TFOpLambda``:
    ``x + y`` is ``"tf.__operators__.add"``); ``"tf_keras.BatchNormalization"`` for tf_keras'
    BatchNormalization, whose training step differs from Keras 3's."""
    name = type(operation).__name__
    if _is_tf_keras(operation):
        if name == "TFOpLambda":
            return f"tf.{operation.get_config()['function']}"
        return f"tf_keras.{name}" if name == "BatchNormalization" else name
    from keras import layers

    return name if isinstance(operation, layers.Layer) else f"ops.{name}"


def _is_tf_keras(operation: Any) -> bool:
    return type(operation).__module__.startswith("tf_keras")


class _Node:
    """One call of an operation in a functional graph, read from Keras 3's or tf_keras' node."""

    def __init__(self, node: Any) -> None:
        self.operation = getattr(node, "operation", None) or getattr(node, "layer", None)
        self.is_input = node.is_input
        if hasattr(node, "arguments"):  # Keras 3
            self.inputs = list(node.input_tensors)
            self.args, self.kwargs = node.arguments.args, node.arguments.kwargs
            self.outputs = list(node.outputs)
        else:  # tf_keras
            import tensorflow as tf

            self.inputs = list(node.keras_inputs)
            self.args, self.kwargs = node.call_args, dict(node.call_kwargs)
            if type(self.operation).__name__ == "TFOpLambda":
                self.kwargs.pop("name", None)  # the TensorFlow op's name, not an argument
            self.outputs = tf.nest.flatten(node.outputs)


def _is_graph(operation: Any) -> bool:
    return type(operation).__name__ in ("Functional", "Sequential") and hasattr(operation, "layers")


def _functional(model: Any) -> Any:
    """The functional graph of a Functional or Sequential model, or a one-line refusal."""
    kind = type(model).__name__
    if kind == "Sequential":
        if _is_tf_keras(model):  # tf_keras' Sequential is its own graph once built on an Input
            graph = model if getattr(model, "_is_graph_network", False) else None
        else:
            graph = getattr(model, "_functional", None)
        if graph is None:
            raise UnsupportedModelError(
                f"the Sequential model '{model.name}' has no input shape (it was never built on "
                "an Input): give its first layer an input shape, or add keras.Input(shape)")
        return graph
    if kind != "Functional" or not hasattr(model, "_nodes_by_depth"):
        raise UnsupportedModelError(
            f"model '{model.name}' is a subclassed Keras model ({kind}): only Sequential and "
            "functional models have a graph kjax can read")
    return model


def _plain(value: Any, where: str) -> Any:
    """A layer's config or a call argument as JSON data (tuples become lists)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise UnsupportedModelError(f"{where}: cannot record {type(value).__name__} {value!r}")


def describe(model: Any) -> dict[str, Any]:
    """The graph of a Keras 3 or tf_keras Sequential or functional model (nested models described
    inside)."""
    if _is_tf_keras(model):
        from tf_keras.src.engine.keras_tensor import KerasTensor
    else:
        from keras import KerasTensor

    graph = _functional(model)
    ids: dict[int, int] = {}

    def slot(tensor: Any) -> int:
        return ids.setdefault(id(tensor), len(ids))

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, KerasTensor):
            if id(value) not in ids:
                raise UnsupportedModelError(f"{where}: takes a tensor computed outside the model")
            return {TENSOR: ids[id(value)]}
        if isinstance(value, (list, tuple)):
            return [encode(v, where) for v in value]
        if isinstance(value, dict):
            return {str(k): encode(v, where) for k, v in value.items()}
        return _plain(value, where)

    inputs = [{TENSOR: slot(t), "shape": list(t.shape), "name": getattr(t, "name", "")}
              for t in graph.inputs]
    layers: dict[str, dict[str, Any]] = {}
    owners: dict[str, Any] = {}
    steps = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in map(_Node, graph._nodes_by_depth[depth]):
            operation = node.operation
            if operation is None or node.is_input:
                continue
            if any(id(t) not in ids for t in node.inputs):
                continue  # not computable from the inputs (Keras skips it too)
            name = operation.name
            where = f"layer '{name}' ({type(operation).__name__})"
            if name in owners and owners[name] is not operation:
                raise UnsupportedModelError(f"two layers of model '{model.name}' are named '{name}'")
            if name not in owners:
                owners[name] = operation
                layers[name] = _layer_entry(operation, where)
            steps.append({"layer": name, "args": encode(node.args, where),
                          "kwargs": encode(node.kwargs, where),
                          "outputs": [slot(t) for t in node.outputs]})
    structure = (graph._nested_outputs if _is_tf_keras(graph)  # tf_keras' name for it
                 else graph._outputs_struct)
    outputs = encode(structure, f"the outputs of model '{model.name}'")
    description = {"name": model.name, "inputs": inputs, "layers": layers, "steps": steps,
                   "outputs": outputs}
    json.dumps(description)  # JSON data only, checked here rather than when saving
    return description


def _layer_entry(operation: Any, where: str) -> dict[str, Any]:
    if _is_graph(operation):
        return {"class": type(operation).__name__, "graph": describe(operation)}
    try:
        config = operation.get_config()
    except NotImplementedError:  # an operation that records no arguments
        config = {}
    if _is_tf_keras(operation) and config.get("activation") == "hard_sigmoid":
        raise UnsupportedModelError(
            f"{where}: tf_keras' hard_sigmoid (clip(0.2 x + 0.5, 0, 1)) is not Keras 3's "
            "(relu6(x + 3) / 6), the one kjax computes")
    return {"class": _class(operation), "config": _plain(config, where)}


def layer_classes(description: dict[str, Any]) -> dict[str, str]:
    """``{layer name: class}`` of every layer of the graph, nested graphs' layers included
    (named ``outer/inner``), the nested models themselves excluded."""
    found = {}
    for name, entry in description["layers"].items():
        if "graph" in entry:
            found.update({f"{name}/{k}": v for k, v in layer_classes(entry["graph"]).items()})
        else:
            found[name] = entry["class"]
    return found
