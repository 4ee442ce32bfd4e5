"""kjax: Keras Applications models in Flax, with their pretrained weights.

Importing this package is cheap (no TensorFlow, Keras, JAX or Flax); the functions that need them
import them when called.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CorruptFileError,
    KjaxError,
    OptionError,
    OutputError,
    PluginError,
    UnknownModelError,
    WeightsError,
)
from .plugin_system.hookspecs import hookimpl
from .plugin_system.registry import get_spec, list_models
from .plugin_system.types import LayerRule, ModelSpec
from .version import __version__


__all__ = [
    "CorruptFileError", "KjaxError", "LayerRule", "ModelSpec", "OptionError", "OutputError",
    "PluginError", "UnknownModelError", "WeightsError", "create_model", "fold_batch_norm", "get_spec",
    "hookimpl", "list_models", "load", "predictor", "preprocess_input", "save", "translate",
]


def create_model(name: str, **options: Any):
    """The Flax module of a registered model (see :func:`kjax_core.conversion.translate.create_model`)."""
    from .conversion.translate import create_model as _create_model

    return _create_model(name, **options)


def translate(name: str, weights: str | None = "imagenet", **options: Any):
    """Keras weights -> Flax variables (see :func:`kjax_core.conversion.translate.translate`)."""
    from .conversion.translate import translate as _translate

    return _translate(name, weights, **options)


def save(translation, path, **options: Any):
    """Write a translation to a directory (see :func:`kjax_core.storage.output.save`)."""
    from .storage.output import save as _save

    return _save(translation, path, **options)


def load(path):
    """``(module, variables)`` from a directory written by ``kjax translate`` or :func:`save`."""
    from .storage.output import load as _load

    return _load(path)


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
