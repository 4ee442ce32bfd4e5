"""Which Keras layer feeds which Flax submodule: the core's matchers.

A matcher is ``matcher(keras_layers, flax_modules) -> {keras layer name: flax module path}``: the
weight-carrying Keras layers in model order (:class:`KerasLayerInfo`) and the Flax modules holding
variables in call order (:class:`FlaxModuleInfo`). A model chooses one by
:attr:`kjax_core.ModelSpec.matcher`: a name of :data:`MATCHERS` or the ``"module:attr"`` of a
callable of its own. Whatever a matcher leaves out is reported by the strict assembly, so a matcher
leaves a layer unmatched rather than guess.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from ..plugin_system.types import FlaxModuleInfo, KerasLayerInfo, ModelSpec, Path
from ..plugin_system.types import Signature

Matcher = Callable[[Sequence[KerasLayerInfo], Sequence[FlaxModuleInfo]], Mapping[str, Path]]


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


def auto_name_prefixes(class_name: str) -> frozenset[str]:
    """The names Keras gives an unnamed layer of ``class_name`` before any counter suffix: the
    class name in snake case, as Keras 3 (``keras.src.utils.naming.to_snake_case``) and tf_keras
    (``generic_utils.to_snake_case``) each spell it (``DepthwiseConv2D``: ``depthwise_conv2d``)."""
    keras3 = re.sub(r"\W+", "", class_name)
    keras3 = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", keras3)
    keras3 = re.sub(r"([a-z])([A-Z])", r"\1_\2", keras3).lower()
    legacy = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    legacy = re.sub(r"([a-z])([A-Z])", r"\1_\2", legacy).lower()
    if legacy.startswith("_"):  # tf_keras renames private classes
        legacy = "private" + legacy
    return frozenset({keras3, legacy})


def creation_index(layer_name: str, class_name: str) -> tuple[str, int] | None:
    """``(prefix, counter)`` of an automatically named Keras layer, None for a chosen name.

    Keras names an unnamed layer ``prefix`` the first time a process creates one of that prefix,
    then ``prefix_1``, ``prefix_2``, ... (one counter per prefix, per process, until
    ``clear_session``). The counter says which of two layers of one prefix was created first and
    nothing else: its value depends on every layer created before, in other models too.
    """
    for prefix in auto_name_prefixes(class_name):
        if layer_name == prefix:
            return prefix, 0
        head, _, suffix = layer_name.rpartition("_")
        if head == prefix and suffix.isdigit():
            return prefix, int(suffix)
    return None


def in_creation_order(keras_layers: Sequence[KerasLayerInfo]) -> list[KerasLayerInfo]:
    """``keras_layers`` with the automatically named layers of each prefix in the order Keras
    created them, in the places that prefix's layers held; layers with chosen names keep their
    places. Only the order of the counters is used (a numeric order: ``conv2d_10`` after
    ``conv2d_9``), never their values, so a model built after others (counters offset by any
    amount, differently per prefix) is ordered the same way."""
    places: dict[str, list[int]] = {}
    counter: dict[int, int] = {}
    for i, layer in enumerate(keras_layers):
        auto = creation_index(layer.name, layer.class_name)
        if auto is not None:
            places.setdefault(auto[0], []).append(i)
            counter[i] = auto[1]
    ordered = list(keras_layers)
    for slots in places.values():
        for slot, source in zip(slots, sorted(slots, key=counter.__getitem__)):
            ordered[slot] = keras_layers[source]
    return ordered


def creation_order_match(
    keras_layers: Sequence[KerasLayerInfo], modules: Sequence[FlaxModuleInfo]
) -> dict[str, Path]:
    """:func:`default_match` with the automatically named Keras layers taken in creation order
    (:func:`in_creation_order`) instead of model order.

    For functional models whose layers Keras names automatically and lists by graph depth: within
    an Inception block, the layers of the deepest branch come first, not in the order the source
    creates them. The Flax twin calls its submodules in the source's creation order; canonical
    names still match first (``predictions``), and each kind is paired in order only where both
    sides have as many layers of it.
    """
    return default_match(in_creation_order(keras_layers), modules)


# The core matchers by the names a ModelSpec gives (kjax_core.plugin_system.types.CORE_MATCHERS).
MATCHERS: dict[str, Matcher] = {
    "default": default_match,
    "creation_order": creation_order_match,
}


def spec_matcher(spec: ModelSpec) -> Matcher:
    """The matcher ``spec.matcher`` names: a core matcher, or the callable its ``"module:attr"``
    gives (imported now; a PluginError naming the plugin if it cannot be)."""
    if spec.matcher in MATCHERS:
        return MATCHERS[spec.matcher]
    return spec.load(spec.matcher)
