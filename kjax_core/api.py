"""The library's main entry points: create a Flax model, translate Keras weights into it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .keras_ref import KerasReference, build_keras_model, numpy_initializers, prepare_environment
from .keras_ref import translation_backend
from .options import check_input_shape, check_options
from .plugins import get_spec
from .spec import ModelSpec

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
    return spec.load(spec.flax_module)(**options, **extra)


@dataclass
class Translation:
    """A Flax module with the variables translated from its Keras reference."""

    spec: ModelSpec
    options: dict[str, Any]
    input_shape: tuple[int, int, int]
    module: Any
    variables: dict[str, Any]
    reference: KerasReference


def translate(
    name: str,
    weights: str | None = "imagenet",
    *,
    input_shape: tuple[int, int, int] | None = None,
    progress: Progress | None = None,
    keras_model: Any = None,
    **options: Any,
) -> Translation:
    """Build the Keras model of ``name`` with ``weights`` and translate them into its Flax twin.

    :param weights: ``"imagenet"`` (through Keras' download and cache), a weights file path, or
        None (Keras' random initial weights).
    :param input_shape: (H, W, C) for the Keras constructor; None takes Keras' default.
    :param keras_model: an already built Keras model of this spec and these options to translate
        instead of building one (the parity harness passes randomised models).

    When Keras is not imported yet and KERAS_BACKEND is not set, Keras 3 models are built on the
    JAX backend (:func:`kjax_core.keras_ref.translation_backend`): no TensorFlow import, less time
    and memory, the same weights. Import Keras first (or set KERAS_BACKEND) to choose otherwise.
    """
    spec = get_spec(name)
    options = check_options(spec, options)
    if input_shape is not None:
        input_shape = check_input_shape(spec, input_shape)
    if keras_model is None:
        if progress:
            progress("build", 0, None)
        prepare_environment(translation_backend(spec))
        with numpy_initializers():  # Keras on JAX: initial weights without one XLA compile each
            reference = build_keras_model(spec, options, weights, input_shape)
    else:
        reference = KerasReference(keras_model, weights, None)
    from .translator import iter_keras_layers, translate_keras_model

    module = _module(spec, options, weights=weights)
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
    variables = translate_keras_model(spec.name, reference.model, module, shape, step)
    return Translation(spec, options, shape, module, variables, reference)
