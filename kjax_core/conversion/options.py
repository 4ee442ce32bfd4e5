"""Checking the options a user passes for a model, before anything heavy is imported."""

from __future__ import annotations

import difflib
from typing import Any

from ..errors import OptionError
from ..plugin_system.types import ModelSpec

POOLING = (None, "avg", "max")
# kjax_core.nn.TRAINING_MODES, repeated here so that checking options imports no JAX (a test keeps
# them equal).
TRAINING_MODES = ("all", "batch_norm", "dropout")
# Activations the Flax classifier head implements (kjax_core.nn.ACTIVATIONS; a test keeps them equal).
CLASSIFIER_ACTIVATIONS = (
    None, "linear", "softmax", "sigmoid", "relu", "relu6", "swish", "silu", "tanh", "gelu",
    "hard_sigmoid", "hard_silu", "hard_swish",
)


def parse_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value: true/false, none, int, float, or the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_options(spec: ModelSpec, options: dict[str, Any]) -> dict[str, Any]:
    """All options of ``spec`` with the given ones applied, each checked for name and type."""
    defaults = spec.default_options()
    result = dict(defaults)
    for key, value in options.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise OptionError(
                f"{spec.name} has no option '{key}'.{hint} "
                f"Its options: {', '.join(sorted(defaults))}."
            )
        default = defaults[key]
        if default is not None and value is not None:
            expected = type(default)
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise OptionError(
                    f"option '{key}' of {spec.name} takes a {expected.__name__}, "
                    f"got {value!r}"
                )
        result[key] = value
    if result["pooling"] not in POOLING:
        raise OptionError(f"pooling must be one of none, avg, max; got {result['pooling']!r}")
    if result["classifier_activation"] not in CLASSIFIER_ACTIVATIONS:
        known = ", ".join(a or "none" for a in CLASSIFIER_ACTIVATIONS)
        raise OptionError(
            f"classifier_activation must be one of {known}; got {result['classifier_activation']!r}"
        )
    if not isinstance(result["classes"], int) or result["classes"] < 1:
        raise OptionError(f"classes must be a positive integer; got {result['classes']!r}")
    if result["training"] not in TRAINING_MODES:
        raise OptionError(f"training must be one of {', '.join(TRAINING_MODES)} (what train=True "
                          f"trains: everything, BatchNorm only, dropout only); got "
                          f"{result['training']!r}")
    if result["features_only"] and (result["include_top"] or result["pooling"] is not None):
        raise OptionError("features_only=True returns the feature maps of the model without top: "
                          "it needs include_top=False and pooling=None")
    return result


def check_input_shape(spec: ModelSpec, shape: Any) -> tuple[int, int, int]:
    """(height, width, channels) as Keras takes it for this model."""
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise OptionError(f"input shape must be three integers H,W,C; got {shape!r}") from None
    if len(shape) != 3:
        raise OptionError(f"input shape must be three integers H,W,C; got {shape!r}")
    height, width, channels = shape
    if channels != spec.input_size[2]:
        raise OptionError(f"{spec.name} takes {spec.input_size[2]} channels; got {channels}")
    if min(height, width) < spec.min_input_size:
        raise OptionError(
            f"{spec.name} needs inputs of at least {spec.min_input_size}x{spec.min_input_size}; "
            f"got {height}x{width}"
        )
    return shape


def check_drop_top(options: dict[str, Any], has_weights: bool) -> dict[str, Any]:
    """The options Keras builds the weights' model with when ``drop_top`` leaves its top out
    (see :func:`kjax_core.conversion.translate.translate`): the same, with top."""
    if options["include_top"]:
        raise OptionError("drop_top leaves out the top of the weights' model: it needs "
                          "include_top=False (the model you get)")
    if not has_weights:
        raise OptionError("drop_top leaves out the top of a weights file's model: pass the "
                          "weights (a file with top, or imagenet)")
    return {**options, "include_top": True, "pooling": None, "features_only": False}
