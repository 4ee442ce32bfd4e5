"""The Flax module that runs a Keras graph (:mod:`kjax_core.graph.describe`): one submodule per
weight-carrying Keras layer, named as the layer, applied in Keras' order with the semantics of the
registered layer ops (:class:`kjax_core.LayerOp`)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn

from ..errors import UnsupportedModelError
from ..nn.application import as_compute_dtype
from ..nn.layers import TRAINING_MODES
from ..plugin_system.types import OpContext
from .describe import TENSOR


@lru_cache(maxsize=64)
def _parse(graph: str) -> dict[str, Any]:
    return json.loads(graph)


def missing_ops(description: dict[str, Any], ops: dict[str, Any]) -> list[str]:
    """``"name (Class)"`` of every layer (nested ones included) whose class has no op."""
    missing = []
    for name, entry in description["layers"].items():
        if "graph" in entry:
            missing += [f"{name}/{m}" for m in missing_ops(entry["graph"], ops)]
        elif entry["class"] not in ops:
            missing.append(f"{name} ({entry['class']})")
    return missing


class KerasGraph(nn.Module):
    """A Keras functional or Sequential model as Flax. ``graph`` is its description as JSON text
    (hashable, so the module can be a static argument of ``jax.jit``).

    ``module.apply(variables, images)`` is the Keras model's inference call,
    ``module.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": key})``
    its training call. ``training`` says what ``train=True`` trains, as for every kjax model
    (:data:`kjax_core.nn.TRAINING_MODES`). A nested model Keras called with ``training=False``
    (``base(x, training=False)``, the frozen-backbone idiom) stays in inference mode.
    """

    graph: str
    dtype: Any = None
    param_dtype: Any = jnp.float32
    training: str = "all"
    is_kjax_application: ClassVar[bool] = True  # layers read `training` from it
    features_only: ClassVar[bool] = False

    @nn.compact
    def __call__(self, inputs: Any, train: bool = False) -> Any:
        from ..plugin_system.registry import registry

        if self.training not in TRAINING_MODES:
            raise ValueError(f"training must be one of {', '.join(TRAINING_MODES)}; got "
                             f"{self.training!r}")
        description = _parse(self.graph)
        arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if len(arrays) != len(description["inputs"]):
            raise ValueError(f"model '{description['name']}' takes {len(description['inputs'])} "
                             f"inputs; got {len(arrays)}")
        values = {spec[TENSOR]: as_compute_dtype(x, self.dtype, self.param_dtype)
                  for spec, x in zip(description["inputs"], arrays)}
        ops = registry().ops
        built: dict[str, Any] = {}
        for step in description["steps"]:
            name = step["layer"]
            if name not in built:
                built[name] = self._build(name, description["layers"][name], ops)
            args = _fill(step["args"], values)
            kwargs = dict(_fill(step["kwargs"], values))
            training = kwargs.pop("training", None)
            if kwargs.get("mask", 0) is None:
                kwargs.pop("mask")
            step_train = train if training is None else bool(training)
            out = built[name](*args, train=step_train, **kwargs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            values.update(zip(step["outputs"], outs))
        return _fill(description["outputs"], values)

    def _build(self, name: str, entry: dict[str, Any], ops: dict[str, Any]) -> Any:
        if "graph" in entry:
            nested = KerasGraph(json.dumps(entry["graph"]), dtype=self.dtype,
                                param_dtype=self.param_dtype, training=self.training, name=name)
            return lambda x, *, train: nested(x, train=train)
        op = ops.get(entry["class"])
        if op is None:
            raise UnsupportedModelError(f"layer '{name}' is a {entry['class']}, which has no "
                                        "Flax op (a plugin adds one with kjax_register_layer_ops)")
        return op.builder()(entry["config"], OpContext(name, self.dtype, self.param_dtype))


def _fill(value: Any, values: dict[int, Any]) -> Any:
    """A recorded argument with its tensors replaced by their arrays."""
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            return values[value[TENSOR]]
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value
