"""The hooks a kjax plugin implements.

A plugin is a module (or object) with functions decorated by ``kjax_core.hookimpl`` whose names are
the hook names below, made known through an entry point in the ``kjax`` group::

    [project.entry-points.kjax]
    myfamily = "my_package"

The plugin module is imported when kjax first needs the registry, not when the CLI starts. Keep it
light: reference Keras constructors and Flax modules by ``"module:attr"`` strings (see
:class:`kjax_core.ModelSpec`) so that ``kjax list`` never imports TensorFlow, Keras, JAX or Flax.

How the core calls them: through pluggy, one plugin at a time
(:func:`kjax_core.plugin_system.registry.plugin_hook`, a ``subset_hook_caller`` with every other
plugin removed). The registration hooks run once per plugin when the registry is first built; a
plugin whose hook raises, that registers something malformed, implements an unknown hook or a hook
wrapper is refused whole (none of its models, rules or hooks are used; one line on stderr) and the
others keep working. ``kjax_match_layers`` runs only for the plugin that registered the model being
translated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import pluggy

if TYPE_CHECKING:
    from .types import FlaxModuleInfo, KerasLayerInfo, LayerOp, LayerRule, ModelSpec

PROJECT = "kjax"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kjax_register_models(register: Callable[["ModelSpec"], None]) -> None:
    """Register the models this plugin provides.

    Call ``register(ModelSpec(...))`` once per model name. Two plugins registering the same name make
    that name ambiguous: using it fails with an error naming both plugins.

    :param register: callback taking one :class:`kjax_core.ModelSpec`.
    """


@hookspec
def kjax_register_layer_rules(register: Callable[["LayerRule"], None]) -> None:
    """Register how Keras layer classes' weights become Flax leaves.

    Call ``register(LayerRule(keras_class, convert))`` once per Keras layer class. The core registers
    rules for Conv2D, Dense, BatchNormalization, DepthwiseConv2D, SeparableConv2D,
    LayerNormalization and Normalization; a plugin adds rules for layer classes of its own. Registering
    a class that already has a rule is an error: one class, one rule.

    :param register: callback taking one :class:`kjax_core.LayerRule`.
    """


@hookspec
def kjax_register_layer_ops(register: Callable[["LayerOp"], None]) -> None:
    """Register what Keras layer classes compute, for ``kjax convert`` (any Keras model to Flax).

    Call ``register(LayerOp(keras_class, build))`` once per Keras layer class. The core registers
    ops for every layer class of the Keras Applications models and the common layers of a
    fine-tuned head (see :mod:`kjax_core.graph.ops`); a plugin adds ops for layer classes of its
    own (a weight-carrying one needs a :class:`LayerRule` too). One class, one op.

    :param register: callback taking one :class:`kjax_core.LayerOp`.
    """


@hookspec(firstresult=True)
def kjax_match_layers(
    model: str,
    keras_layers: Sequence["KerasLayerInfo"],
    flax_modules: Sequence["FlaxModuleInfo"],
) -> Mapping[str, Sequence[str]] | None:
    """Decide which Keras layer feeds which Flax submodule, for a model this plugin registered.

    Most plugins do not need this hook: :attr:`kjax_core.ModelSpec.matcher` chooses a matcher per
    model (``"default"``, ``"creation_order"`` or a ``"module:attr"`` of your own). Implement the
    hook where the decision needs more than the two lists a matcher receives (the model name).

    The core calls a plugin's implementation only for the models that plugin registered (the
    :class:`~kjax_core.ModelSpec` whose ``plugin`` is this plugin), never for another plugin's: an
    implementation that forgets to look at ``model`` cannot take over other families. It is called
    once per translation, after the Keras layers went through their rules and the Flax module was
    traced, and before the strict assembly. Returning None leaves the decision to the model's
    ``matcher``; any other answer is final (the spec's matcher does not run).

    The translator checks whatever is returned: every Keras weight used once, every Flax leaf
    filled once, shapes equal. An exception raised here, or an answer that is not a mapping of
    layer names to paths, fails the translation with a :class:`kjax_core.PluginError` naming the
    plugin; it does not unload the plugin.

    Keras' automatic layer names (``conv2d_17``) come from a per-process counter: never match on
    their numbers, only on their order (what the ``"creation_order"`` matcher does).

    :param model: the registry name of the model being translated (one of this plugin's).
    :param keras_layers: the weight-carrying Keras layers in model order, each a
        :class:`kjax_core.plugin_system.types.KerasLayerInfo` (name, class name, the variables its
        layer rule produced, their signature).
    :param flax_modules: every Flax module path that holds variables, in call order, each a
        :class:`kjax_core.plugin_system.types.FlaxModuleInfo` (path, leaf shapes, signature).
    :returns: ``{keras layer name: flax module path}`` for every Keras layer (a path is a tuple of
        submodule names, ``("mixed0", "branch1x1", "conv")``), or None.
    """
