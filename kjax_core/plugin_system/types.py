"""What plugins register (model specs, layer rules) and what their hooks receive (a layer's weights,
the Keras layers and Flax modules to match).

Plain dataclasses that import nothing heavy, so that `kjax list` can show every model without
importing TensorFlow, Keras, JAX or Flax. Code is referenced by ``"module:attribute"`` strings and
imported only when a model is built or translated.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ..errors import PluginError, WeightsError

if TYPE_CHECKING:
    import numpy as np

Tree = dict[str, Any]
Path = tuple[str, ...]
Signature = frozenset  # of (collection, relative leaf path, rank)

# The core's matchers (kjax_core.conversion.matching.MATCHERS) by the short name a ModelSpec gives
# in ``matcher``; listed here so that the registry checks a spec without importing them.
CORE_MATCHERS = ("default", "creation_order")

# Options every Keras Applications constructor takes and every kjax Flax module mirrors.
COMMON_OPTIONS: Mapping[str, Any] = {
    "include_top": True,
    "pooling": None,
    "classes": 1000,
    "classifier_activation": "softmax",
}

# Options of every Flax twin that its Keras constructor does not take (the translator builds the
# Keras model without them): features_only returns the feature pyramid (kjax_core.nn.features),
# from the weights of the model without top; training says what train=True trains ("all",
# "batch_norm" or "dropout": kjax_core.nn.TRAINING_MODES). Neither changes the variables.
KJAX_OPTIONS: Mapping[str, Any] = {"features_only": False, "training": "all"}


def resolve(ref: str) -> Any:
    """Import ``"package.module:attr.path"`` and return the attribute."""
    module_name, _, attr = ref.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelSpec:
    """One model a plugin provides: its Keras reference and its Flax twin.

    Attributes:
        name: registry name, lower case (``"resnet50"``); what users type.
        family: family label shown by ``kjax list`` (``"resnet"``).
        keras_constructor: ``"module:attr"`` of the Keras Applications constructor that is the
            reference, e.g. ``"keras.applications:ResNet50"``. It is called with the Keras option
            names (``include_top``, ``weights``, ``input_shape``, ``pooling``, ``classes``,
            ``classifier_activation`` and the family options).
        flax_module: ``"module:attr"`` of a callable that takes the same options (without
            ``weights`` and ``input_shape``) plus ``dtype`` / ``param_dtype`` and returns a
            ``flax.linen.Module``; typically the module class or a ``functools.partial`` of it.
        input_size: default (height, width, channels), as Keras' default input shape.
        min_input_size: smallest height/width Keras accepts.
        parameters: parameter count of the default configuration (with top, 1000 classes), as
            Keras' ``count_params()`` reports it; shown by ``kjax list`` and checked by tests.
        preprocessing: what ``preprocess_input`` the model expects outside its graph: ``"caffe"``,
            ``"tf"``, ``"torch"`` or ``"none"`` (the model preprocesses inside).
        options: family options and their defaults (e.g. ``{"alpha": 1.0}``). Their types are the
            types of the defaults; a default of None accepts any value.
        weights: named weight sets besides ``None`` and file paths (``("imagenet",)``).
        weights_options: Flax module options implied by a named weight set, for Keras
            constructors that build a different graph for it (EfficientNet adds a Rescaling layer
            only for ``weights="imagenet"``): ``{"imagenet": {"imagenet_rescaling": True}}``.
        weights_notes: what a named weight set covers, shown by ``kjax info``, where Keras has it
            for some option values only: ``{"imagenet": "alpha 0.35, 0.5, 0.75, 1.0, 1.3, 1.4"}``.
        matcher: which Keras layer feeds which Flax submodule, when the plugin's own
            ``kjax_match_layers`` hook does not answer (or is not implemented). A core matcher by
            name: ``"default"`` (canonical names, then order within each kind of layer: Keras model
            order against Flax call order) or ``"creation_order"`` (canonical names, then
            automatically named Keras layers in the order Keras created them, for functional models
            whose parallel branches Keras lists by graph depth: InceptionV3); or the
            ``"module:attr"`` of a callable ``matcher(keras_layers, flax_modules) -> {keras layer
            name: flax module path}`` (see :mod:`kjax_core.conversion.matching`).
        parity: how the parity harness (``kjax verify``, tests) prepares this model's randomised
            reference, where the defaults do not suit it; keys of
            :data:`kjax_core.parity.PARITY_DEFAULTS` (``{"calibration": "batch"}``). No built-in
            family needs any.
        plugin: the plugin that registered it; filled in by the registry.
    """

    name: str
    family: str
    keras_constructor: str
    flax_module: str
    input_size: tuple[int, int, int] = (224, 224, 3)
    min_input_size: int = 32
    parameters: int = 0
    preprocessing: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    weights: tuple[str, ...] = ("imagenet",)
    weights_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    weights_notes: Mapping[str, str] = field(default_factory=dict)
    matcher: str = "default"
    parity: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def load(self, ref: str) -> Any:
        """Import one of this spec's ``"module:attr"`` references, naming the plugin on failure."""
        try:
            return resolve(ref)
        except (ImportError, AttributeError) as error:
            raise PluginError(
                f"plugin '{self.plugin}' gives {ref} for {self.name}, which cannot be imported: "
                f"{type(error).__name__}: {error}"
            ) from None

    def default_options(self) -> dict[str, Any]:
        """Every option the model takes, with its default."""
        return {**COMMON_OPTIONS, **KJAX_OPTIONS, **self.options}


