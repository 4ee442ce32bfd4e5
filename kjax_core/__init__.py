"""kjax: Keras Applications models in Flax, with their pretrained weights.

Importing this package is cheap (no TensorFlow, Keras, JAX or Flax); the functions that need them
import them when called.
"""

from __future__ import annotations

from importlib import metadata as _metadata
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
from .hookspecs import hookimpl
from .plugins import get_spec, list_models
from .spec import LayerRule, ModelSpec

try:
    __version__ = _metadata.version("kjax")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CorruptFileError", "KjaxError", "LayerRule", "ModelSpec", "OptionError", "OutputError",
    "PluginError", "UnknownModelError", "WeightsError", "create_model", "fold_batch_norm", "get_spec",
    "hookimpl", "list_models", "load", "predictor", "preprocess_input", "save", "translate",
]


def create_model(name: str, **options: Any):
    """The Flax module of a registered model (see :func:`kjax_core.api.create_model`)."""
    from .api import create_model as _create_model

    return _create_model(name, **options)


def translate(name: str, weights: str | None = "imagenet", **options: Any):
    """Keras weights -> Flax variables (see :func:`kjax_core.api.translate`)."""
    from .api import translate as _translate

    return _translate(name, weights, **options)


def save(translation, path, **options: Any):
    """Write a translation to a directory (see :func:`kjax_core.io.save`)."""
    from .io import save as _save

    return _save(translation, path, **options)


def load(path):
    """``(module, variables)`` from a directory written by ``kjax translate`` or :func:`save`."""
    from .io import load as _load

    return _load(path)


def predictor(module, variables, **options: Any):
    """``predict(images)``: the fast inference path, BatchNorm folded, optionally bfloat16 or over
    all devices (see :func:`kjax_core.inference.predictor`)."""
    from .inference import predictor as _predictor

    return _predictor(module, variables, **options)


def fold_batch_norm(module, variables, **options: Any):
    """``(folded_module, folded_variables)`` with each BatchNorm that follows a convolution folded
    into it, for inference (see :func:`kjax_core.fold.fold_batch_norm`)."""
    from .fold import fold_batch_norm as _fold_batch_norm

    return _fold_batch_norm(module, variables, **options)


def preprocess_input(name: str, images):
    """The preprocessing a model expects outside its graph (see :mod:`kjax_core.preprocessing`)."""
    from .preprocessing import preprocess_input as _preprocess_input

    return _preprocess_input(name, images)
