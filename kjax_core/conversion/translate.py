"""The translation's one straight line: a model name and weights -> the Keras model -> its layers
through their rules -> matched to the Flax twin's modules -> the strict assembly.

1. walk the Keras layers in model order; each weight-carrying layer's weights go through the layer
   rule of its class and become a small variable subtree (:mod:`.keras_layers`);
2. ``jax.eval_shape(module.init)`` gives the Flax target tree and call order at no cost
   (:mod:`.flax_side`);
3. the model's matcher decides which Keras layer feeds which Flax module path (:mod:`.matching`);
4. the strict check: every Keras weight used exactly once, every Flax leaf filled exactly once, with
   equal shapes; anything else fails with one error naming all that did not match (:mod:`.assembly`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..plugin_system.registry import get_spec, registry
from ..plugin_system.types import KJAX_OPTIONS, ModelSpec, Path, Tree
from ..errors import OptionError, PluginError, WeightsError
from .assembly import assemble
from .flax_side import flax_modules, trace_flax
from .keras_layers import convert_keras_layers, iter_keras_layers
from .keras_model import KerasReference, build_keras_model, numpy_initializers, prepare_environment
from .keras_model import translation_backend
from .matching import MATCHERS, spec_matcher
from .options import check_drop_top, check_input_shape, check_options

# progress(event, done, total): events are "build" (Keras model, total None) and "layer".
Progress = Callable[[str, int, "int | None"], None]


def create_model(
    name: str, *, weights: str | None = None, dtype: Any = None, param_dtype: Any = None, **options: Any
):
    """The Flax module of ``name`` built with Keras' option names.

    :param options: ``include_top``, ``pooling``, ``classes``, ``classifier_activation`` and the
        family's own options (``kjax list`` and :meth:`ModelSpec.default_options` show them).
    :param dtype: computation dtype (e.g. ``jnp.bfloat16``); None keeps float32.
    :param param_dtype: dtype of the parameters; None keeps float32.
    :param weights: the named weight set (``"imagenet"``) whose graph to build, for the few Keras
        models whose graph depends on it (EfficientNet rescales its input once more for imagenet
        weights); None or a file path builds the graph Keras builds without named weights.
    """
    spec = get_spec(name)
    return _module(spec, check_options(spec, options), dtype, param_dtype, weights)


def _module(
    spec: ModelSpec,
    options: dict[str, Any],
    dtype: Any = None,
    param_dtype: Any = None,
    weights: str | None = None,
):
    extra = dict(spec.weights_options.get(weights, {})) if isinstance(weights, str) else {}
    if dtype is not None:
        extra["dtype"] = dtype
    if param_dtype is not None:
        extra["param_dtype"] = param_dtype
    factory = spec.load(spec.flax_module)
    options = dict(options)
    # kjax's own options reach a module only when asked for: a third-party module need not know
    # them, and one that does not is refused by name.
    for key, default in KJAX_OPTIONS.items():
        if options.get(key, default) == default:
            options.pop(key, None)
        elif key not in inspect.signature(factory).parameters:
            raise OptionError(f"{spec.name} does not offer {key} (its Flax module "
                              f"{spec.flax_module} has no such field)")
    return factory(**options, **extra)


@dataclass
class Translation:
    """A Flax module with the variables translated from its Keras reference."""

    spec: ModelSpec
    options: dict[str, Any]
    input_shape: tuple[int, int, int]
    module: Any
    variables: dict[str, Any]
    reference: KerasReference
    #: the Keras layers of the weights' model left out on purpose (``drop_top``), each with its
    #: weights' shapes: ``{"predictions": {"params/kernel": (2048, 1000), ...}}``
    dropped: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    #: what the variables are when they are no longer the translation's (see :meth:`with_variables`)
    variables_note: str | None = None
    #: the Keras graph the module runs, for a model converted by ``kjax convert``
    #: (:mod:`kjax_core.graph.describe`); None for a registered model
    graph: dict[str, Any] | None = None

    def with_variables(self, variables: dict[str, Any], note: str) -> "Translation":
        """This translation holding other ``variables`` of the same module (after fine-tuning),
        ``note`` saying what they are; :func:`kjax_core.save` records it beside the weights they
        started from. The variables must have the module's structure and shapes."""
        from flax import traverse_util

        def shapes(tree: Any) -> dict[Any, tuple[int, ...]]:
            return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(tree).items()}

        ours, theirs = shapes(self.variables), shapes(variables)
        if ours != theirs:
            differ = sorted("/".join(k) for k in ours.keys() ^ theirs.keys()) or sorted(
                "/".join(k) for k in ours if ours[k] != theirs[k])
            raise WeightsError(f"the variables do not fit {self.spec.name}'s module "
                               f"(first differences: {', '.join(differ[:4])})")
        return replace(self, variables=variables, variables_note=note)


