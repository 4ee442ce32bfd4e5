"""The strict assembly: every converted Keras variable placed at its Flax path, every Keras weight used
once and every Flax leaf filled once, with equal shapes, or one error naming all that does not fit."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from flax import traverse_util

from ..errors import WeightsError
from ..plugin_system.types import KerasLayerInfo, Path, Tree


def summary(headline: str, problems: Sequence[str], limit: int = 8) -> str:
    shown = "; ".join(problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{headline}: {shown}{more}"


def assemble(
    model_name: str,
    keras_layers: Sequence[KerasLayerInfo],
    target: Mapping[str, Any],
    assignment: Mapping[str, Path],
) -> Tree:
    """Place every converted Keras variable at its Flax path, checking the whole assignment.

    Raises one WeightsError naming every unmatched Keras layer, unfilled or doubly filled Flax
    leaf, and shape mismatch.
    """
    wanted = {
        (collection, path): leaf
        for collection, tree in target.items()
        for path, leaf in traverse_util.flatten_dict(tree).items()
    }
    filled: dict[tuple[str, Path], str] = {}
    values: list[tuple[Path, np.ndarray]] = []
    unmatched, unexpected, doubled, misshaped = [], [], [], []
    for layer in keras_layers:
        module_path = assignment.get(layer.name)
        if module_path is None:
            unmatched.append(layer.name)
            continue
        for path, value in traverse_util.flatten_dict(layer.variables).items():
            key = (path[0], tuple(module_path) + path[1:])
            shown = "/".join((key[0], *key[1]))
            if key not in wanted:
                unexpected.append(f"{shown} (from '{layer.name}')")
                continue
            if key in filled:
                doubled.append(f"{shown} (from '{filled[key]}' and '{layer.name}')")
                continue
            leaf = wanted[key]
            if tuple(np.shape(value)) != tuple(leaf.shape):
                misshaped.append(
                    f"{shown}: Keras '{layer.name}' gives {tuple(np.shape(value))}, "
                    f"Flax expects {tuple(leaf.shape)}"
                )
                continue
            filled[key] = layer.name
            values.append(((key[0], *key[1]), np.asarray(value, dtype=leaf.dtype)))
    missing = ["/".join((c, *p)) for (c, p) in wanted if (c, p) not in filled]
    problems = (
        [f"Keras layer '{n}' matches no Flax module" for n in unmatched]
        + [f"no Flax leaf {u}" for u in unexpected]
        + [f"Flax leaf filled twice: {d}" for d in doubled]
        + [f"shape mismatch {m}" for m in misshaped]
        + [f"Flax leaf {m} not filled by any Keras weight" for m in missing]
    )
    if problems:
        counts = (
            f"{len(unmatched)} unmatched Keras layers, {len(missing)} unfilled Flax leaves, "
            f"{len(misshaped)} shape mismatches, {len(unexpected) + len(doubled)} unexpected"
        )
        raise WeightsError(
            summary(f"weights do not fit {model_name} ({counts})", problems)
        )
    return traverse_util.unflatten_dict(dict(values))