@dataclass(frozen=True)
class LayerRule:
    """How the weights of one Keras layer class become Flax leaves.

    Attributes:
        keras_class: the Keras layer class name (``"Conv2D"``). Keras 3 and tf_keras layers of
            the same name share a rule. Only that exact class uses it, never a subclass: a
            subclass may lay out the same weights differently (tf_keras' Conv2DTranspose is a
            Conv2D), so each class needs a rule of its own.
        convert: ``convert(layer, weights) -> {collection: {leaf: array}}`` where ``weights`` is a
            :class:`kjax_core.plugin_system.types.WeightBag` (take each Keras weight out of it by its short
            name; whatever is left unused makes the translation fail) and the result is the variable
            subtree of the Flax submodule fed by this layer, e.g.
            ``{"params": {"kernel": k, "bias": b}}``. Leaves are numpy arrays; nested dicts are
            allowed for Flax modules with submodules.
    """

    keras_class: str
    convert: Callable[[Any, Any], dict[str, dict[str, Any]]]
    plugin: str = ""


@dataclass(frozen=True)
class LayerOp:
    """What one Keras layer class computes, as Flax: the semantics ``kjax convert`` runs a Keras
    graph with (:mod:`kjax_core.graph`).

    Attributes:
        keras_class: the Keras layer class name (``"Conv2D"``), exactly (never a subclass, as for
            :class:`LayerRule`). Keras operations that are not layers (``keras.ops`` called on
            symbolic tensors in a functional model, ``x + 3.0``) are named ``"ops."`` and their
            class: ``"ops.Add"``. In a tf_keras graph, a TensorFlow function on symbolic tensors
            (a ``TFOpLambda`` layer) is named ``"tf."`` and the function: ``"tf.math.multiply"``;
            tf_keras' BatchNormalization is ``"tf_keras.BatchNormalization"``.
        build: ``build(config, context) -> op`` (or its ``"module:attr"``, imported when first
            used, so that registering imports nothing heavy): ``config`` is the layer's
            ``get_config()``, ``context`` an :class:`OpContext`; ``op(*args, train, **kwargs)``
            takes the arguments the Keras layer was called with (tensors as JAX arrays) and
            returns its output. ``build`` runs inside the graph module's ``@nn.compact`` call: a
            weight-carrying layer creates its Flax module there with ``name=context.name``,
            holding exactly the leaves the class's :class:`LayerRule` produces.
    """

    keras_class: str
    build: Callable[[Mapping[str, Any], "OpContext"], Callable[..., Any]] | str
    plugin: str = ""

    def builder(self) -> Callable[[Mapping[str, Any], "OpContext"], Callable[..., Any]]:
        if not isinstance(self.build, str):
            return self.build
        module, _, attr = self.build.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as error:
            raise PluginError(f"plugin '{self.plugin}' gives {self.build} for the op of "
                              f"{self.keras_class}, which cannot be imported: "
                              f"{type(error).__name__}: {error}") from None


@dataclass(frozen=True)
class OpContext:
    """What a :class:`LayerOp` builder knows besides the layer's config: the Keras layer's name
    (the Flax submodule's), the graph's compute and parameter dtypes."""

    name: str
    dtype: Any = None
    param_dtype: Any = None

    @property
    def dtypes(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


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


def signature(leaves: Iterable[tuple[str, Path, int]]) -> Signature:
    """The kind of a layer or module: its (collection, relative leaf path, rank) triples."""
    return frozenset(leaves)


def register_family(
    register: Callable[[ModelSpec], None],
    family: str,
    variants: Iterable[tuple],
    *,
    keras_module: str,
    flax_module: str,
    **common: Any,
) -> None:
    """Register one :class:`ModelSpec` per variant of a family, for a plugin's
    ``kjax_register_models``: the variants share ``family``, their modules and ``common`` fields.

    :param variants: ``(name, constructor, parameters)`` triples, optionally with a fourth item,
        a dict of this variant's own ModelSpec fields (``input_size``, ``weights``, ...). The Keras
        reference is ``keras_module:constructor`` and the Flax twin ``flax_module:constructor``.
    """
    for name, constructor, parameters, *own in variants:
        fields = {**common, **(own[0] if own else {})}
        register(ModelSpec(name=name, family=family, parameters=parameters,
                           keras_constructor=f"{keras_module}:{constructor}",
                           flax_module=f"{flax_module}:{constructor}", **fields))
