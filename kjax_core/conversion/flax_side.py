"""The Flax side of a translation: the variable tree a Flax module expects and its submodules in call
order, both found by tracing (no compute)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from flax import traverse_util

from ..plugin_system.types import FlaxModuleInfo, Path, Tree, signature


def flax_target(module: Any, input_shape: Sequence[int]) -> Tree:
    """Shapes and dtypes of the module's variables for a batch of one image, computed abstractly."""
    return trace_flax(module, input_shape)[0]


def trace_flax(module: Any, input_shape: Sequence[int]) -> tuple[Tree, list[Path]]:
    """(variable shapes, module paths in the order their ``__call__`` starts) at no compute cost.

    Flax returns variables with sorted keys, so definition order has to be observed, not read.
    """
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    order: dict[Path, None] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            order.setdefault(tuple(context.module.path), None)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        target = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), x)
    return target, list(order)


def flax_modules(target: Mapping[str, Any], call_order: Sequence[Path] = ()) -> list[FlaxModuleInfo]:
    """Every module path that holds variables (directly or below), in call order where known."""
    below: dict[Path, dict[tuple[str, Path], tuple[int, ...]]] = {}
    for collection, tree in target.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            for depth in range(1, len(path)):  # each enclosing module sees the leaf
                below.setdefault(path[:depth], {})[(collection, path[depth:])] = tuple(leaf.shape)
    rank = {path: i for i, path in enumerate(call_order)}
    paths = sorted(below, key=lambda p: rank.get(p, len(rank)))  # stable: unknown keep their order
    return [
        FlaxModuleInfo(path, below[path], signature((c, p, len(s)) for (c, p), s in below[path].items()))
        for path in paths
    ]

