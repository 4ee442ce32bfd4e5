"""Keras model -> Flax variables, strictly.

The path is one straight line:

1. walk the Keras layers in model order; each weight-carrying layer's weights go through the layer
   rule of its class and become a small variable subtree (``{"params": {"kernel": ...}}``);
2. ``jax.eval_shape(module.init)`` gives the Flax target tree (paths, shapes, dtypes) at no cost;
3. the ``kjax_match_layers`` hook decides which Keras layer feeds which Flax module path;
4. the strict check: every Keras weight used exactly once, every Flax leaf filled exactly once, with
   equal shapes. Anything else fails with one error naming all that did not match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import WeightsError

Tree = dict[str, Any]
Path = tuple[str, ...]
Signature = frozenset  # of (collection, relative leaf path, rank)


class WeightBag:
    """The weights of one Keras layer, by short name; a rule takes each one out exactly once."""

    def __init__(self, layer_name: str, arrays: Mapping[str, np.ndarray]):
        self.layer_name = layer_name
        self._arrays = dict(arrays)

    def take(self, *names: str) -> np.ndarray:
        """Remove and return the weight known by the first of ``names`` present (aliases cover
        Keras 3 / tf_keras naming differences)."""
        for name in names:
            if name in self._arrays:
                return self._arrays.pop(name)
        raise WeightsError(
            f"layer '{self.layer_name}' has no weight {' or '.join(names)} "
            f"(it has: {', '.join(self._arrays) or 'nothing left'})"
        )

    def take_optional(self, *names: str) -> np.ndarray | None:
        """Like :meth:`take`, but None when the layer has none of ``names``."""
        return self.take(*names) if any(n in self._arrays for n in names) else None

    def discard(self, name: str) -> None:
        """Mark a weight as deliberately not needed by the Flax twin (e.g. a sample count)."""
        self.take(name)

    def leftover(self) -> list[str]:
        return list(self._arrays)


@dataclass
class KerasLayerInfo:
    """One weight-carrying Keras layer, converted by its rule."""

    name: str
    class_name: str
    variables: Tree  # {collection: nested dict of numpy arrays}, relative to the Flax module
    signature: Signature = field(default=frozenset())


@dataclass
class FlaxModuleInfo:
    """One Flax module path and the variables under it (its own and its submodules')."""

    path: Path
    shapes: dict[tuple[str, Path], tuple[int, ...]]  # (collection, relative leaf path) -> shape
    signature: Signature = field(default=frozenset())

    @property
    def canonical_name(self) -> str:
        return "_".join(self.path)


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Depth-first (path, leaf) pairs of a nested dict, in insertion order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def unflatten(items: Iterable[tuple[Path, Any]]) -> Tree:
    tree: Tree = {}
    for path, value in items:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _signature(leaves: Iterable[tuple[str, Path, int]]) -> Signature:
    return frozenset(leaves)


# ----------------------------------------------------------------------------------------- Keras side


def iter_keras_layers(model: Any) -> Iterator[Any]:
    """The layers of a Keras model in model order, descending into nested models."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.weights and hasattr(layer, "inputs"):
            yield from iter_keras_layers(layer)
        else:
            yield layer


def short_name(weight: Any, layer_name: str) -> str:
    """A weight's name within its layer (``gamma``), for Keras 3 paths and tf_keras names."""
    raw = getattr(weight, "path", None) or weight.name
    parts = raw.split(":")[0].split("/")
    if layer_name in parts:
        parts = parts[len(parts) - parts[::-1].index(layer_name):]
    return "/".join(parts)


def weight_array(weight: Any) -> np.ndarray:
    """The value of one Keras weight as a numpy array, without a copy where the backend allows:
    a view of the JAX array (Keras 3 on JAX) or of a tensor read from the TensorFlow variable
    (Keras 3 on TensorFlow, tf_keras; the variable copies itself if it is written later, so the
    view keeps the value it had). ``layer.get_weights()`` copies every weight."""
    value = weight
    if type(weight).__module__.startswith("keras."):  # Keras 3 Variable: its backend value
        value = weight.value
    if hasattr(value, "read_value") and hasattr(value, "handle"):  # tf.Variable
        value = value.read_value()
    array = np.asarray(value)
    if array.shape != tuple(weight.shape):  # not what was expected: take Keras' own copy
        array = np.asarray(weight.numpy())
    return array


def weight_arrays(layer: Any) -> list[np.ndarray]:
    """:func:`weight_array` of each of ``layer.weights``, in order (as ``get_weights``)."""
    return [weight_array(w) for w in layer.weights]


def find_rule(layer: Any, rules: Mapping[str, Any]) -> Any | None:
    """The rule for the layer's own class. Never a base class's: tf_keras' Conv2DTranspose is a
    Conv2D whose kernel is laid out differently, and a silent fallback would mistranslate it."""
    return rules.get(type(layer).__name__)


def convert_keras_layers(
    model: Any, rules: Mapping[str, Any], progress: Callable[[str], None] | None = None
) -> list[KerasLayerInfo]:
    """Run every weight-carrying layer through its rule. Fails if a layer has no rule or a rule
    leaves any of the layer's weights unused."""
    infos, problems = [], []
    seen: set[str] = set()
    for layer in iter_keras_layers(model):
        if not layer.weights:
            continue
        if layer.name in seen:
            problems.append(f"two Keras layers are named '{layer.name}'")
            continue
        seen.add(layer.name)
        rule = find_rule(layer, rules)
        if rule is None:
            problems.append(
                f"no layer rule for Keras class {type(layer).__name__} (layer '{layer.name}')"
            )
            continue
        names = [short_name(w, layer.name) for w in layer.weights]
        if len(set(names)) != len(names):
            problems.append(f"layer '{layer.name}' has repeated weight names {names}")
            continue
        bag = WeightBag(layer.name, dict(zip(names, weight_arrays(layer))))
        try:
            variables = rule.convert(layer, bag)
        except WeightsError as error:
            problems.append(str(error))
            continue
        unused = bag.leftover()
        if unused:
            problems.append(
                f"the {rule.keras_class} rule left weights of '{layer.name}' unused: "
                + ", ".join(unused)
            )
            continue
        leaves = [
            (path[0], path[1:], np.ndim(value)) for path, value in flatten(variables)
        ]
        infos.append(KerasLayerInfo(layer.name, type(layer).__name__, variables, _signature(leaves)))
        if progress:
            progress(layer.name)
    if problems:
        raise WeightsError(_summary("cannot read the Keras model", problems))
    return infos


# ------------------------------------------------------------------------------------------ Flax side


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
        for path, leaf in flatten(tree):
            for depth in range(1, len(path)):  # each enclosing module sees the leaf
                below.setdefault(path[:depth], {})[(collection, path[depth:])] = tuple(leaf.shape)
    rank = {path: i for i, path in enumerate(call_order)}
    paths = sorted(below, key=lambda p: rank.get(p, len(rank)))  # stable: unknown keep their order
    return [
        FlaxModuleInfo(path, below[path], _signature((c, p, len(s)) for (c, p), s in below[path].items()))
        for path in paths
    ]


# ------------------------------------------------------------------------------------------- matching


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


# ------------------------------------------------------------------------------------------- assembly


def _summary(headline: str, problems: Sequence[str], limit: int = 8) -> str:
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
        for path, leaf in flatten(tree)
    }
    filled: dict[tuple[str, Path], str] = {}
    values: list[tuple[Path, np.ndarray]] = []
    unmatched, unexpected, doubled, misshaped = [], [], [], []
    for layer in keras_layers:
        module_path = assignment.get(layer.name)
        if module_path is None:
            unmatched.append(layer.name)
            continue
        for path, value in flatten(layer.variables):
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
            _summary(f"weights do not fit {model_name} ({counts})", problems)
        )
    return unflatten(values)