def translate(
    name: str,
    weights: str | None = "imagenet",
    *,
    input_shape: tuple[int, int, int] | None = None,
    progress: Progress | None = None,
    keras_model: Any = None,
    drop_top: bool = False,
    **options: Any,
) -> Translation:
    """Build the Keras model of ``name`` with ``weights`` and translate them into its Flax twin.

    :param weights: ``"imagenet"`` (through Keras' download and cache), a weights file path, or
        None (Keras' random initial weights).
    :param input_shape: (H, W, C) for the Keras constructor; None takes Keras' default.
    :param keras_model: an already built Keras model of this spec and these options to translate
        instead of building one (the parity harness passes randomised models).
    :param drop_top: with ``include_top=False``: the weights are those of the model *with* top
        (a with-top file, or ``"imagenet"`` taken with top); Keras builds that model and the top's
        layers, which must all come after the rest in Keras' order, are left out on purpose and
        named in :attr:`Translation.dropped`. ``classes`` then describes the file's top.

    When Keras is not imported yet and KERAS_BACKEND is not set, Keras 3 models are built on the
    JAX backend (:func:`kjax_core.conversion.keras_model.translation_backend`): no TensorFlow import, less time
    and memory, the same weights. Import Keras first (or set KERAS_BACKEND) to choose otherwise.
    """
    spec = get_spec(name)
    options = check_options(spec, options)
    keras_built_with = options
    if drop_top:
        keras_built_with = check_drop_top(options, weights is not None or keras_model is not None)
    if input_shape is not None:
        input_shape = check_input_shape(spec, input_shape)
    if keras_model is None:
        if progress:
            progress("build", 0, None)
        prepare_environment(translation_backend(spec))
        with numpy_initializers():  # Keras on JAX: initial weights without one XLA compile each
            reference = build_keras_model(spec, keras_built_with, weights, input_shape)
    else:
        reference = KerasReference(keras_model, weights, None)
    # The graph of the set the reference was built for ("imagenet=PATH" is the imagenet set).
    module = _module(spec, options, weights=reference.weights)
    total = sum(1 for layer in iter_keras_layers(reference.model) if layer.weights)
    done = 0

    def step(_layer_name: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress("layer", done, total)

    # Keras' input shape, with the default size where the Keras model takes any size.
    shape = tuple(int(d) if d is not None else s
                  for d, s in zip(reference.model.inputs[0].shape[1:], spec.input_size))
    variables, dropped = _translate(spec, reference.model, module, shape, step, drop_top)
    return Translation(spec, options, shape, module, variables, reference, dropped)


def translate_keras_model(
    model: ModelSpec | str,
    keras_model: Any,
    module: Any,
    input_shape: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> Tree:
    """Translate a built Keras model into the variables of ``module``.

    :param model: the model's spec, or its registry name; decides the name matching
        (:func:`match_layers`).
    :param keras_model: a Keras 3 or tf_keras model holding the weights.
    :param module: the Flax twin (a ``flax.linen.Module``).
    :param input_shape: (H, W, C) of one image, to trace the module's variable shapes.
    :param progress: called with each Keras layer name once it is converted.
    :returns: ``{"params": ..., "batch_stats": ...}`` as nested dicts of numpy arrays.
    """
    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    return _translate(spec, keras_model, module, input_shape, progress)[0]


def _translate(
    spec: ModelSpec, keras_model: Any, module: Any, input_shape: Sequence[int],
    progress: Callable[[str], None] | None = None, drop_top: bool = False,
) -> tuple[Tree, dict[str, dict[str, tuple[int, ...]]]]:
    """:func:`translate_keras_model`, and the layers ``drop_top`` left out (see
    :func:`drop_top_layers`)."""
    reg = registry()
    layers = convert_keras_layers(keras_model, reg.rules, progress)
    target, call_order = trace_flax(module, input_shape)
    modules = flax_modules(target, call_order)
    assignment = match_layers(spec, layers, modules, reg)
    dropped: dict[str, dict[str, tuple[int, ...]]] = {}
    if drop_top:
        layers, dropped = drop_top_layers(spec.name, layers, assignment)
    return assemble(spec.name, layers, target, assignment), dropped


def drop_top_layers(model_name: str, layers: Sequence[Any], assignment: dict[str, Path]):
    """The Keras layers no Flax module takes, left out as the top: they must all come after
    every matched layer in Keras' model order (a top is the end of the model; an unmatched layer
    in the middle is an error, as without ``drop_top``). Returns (the other layers, the dropped
    ones with their weights' shapes)."""
    from flax import traverse_util

    matched = [i for i, layer in enumerate(layers) if layer.name in assignment]
    last = matched[-1] if matched else -1
    inside = [layer.name for layer in layers[:last] if layer.name not in assignment]
    if inside:
        raise WeightsError(
            f"drop_top leaves out only the end of {model_name}'s Keras model, but the layers "
            f"{', '.join(repr(n) for n in inside[:8])} match no Flax module and come before "
            f"'{layers[last].name}'")
    dropped = {layer.name: {"/".join(path): tuple(np.shape(value)) for path, value in
                            traverse_util.flatten_dict(layer.variables).items()}
               for layer in layers[last + 1:]}
    if not dropped:
        raise WeightsError(f"drop_top: the weights' model of {model_name} has no layer beyond "
                           f"the model without top (is it a file without top?)")
    return list(layers[:last + 1]), dropped


def match_layers(spec: ModelSpec, layers: Any, modules: Any, reg: Any = None) -> dict[str, Path]:
    """Which Keras layer feeds which Flax module path, for the model of ``spec``.

    First the ``kjax_match_layers`` hook of the plugin that registered the model (``spec.plugin``),
    called through pluggy with that plugin alone
    (:func:`kjax_core.plugin_system.registry.plugin_hook`): no other plugin's implementation runs,
    so none can answer for a model it does not own. If it answers None, or implements no such
    hook, the model's matcher decides (:func:`kjax_core.conversion.matching.spec_matcher`). A hook
    or a matcher of the plugin that raises, or answers something else than a mapping of names to
    paths, fails with a PluginError naming the plugin.
    """
    reg = reg or registry()
    hook = reg.plugin_hook(spec.plugin, "kjax_match_layers") if spec.plugin else None
    source, answer = "kjax_match_layers", None
    try:
        if hook is not None:
            answer = hook(model=spec.name, keras_layers=layers, flax_modules=modules)
        if answer is None:
            source = f"matcher {spec.matcher}"
            answer = spec_matcher(spec)(layers, modules)
        return {str(name): tuple(path) for name, path in dict(answer).items()}
    except PluginError:
        raise
    except Exception as error:
        if spec.matcher in MATCHERS and source != "kjax_match_layers":
            raise  # the core's own matcher: a bug in kjax, with its traceback
        raise PluginError(
            f"plugin '{spec.plugin}' failed to match layers for {spec.name} ({source}): "
            f"{type(error).__name__}: {error}"
        ) from None


def new_top(
    translation: Translation, classes: int, *, classifier_activation: str | None = None,
    seed: int = 0,
) -> Translation:
    """A model with a new top for ``classes`` classes on the backbone of ``translation`` (one
    without top: ``include_top=False``, or ``drop_top=True`` from a with-top file): the family's
    own Keras top, its layers initialised as Keras initialises them (kernels Glorot-uniform from
    ``seed``, biases zero), every other variable the translation's. ``classifier_activation``
    defaults to None: logits, what a cross-entropy loss takes. The result's
    :attr:`Translation.variables_note` says which layers are new."""
    import jax
    from flax import traverse_util

    from .flax_side import flax_target

    if translation.options["include_top"]:
        raise OptionError(f"new_top replaces no top: translate {translation.spec.name} with "
                          f"include_top=False (or drop_top=True from a file with top)")
    options = check_options(translation.spec, {
        **translation.options, "include_top": True, "pooling": None, "features_only": False,
        "classes": classes, "classifier_activation": classifier_activation})
    module = _module(translation.spec, options, weights=translation.reference.weights)
    target = traverse_util.flatten_dict(flax_target(module, translation.input_shape))
    have = traverse_util.flatten_dict(translation.variables)
    new = sorted(path for path in target if path not in have)
    unused = sorted("/".join(p) for p in have if p not in target)
    if unused:
        raise WeightsError(f"new_top: the backbone's variables {', '.join(unused[:4])} have no "
                           f"place in {translation.spec.name} with top")
    keys = iter(jax.random.split(jax.random.key(seed), max(1, len(new))))
    values = dict(have)
    for path in new:
        leaf = target[path]
        if path[-1] == "kernel":  # Keras' default for Dense and Conv2D
            value = jax.nn.initializers.glorot_uniform()(next(keys), leaf.shape, leaf.dtype)
        elif path[-1] in ("scale", "var"):
            value = np.ones(leaf.shape, leaf.dtype)
        else:
            value = np.zeros(leaf.shape, leaf.dtype)
        values[path] = np.asarray(value)
    layers = sorted({"/".join(path[1:-1]) for path in new})
    note = (f"top for {classes} classes: {', '.join(layers)} initialised (Glorot-uniform "
            f"kernels, seed {seed}); the rest translated")
    return replace(translation, options=options, module=module,
                   variables=traverse_util.unflatten_dict(values), variables_note=note)
