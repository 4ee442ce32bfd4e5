"""The hooks a kjax plugin implements.

A plugin is a module (or object) with functions decorated by ``kjax_core.hookimpl`` whose names are
the hook names below, made known through an entry point in the ``kjax`` group::

    [project.entry-points.kjax]
    myfamily = "my_package"

The plugin module is imported when kjax first needs the registry, not when the CLI starts. Keep it
light: reference Keras constructors and Flax modules by ``"module:attr"`` strings (see
:class:`kjax_core.ModelSpec`) so that ``kjax list`` never imports TensorFlow, Keras, JAX or Flax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import pluggy

if TYPE_CHECKING:
    from .types import FlaxModuleInfo, KerasLayerInfo, LayerRule, ModelSpec

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


@hookspec(firstresult=True)
def kjax_match_layers(
    model: str,
    keras_layers: Sequence["KerasLayerInfo"],
    flax_modules: Sequence["FlaxModuleInfo"],
) -> dict[str, tuple[str, ...]] | None:
    """Decide which Keras layer feeds which Flax submodule.

    Called once per translation with the weight-carrying Keras layers (in model order) and the Flax
    submodules that hold variables (in definition order). Return a mapping from Keras layer name to
    Flax module path for every layer, or None to leave the question to the next implementation.
    The first non-None answer wins; the core's default runs last. It matches canonical names first
    (the Flax path joined with ``_`` equals the Keras layer name, so ``("conv2_block1", "1_conv")``
    is fed by ``conv2_block1_1_conv``), then pairs what is left in order within each kind of layer
    (same variable names and ranks; Keras model order against Flax call order), only where both
    sides have as many of that kind. It never relies on Keras' auto-generated numeric suffixes, which
    depend on a per-process counter. Where order is not enough (parallel branches whose layers have
    the same kind), implement this hook for your model.

    The translator checks whatever is returned: every Keras weight used once, every Flax leaf
    filled once, shapes equal.

    :param model: the registry name of the model being translated.
    :param keras_layers: :class:`kjax_core.plugin_system.types.KerasLayerInfo` items.
    :param flax_modules: :class:`kjax_core.plugin_system.types.FlaxModuleInfo` items.
    """
