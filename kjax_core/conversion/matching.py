"""Which Keras layer feeds which Flax submodule."""

from __future__ import annotations

from typing import Sequence

from ..plugin_system.types import FlaxModuleInfo, KerasLayerInfo, Path, Signature


def default_match(
    keras_layers: Sequence[KerasLayerInfo], modules: Sequence[FlaxModuleInfo]
) -> dict[str, Path]:
    """Canonical names first, then order within each kind of layer.

    A Keras layer whose name equals a module's canonical name (its path joined with ``_``) feeds it.
    The order fallback then pairs the i-th unmatched Keras layer of a kind (same variable names and
    ranks) with the i-th unmatched Flax module of that kind in call order, and only when both sides
    have the same number of them; otherwise that kind stays unmatched and is reported. No name is
    normalised: Keras' ``dense_1`` must not meet Flax's automatic ``Dense_1``, whose numbers count
    differently.
    """
    assignment: dict[str, Path] = {}
    taken: list[Path] = []

    def free(path: Path) -> bool:
        return not any(path[: len(t)] == t or t[: len(path)] == path for t in taken)

    index: dict[str, list[FlaxModuleInfo]] = {}
    for module in modules:
        index.setdefault(module.canonical_name, []).append(module)
    for layer in keras_layers:
        # A name match wins even if the variables differ: the assembly then names the exact
        # leaves that do not fit, which says more than a silent fall back to order.
        candidates = [m for m in index.get(layer.name, []) if free(m.path)]
        if len(candidates) == 1:
            assignment[layer.name] = candidates[0].path
            taken.append(candidates[0].path)

    by_kind_keras: dict[Signature, list[KerasLayerInfo]] = {}
    for layer in keras_layers:
        if layer.name not in assignment:
            by_kind_keras.setdefault(layer.signature, []).append(layer)
    for kind, layers in by_kind_keras.items():
        candidates = [m for m in modules if m.signature == kind and free(m.path)]
        # Keep only outermost candidates: a path whose ancestor is also a candidate is inside it.
        candidates = [
            m for m in candidates
            if not any(o is not m and m.path[: len(o.path)] == o.path for o in candidates)
        ]
        if len(candidates) == len(layers):
            for layer, module in zip(layers, candidates):
                assignment[layer.name] = module.path
                taken.append(module.path)
    return assignment