def translate_keras_model(
    model_name: str,
    keras_model: Any,
    module: Any,
    input_shape: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> Tree:
    """Translate a built Keras model into the variables of ``module``.

    :param model_name: registry name, passed to the ``kjax_match_layers`` hook.
    :param keras_model: a Keras 3 or tf_keras model holding the weights.
    :param module: the Flax twin (a ``flax.linen.Module``).
    :param input_shape: (H, W, C) of one image, to trace the module's variable shapes.
    :param progress: called with each Keras layer name once it is converted.
    :returns: ``{"params": ..., "batch_stats": ...}`` as nested dicts of numpy arrays.
    """
    from .plugins import registry

    reg = registry()
    layers = convert_keras_layers(keras_model, reg.rules, progress)
    target, call_order = trace_flax(module, input_shape)
    modules = flax_modules(target, call_order)
    assignment = match_layers(reg.manager, model_name, layers, modules)
    return assemble(model_name, layers, target, assignment)


def match_layers(manager: Any, model_name: str, layers: Any, modules: Any) -> dict[str, Path]:
    """The ``kjax_match_layers`` hook, first answer wins, each plugin's failure named."""
    from .errors import PluginError

    kwargs = {"model": model_name, "keras_layers": layers, "flax_modules": modules}
    for impl in reversed(manager.hook.kjax_match_layers.get_hookimpls()):  # pluggy's call order
        try:
            answer = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if answer is None:
                continue
            return {str(name): tuple(path) for name, path in dict(answer).items()}
        except Exception as error:
            raise PluginError(
                f"plugin '{impl.plugin_name}' failed to match layers for {model_name}: "
                f"{type(error).__name__}: {error}"
            ) from None
    return {}
