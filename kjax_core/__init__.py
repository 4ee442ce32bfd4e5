"""kjax: Keras Applications models in Flax, with their pretrained weights.

Importing this package is cheap (no TensorFlow, Keras, JAX or Flax); the functions that need them
import them when called.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CorruptFileError,
    InputError,
    KjaxError,
    OptionError,
    OutputError,
    PluginError,
    UnknownModelError,
    UnsupportedModelError,
    WeightsError,
)
from .plugin_system.hookspecs import hookimpl
from .plugin_system.registry import get_spec, list_models
from .plugin_system.types import LayerOp, LayerRule, ModelSpec, register_family
from .version import __version__


__all__ = [
    "CorruptFileError", "InputError", "KjaxError", "LayerOp", "LayerRule", "ModelSpec", "OptionError",
    "OutputError", "PluginError", "UnknownModelError", "WeightsError", "check_images", "create_model",
    "decode_predictions", "fold_batch_norm", "get_spec", "hookimpl", "list_models", "load",
    "load_image", "new_top", "predictor", "preprocess_input", "pretrained", "register_family", "save", "to_nnx",
    "translate", "UnsupportedModelError", "convert", "convert_keras_model",
]


def create_model(name: str, **options: Any):
    """The Flax module of a registered model (see :func:`kjax_core.conversion.translate.create_model`)."""
    from .conversion.translate import create_model as _create_model

    return _create_model(name, **options)


def translate(name: str, weights: str | None = "imagenet", **options: Any):
    """Keras weights -> Flax variables (see :func:`kjax_core.conversion.translate.translate`).

    :param weights: a named set (``"imagenet"``), None or ``"none"`` (Keras' random initial
        weights), a weights file path, or ``"SET=PATH"`` (a file holding the set SET, built and
        loaded as Keras does for SET). Unknown sets and missing files fail before Keras loads.
    """
    from .cache import translate_weights

    return translate_weights(name, weights, **options)


def pretrained(name: str, weights: str = "imagenet", **options: Any):
    """``(module, variables)``: translated on the first call into the kjax cache (``$KJAX_CACHE``,
    default ``~/.cache/kjax``), loaded from it afterwards without TensorFlow or Keras (see
    :func:`kjax_core.cache.pretrained`)."""
    from .cache import pretrained as _pretrained

    return _pretrained(name, weights, **options)


def decode_predictions(preds, top: int = 5):
    """Keras' ``decode_predictions``, offline: the ``top`` ImageNet classes of each row as
    ``(wordnet_id, label, score)`` (see :mod:`kjax_core.imagenet`)."""
    from .imagenet import decode_predictions as _decode_predictions

    return _decode_predictions(preds, top)


def load_image(path, target_size=None, interpolation: str = "nearest"):
    """An image file as Keras' ``img_to_array(load_img(path, target_size=...))``: float32 RGB
    (height, width, 3) in [0, 255] (see :mod:`kjax_core.images`)."""
    from .images import load_image as _load_image

    return _load_image(path, target_size, interpolation)


def check_images(images, model: str):
    """Fail with a clear message unless ``images`` is a batch (N, H, W, C), channels last, as
    ``model`` (a registered name) takes."""
    from .images import check_images as _check_images

    return _check_images(images, get_spec(model).input_size, model)


def save(translation, path, **options: Any):
    """Write a translation to a directory (see :func:`kjax_core.storage.output.save`)."""
    from .storage.output import save as _save

    return _save(translation, path, **options)


def convert(path):
    """Any Keras model saved whole (``.keras`` or full-model ``.h5``) as a translation whose module
    runs its graph (see :func:`kjax_core.graph.converter.convert`); ``save`` it as any other."""
    from .graph.converter import convert as _convert

    return _convert(path)


def convert_keras_model(model):
    """:func:`convert` of a Keras model already in memory (see
    :func:`kjax_core.graph.converter.convert_keras_model`)."""
    from .graph.converter import convert_keras_model as _convert_keras_model

    return _convert_keras_model(model)


def new_top(translation, classes: int, **options: Any):
    """A translation without top given a new top for ``classes`` classes, initialised as Keras
    does (see :func:`kjax_core.conversion.translate.new_top`): the start of fine-tuning."""
    from .conversion.translate import new_top as _new_top

    return _new_top(translation, classes, **options)


def load(path, *, nnx: bool = False, rngs: Any = 0):
    """``(module, variables)`` from a directory written by ``kjax translate`` or :func:`save`;
    with ``nnx=True`` one Flax NNX module holding them (see :func:`to_nnx`)."""
    from .storage.output import load as _load

    return _load(path, nnx=nnx, rngs=rngs)


def to_nnx(module, variables, **options: Any):
    """A Linen module and its variables as one Flax NNX module, through ``flax.nnx.bridge.ToNNX``:
    ``model(images)``, ``model(images, train=True)`` updating its batch statistics; ``rngs=``
    seeds dropout (see :func:`kjax_core.nnx.to_nnx`)."""
    from .nnx import to_nnx as _to_nnx

    return _to_nnx(module, variables, **options)


def predictor(module, variables, **options: Any):
    """``predict(images)``: the fast inference path, BatchNorm folded, optionally bfloat16 or over
    all devices (see :func:`kjax_core.inference.predictor`)."""
    from .inference.predictor import predictor as _predictor

    return _predictor(module, variables, **options)


def fold_batch_norm(module, variables, **options: Any):
    """``(folded_module, folded_variables)`` with each BatchNorm that follows a convolution folded
    into it, for inference (see :func:`kjax_core.inference.fold.fold_batch_norm`)."""
    from .inference.fold import fold_batch_norm as _fold_batch_norm

    return _fold_batch_norm(module, variables, **options)


def preprocess_input(name: str, images):
    """The preprocessing a model expects outside its graph (see :mod:`kjax_core.preprocessing`)."""
    from .preprocessing import preprocess_input as _preprocess_input

    return _preprocess_input(name, images)
