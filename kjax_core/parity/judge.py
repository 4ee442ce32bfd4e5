"""The judge: kjax in float64 and float32 against Keras' float64 twin, on a prepared reference
(:mod:`.reference`), with proof that the comparison could have failed. See :mod:`kjax_core.parity`."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..conversion.keras_layers import iter_keras_layers
from ..conversion.keras_model import prepare_environment
from ..plugin_system.registry import get_spec
from ..preprocessing import apply_mode
from .features import keras_features
from .reference import (
    float64_module, float64_variables, keras_float64, parity_settings, prepare_reference,
    sample_images,
)


def relative_error(actual: Any, expected: Any) -> float:
    """||actual - expected|| / ||expected|| over all elements (float64)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))



def break_translation(variables: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A deliberately wrong version of ``variables``: the first BatchNorm's statistics left at
    their initial values (mean 0, variance 1: the classic "batch_stats not loaded" bug), or, in a
    model without BatchNorm, its first kernel negated. Returns (what was broken, the version).

    Only the dicts on the path to the changed leaves are copied; every other leaf is shared with
    ``variables`` (left as it was), so a check holds one copy of a big model's variables, not
    two (convnextxlarge: 1.4 GB in float32, 2.8 GB in float64)."""
    from flax import traverse_util

    for collection, leaf, what in (("batch_stats", "mean", "reset to mean 0, var 1"),
                                   ("params", "kernel", "negated")):
        for path in traverse_util.flatten_dict(variables.get(collection, {})):
            if path[-1] != leaf:
                continue
            broken = dict(variables)
            parent = broken[collection] = dict(variables[collection])
            for key in path[:-1]:
                parent[key] = dict(parent[key])
                parent = parent[key]
            if collection == "batch_stats":
                parent["mean"] = np.zeros_like(parent["mean"])
                parent["var"] = np.ones_like(parent["var"])
            else:
                parent["kernel"] = -np.asarray(parent["kernel"])
            return f"{collection}/{'/'.join(path[:-1])} {what}", broken
    raise ValueError("nothing to break: the model has no BatchNorm statistics and no kernel")


def _numpy(outputs: Any) -> Any:
    """A model's output as numpy: an array, or a dict of arrays (a feature pyramid)."""
    if isinstance(outputs, dict):
        return {key: np.asarray(value) for key, value in outputs.items()}
    return np.asarray(outputs)


def _arrays(outputs: Any) -> list[np.ndarray]:
    return [outputs[k] for k in sorted(outputs)] if isinstance(outputs, dict) else [outputs]


def _error(actual: Any, expected: Any) -> float:
    """:func:`relative_error`; for feature pyramids the largest over the levels, so a level that
    is wrong alone (a map tapped at the wrong layer) is not hidden by the others' norms."""
    if isinstance(expected, dict):
        return max(relative_error(actual[key], expected[key]) for key in expected)
    return relative_error(actual, expected)


FLOAT64_TOLERANCE = 1e-9  # kjax float64 against Keras float64: a correct twin lands near 1e-14
FLOAT32_FACTOR = 2.0  # kjax float32 may be this many times as far from Keras float64 as Keras float32
# The test must be able to fail: two different images, and a deliberately broken translation,
# must be this far (relative) from the reference, far above the float64 tolerance.
MIN_SENSITIVITY = 1e-4


@dataclass
class ParityReport:
    """What one parity check measured. Relative L2 errors, all against Keras in float64.

    The judge: kjax in float64 within ``tolerance`` of Keras in float64 (``error64``), and kjax
    in float32 no more than ``float32_factor`` times as far from it as Keras' own float32 model
    (``error32`` against ``keras_error32``). The check proves it can fail: the float64 outputs
    for two different images differ by more than ``MIN_SENSITIVITY`` and so does a deliberately
    broken translation.
    """

    model: str
    input_shape: tuple[int, ...]
    options: dict[str, Any]
    output_shape: Any  # a tuple; for a feature pyramid, {level: tuple}
    error64: float  # kjax float64 vs Keras float64
    max_abs_error64: float
    error32: float | None  # kjax float32 vs Keras float64 (None: float32 not checked)
    keras_error32: float | None  # Keras float32 vs Keras float64
    sensitivity: float  # relative difference between the float64 outputs of two images
    broken: str  # what the deliberately broken translation changed
    broken_error: float  # its float64 relative error against Keras float64
    tolerance: float = FLOAT64_TOLERANCE
    float32_factor: float = FLOAT32_FACTOR

    @property
    def float32_limit(self) -> float:
        return self.float32_factor * (self.keras_error32 or 0.0)

    @property
    def mismatches(self) -> list[str]:
        """Where kjax differs from Keras beyond the judge's bounds (NaN counts)."""
        found = []
        if not self.error64 <= self.tolerance:
            found.append(f"float64 error {self.error64:.3g} > {self.tolerance:g}")
        if self.error32 is not None and not self.error32 <= self.float32_limit:
            found.append(f"float32 error {self.error32:.3g} > {self.float32_factor:g} x Keras' own "
                         f"float32 error {self.keras_error32:.3g}")
        return found

    @property
    def weaknesses(self) -> list[str]:
        """Why the check could not have failed, if it could not (e.g. Keras' initial weights)."""
        found = []
        if not self.sensitivity > MIN_SENSITIVITY:
            found.append(f"outputs of different images differ by only {self.sensitivity:.3g}; the "
                         f"test cannot tell errors apart (need > {MIN_SENSITIVITY:g})")
        if not self.broken_error > MIN_SENSITIVITY:
            found.append(f"a broken translation ({self.broken}) passes: error {self.broken_error:.3g}")
        return found

    @property
    def problems(self) -> list[str]:
        return self.mismatches + self.weaknesses

    @property
    def matches(self) -> bool:
        return not self.mismatches

    @property
    def conclusive(self) -> bool:
        return not self.weaknesses

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        f32 = ("" if self.error32 is None else
               f", f32 {self.error32:.2e} (Keras f32 {self.keras_error32:.2e})")
        return (f"{self.model} {shape} {self.options}: f64 {self.error64:.2e}{f32}, "
                f"images differ {self.sensitivity:.2e}, broken {self.broken_error:.2e}")


def compare(
    translation: Any, keras_model: Any, images: np.ndarray, *, float32: bool = True,
    tolerance: float = FLOAT64_TOLERANCE, float32_factor: float = FLOAT32_FACTOR,
) -> ParityReport:
    """Judge the translated Flax model against Keras on ``images`` (raw, [0, 255]; the model's
    preprocessing is applied first, in float32, and the same values are given to both dtypes).

    Keras' float64 twin (:func:`keras_float64`) is the reference. With ``float32`` the float32
    models are measured against it too (kjax and Keras); without, only the float64 judge runs.
    """
    import jax

    x32 = np.asarray(apply_mode(translation.spec.preprocessing, images), np.float32)
    x64 = x32.astype(np.float64)
    # kjax's float64 copy of the variables is dropped before Keras' float64 twin is built or
    # filled: the two are never held at once (convnextxlarge: 2.8 GB each).
    with jax.enable_x64(True):
        apply64 = jax.jit(float64_module(translation.module).apply)
        # One float64 copy of the variables, on the device, made leaf by leaf; the broken
        # translation shares all of it but the leaves it changes.
        variables64 = jax.tree.map(lambda a: jax.device_put(float64_variables(a)),
                                   translation.variables)
        actual = _numpy(apply64(variables64, x64))
        what, broken = break_translation(variables64)
        broken_out = _numpy(apply64(broken, x64))
        del variables64, broken
    keras64 = keras_float64(translation, keras_model)
    features = bool(translation.options.get("features_only"))
    if features:  # the feature pyramid: Keras' layers found from its graph alone
        keras64, keras_model = keras_features(keras64), keras_features(keras_model)
    expected = _numpy(keras64(x64, training=False))
    if features and set(actual) != set(expected):
        raise AssertionError(f"kjax gives the feature levels {sorted(actual)}, Keras' graph "
                             f"{sorted(expected)}")
    error32 = keras_error32 = None
    if float32:
        keras32 = _numpy(keras_model(x32, training=False))
        ours32 = _numpy(jax.jit(translation.module.apply)(translation.variables, x32))
        if any(a.dtype != np.float32 for a in _arrays(ours32)):
            raise AssertionError(f"the float32 model returned {_arrays(ours32)[0].dtype}")
        error32, keras_error32 = _error(ours32, expected), _error(keras32, expected)
    if any(a.dtype != np.float64 for a in _arrays(actual)):
        raise AssertionError(f"the float64 model returned {_arrays(actual)[0].dtype}")
    batch = len(_arrays(actual)[0])
    sensitivity = (min(relative_error(a[:1], a[1:2]) for a in _arrays(actual))
                   if batch > 1 else float("inf"))
    return ParityReport(
        model=translation.spec.name,
        input_shape=tuple(images.shape[1:]),
        options={k: v for k, v in translation.options.items()
                 if v != translation.spec.default_options()[k]},
        output_shape=(tuple(actual.shape) if not features
                      else {k: tuple(v.shape) for k, v in actual.items()}),
        error64=_error(actual, expected),
        max_abs_error64=max(float(np.max(np.abs(a - e)))
                            for a, e in zip(_arrays(actual), _arrays(expected))),
        error32=error32,
        keras_error32=keras_error32,
        sensitivity=sensitivity,
        broken=what,
        broken_error=_error(broken_out, expected),
        tolerance=tolerance,
        float32_factor=float32_factor,
    )


def reference_model(
    name: str,
    *,
    input_shape: tuple[int | None, int | None, int] | None = None,
    calibration_shape: tuple[int, int] | None = None,
    calibration_batch: int | None = None,
    seed: int = 0,
    weights: str | None = None,
    prepare: bool = True,
    **options: Any,
):
    """Build the Keras model of ``name`` with ``weights`` and, with ``prepare``, randomise it and
    calibrate its statistics (see the module doc); then translate it.

    ``input_shape`` may have None for height and width (Keras then accepts any size, so one
    reference serves several sizes); calibration then runs at ``calibration_shape`` or the default.
    Statistics are calibrated as the spec's ``parity`` settings say, on ``calibration_batch``
    images: by default 4, and for "in_order" models at small sizes as many as hold the pixels of 4
    images of 224x224 (a deep net's last stages then see few positions per image, and statistics
    from a few images do not carry over to others: EfficientNetB7 at 33x97 is chaotic with 4
    calibration images and agrees with Keras to 1.2e-5 with 64).
    Returns ``(translation, keras_model)``.
    """
    prepare_environment()
    from ..conversion.translate import translate
    from ..conversion.keras_model import build_keras_model, placeholder_initializers
    from ..conversion.options import check_options

    spec = get_spec(name)
    checked = check_options(spec, options)
    # Weights that randomize() overwrites need not be drawn at random first.
    placeholders = placeholder_initializers() if prepare and weights is None else contextlib.nullcontext()
    with placeholders:
        keras_model = build_keras_model(spec, checked, weights, input_shape).model
    height = input_shape[0] if input_shape and input_shape[0] else None
    width = input_shape[1] if input_shape and input_shape[1] else None
    calib = calibration_shape or (height or spec.input_size[0], width or spec.input_size[1])
    if prepare:
        settings = parity_settings(spec)
        if calibration_batch is None:
            calibration_batch = 4
            if settings["calibration"] == "in_order":
                calibration_batch = max(4, math.ceil(4 * 224 * 224 / (calib[0] * calib[1])))
        images = sample_images((calibration_batch, *calib, spec.input_size[2]), seed + 100)
        prepare_reference(keras_model, apply_mode(spec.preprocessing, images), seed,
                          settings["calibration"])
    translation = translate(name, weights, keras_model=keras_model, **options)
    return translation, keras_model


def check(
    name: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    sizes: list[tuple[int, int]] | None = None,
    batch: int = 2,
    seed: int = 0,
    float32: bool = True,
    tolerance: float = FLOAT64_TOLERANCE,
    calibration_batch: int | None = None,
    **options: Any,
) -> list[ParityReport]:
    """Parity of ``name`` against Keras on randomised, calibrated weights (:func:`compare`).

    Either one ``input_shape`` (the Keras model is built for it; needed with ``include_top``), or
    ``sizes``: one Keras model built for any size, checked at each (height, width).
    """
    spec = get_spec(name)
    channels = spec.input_size[2]
    if sizes:
        translation, keras_model = reference_model(
            name, input_shape=(None, None, channels), calibration_shape=sizes[0], seed=seed,
            calibration_batch=calibration_batch, **options
        )
    else:
        shape = tuple(input_shape or spec.input_size)
        translation, keras_model = reference_model(
            name, input_shape=shape, seed=seed, calibration_batch=calibration_batch, **options
        )
        sizes = [shape[:2]]
    return [
        compare(translation, keras_model, sample_images((batch, h, w, channels), seed + 7 + i),
                float32=float32, tolerance=tolerance)
        for i, (h, w) in enumerate(sizes)
    ]


def assert_train_step(
    translation: Any,
    keras_model: Any,
    images: Any,
    batch_norm: str,
    path: tuple[str, ...],
    *,
    module: Any = None,
    tolerance: float = FLOAT64_TOLERANCE,
    statistics: str = "float64",
) -> dict[str, Any]:
    """One training-mode pass in float64 against Keras' float64 twin with ``training=True`` on the
    same ``images`` (already preprocessed): the outputs agree within ``tolerance``, and the moving
    statistics of the BatchNorm Keras names ``batch_norm`` (``path`` in Flax's ``batch_stats``)
    stepped as Keras' did (the steps new - old are compared, within ``tolerance``).

    ``statistics="float32"`` compares the steps against Keras' float32 model instead (within
    1e-5), for Keras whose float64 kernel updates otherwise than the float32 one users run:
    tf_keras' fused BatchNorm exists for float32 only and moves the variance toward the unbiased
    batch variance (n / (n - 1) times), its unfused float64 path toward the biased one.

    Dropout is random on both sides: Keras' Dropout layers run at rate 0 for the pass, and
    ``module`` (default: the translation's) must have no dropout active, e.g. a clone with its
    rates at 0. Keras' own model is left as it was. Returns the updated ``batch_stats`` (float64).
    """
    import jax

    twin = keras_float64(translation, keras_model)
    names = [layer.name for layer in iter_keras_layers(keras_model)]
    layer = list(iter_keras_layers(twin))[names.index(batch_norm)]  # twin names may count on
    before = {"mean": np.array(layer.moving_mean, np.float64),
              "var": np.array(layer.moving_variance, np.float64)}
    x = np.asarray(images, np.float64)
    dropouts = [d for d in iter_keras_layers(twin) if "Dropout" in type(d).__name__]
    rates = [d.rate for d in dropouts]
    try:
        for dropout in dropouts:
            dropout.rate = 0.0
        expected = np.asarray(twin(x, training=True))
    finally:
        for dropout, rate in zip(dropouts, rates):
            dropout.rate = rate
    keras_after = {"mean": np.array(layer.moving_mean, np.float64),
                   "var": np.array(layer.moving_variance, np.float64)}
    module = float64_module(module or translation.module)
    with jax.enable_x64(True):
        out, updated = jax.jit(
            lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
        )(float64_variables(translation.variables), x)
        out, updated = np.asarray(out), jax.tree.map(np.asarray, updated)
    error = relative_error(out, expected)
    assert error <= tolerance, f"float64 training-mode outputs are {error:.2e} from Keras'"
    ours = updated["batch_stats"]
    for key in path:
        ours = ours[key]
    step_tolerance = tolerance
    if statistics == "float32":
        step_tolerance = 1e-5
        layer = keras_model.get_layer(batch_norm)
        saved = [np.array(w) for w in layer.get_weights()]
        try:
            keras_model(np.asarray(images, np.float32), training=True)
            keras_after = {"mean": np.array(layer.moving_mean, np.float64),
                           "var": np.array(layer.moving_variance, np.float64)}
        finally:
            layer.set_weights(saved)
    elif statistics != "float64":
        raise ValueError(f"statistics must be 'float64' or 'float32', not {statistics!r}")
    for stat in ("mean", "var"):
        keras_step = keras_after[stat] - before[stat]
        assert np.linalg.norm(keras_step) > 0, f"Keras' training pass did not move {batch_norm}"
        step_error = relative_error(ours[stat] - before[stat], keras_step)
        assert step_error <= step_tolerance, (
            f"moving {stat} of {batch_norm} stepped {step_error:.2e} off Keras' ({statistics})")
    return updated


def assert_parity(name: str, **kwargs: Any) -> list[ParityReport]:
    """:func:`check`, raising AssertionError with every measurement when anything is off.

    The one-line parity test for a plugin author::

        def test_mymodel():
            assert_parity("mymodel", sizes=[(67, 45), (33, 97)], include_top=False)
    """
    reports = check(name, **kwargs)
    failed = [r for r in reports if not r.ok]
    if failed:
        lines = [f"{r.summary()}: {'; '.join(r.problems)}" for r in failed]
        raise AssertionError("parity failed:\n" + "\n".join(lines))
    return reports

