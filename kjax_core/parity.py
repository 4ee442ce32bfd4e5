"""The parity harness: is the Flax model what the Keras model is, on weights that expose errors?

Shared by ``kjax verify``, the test suite, and plugin authors' own tests. Default Keras weights
(BatchNorm at mean 0, variance 1, gamma 1, beta 0; zero biases) hide dropped or swapped weights, and
arbitrary BatchNorm statistics make a deep net forget its input, which hides errors in early layers.
So a reference is prepared in three steps:

1. :func:`randomize` every weight (kernels scaled by fan-in, gamma, beta, biases, Normalization
   mean and variance);
2. :func:`calibrate` BatchNorm statistics on data: one training-mode pass with momentum 0 and dropout
   off sets each moving mean/variance to what its input really has;
3. perturb those statistics, so that a swapped mean/variance or an ignored statistic still shows.

:func:`check` then compares Keras and Flax on a batch of different images and proves that the
comparison can fail: the outputs for different images must differ by far more than the tolerance,
and a deliberately broken translation (swapped BatchNorm statistics in the first BatchNorm, the
layer a deep net forgets first) must exceed the tolerance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .keras_ref import prepare_environment
from .plugins import get_spec
from .preprocessing import apply_mode
from .translator import flatten, iter_keras_layers, short_name

DEFAULT_TOLERANCE = 1e-4


def relative_error(actual: Any, expected: Any) -> float:
    """||actual - expected|| / ||expected|| over all elements (float64)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def sample_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Images with values in [0, 255]: smooth random colour fields plus noise, each one different."""
    rng = np.random.default_rng(seed)
    batch, height, width, channels = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    images = np.empty(shape, np.float32)
    for i in range(batch):
        freq = rng.uniform(1, 6, size=(channels, 2))
        phase = rng.uniform(0, 2 * np.pi, size=channels)
        for c in range(channels):
            wave = np.sin(2 * np.pi * (freq[c, 0] * yy + freq[c, 1] * xx) + phase[c])
            images[i, :, :, c] = 127.5 + 90 * wave + rng.normal(0, 25, size=(height, width))
    return np.clip(images, 0, 255)


def _short(weight: Any, layer: Any) -> str:
    return short_name(weight, layer.name).split("/")[-1]


def randomize(model: Any, seed: int = 0) -> None:
    """Give every weight of a Keras model a random value that keeps activations in range."""
    rng = np.random.default_rng(seed)
    for layer in iter_keras_layers(model):
        if not layer.weights:
            continue
        values = []
        for weight, current in zip(layer.weights, layer.get_weights()):
            name, shape = _short(weight, layer), current.shape
            if name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "bias"):
                value = rng.normal(0.0, 0.2, shape)
            elif name == "moving_mean":
                value = rng.normal(0.0, 0.5, shape)
            elif name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif name == "mean":  # Normalization
                value = rng.uniform(80.0, 160.0, shape)
            elif name == "variance":
                value = rng.uniform(1500.0, 6000.0, shape)
            elif name == "count":
                value = current
            elif len(shape) >= 2:  # kernels: He-style scale from the fan-in
                depthwise = "depthwise" in name or "Depthwise" in type(layer).__name__
                fan_in = int(np.prod(shape[:2] if depthwise else shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
            else:
                value = rng.normal(0.0, 0.2, shape)
            values.append(np.asarray(value, dtype=current.dtype))
        layer.set_weights(values)
        if hasattr(layer, "finalize_state") and type(layer).__name__ == "Normalization":
            layer.finalize_state()  # Normalization only reads new weights after this


@contextlib.contextmanager
def _calibration_mode(model: Any) -> Iterator[None]:
    """BatchNorm momentum 0 (moving statistics := batch statistics), dropout off."""
    saved = []
    for layer in iter_keras_layers(model):
        if hasattr(layer, "momentum") and "BatchNormalization" in type(layer).__name__:
            saved.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0
        if hasattr(layer, "rate") and "Dropout" in type(layer).__name__:
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
    try:
        yield
    finally:
        for layer, attribute, value in saved:
            setattr(layer, attribute, value)


def calibrate(model: Any, images: np.ndarray, seed: int = 0, perturb: float = 0.2) -> None:
    """Set BatchNorm moving statistics from one training-mode pass on ``images``, then perturb them
    (mean by ``perturb`` standard deviations, variance by a factor within 1 +- ``perturb``)."""
    rng = np.random.default_rng(seed + 1)
    with _calibration_mode(model):
        model(images, training=True)
    for layer in iter_keras_layers(model):
        if "BatchNormalization" not in type(layer).__name__:
            continue
        names = [_short(w, layer) for w in layer.weights]
        values = layer.get_weights()
        mean, var = names.index("moving_mean"), names.index("moving_variance")
        std = np.sqrt(np.maximum(values[var], 1e-6))
        values[mean] = (values[mean] + perturb * std * rng.normal(size=std.shape)).astype(np.float32)
        factor = rng.uniform(1 - perturb, 1 + perturb, size=std.shape)
        values[var] = (values[var] * factor).astype(np.float32)
        layer.set_weights(values)


def prepare_reference(
    model: Any, images: np.ndarray, seed: int = 0
) -> Any:
    """Randomise and calibrate a Keras model in place (see the module doc); returns it."""
    randomize(model, seed)
    calibrate(model, images, seed)
    return model


def break_translation(variables: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A deliberately wrong copy of ``variables``: the first BatchNorm's statistics left at their
    initial values (mean 0, variance 1: the classic "batch_stats not loaded" bug), or, in a model
    without BatchNorm, its first kernel negated. Returns (what was broken, the copy)."""
    import copy

    broken = copy.deepcopy(variables)
    for collection, leaf, what in (("batch_stats", "mean", "reset to mean 0, var 1"),
                                   ("params", "kernel", "negated")):
        for path, _ in flatten(broken.get(collection, {})):
            if path[-1] != leaf:
                continue
            node = broken[collection]
            for key in path[:-1]:
                node = node[key]
            if collection == "batch_stats":
                node["mean"] = np.zeros_like(node["mean"])
                node["var"] = np.ones_like(node["var"])
            else:
                node["kernel"] = -np.asarray(node["kernel"])
            return f"{collection}/{'/'.join(path[:-1])} {what}", broken
    raise ValueError("nothing to break: the model has no BatchNorm statistics and no kernel")


@dataclass
class ParityReport:
    """What one parity check measured."""

    model: str
    input_shape: tuple[int, ...]
    options: dict[str, Any]
    relative_error: float
    max_abs_error: float
    output_shape: tuple[int, ...]
    sensitivity: float  # relative difference between the outputs of two different images
    broken: str  # what the deliberately broken translation changed
    broken_error: float  # its relative error against Keras
    tolerance: float = DEFAULT_TOLERANCE
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.relative_error <= self.tolerance:
            self.problems.append(f"relative error {self.relative_error:.3g} > {self.tolerance:g}")
        if not self.sensitivity > 100 * self.tolerance:
            self.problems.append(
                f"outputs of different images differ by only {self.sensitivity:.3g}; the test "
                f"cannot tell errors apart (need > {100 * self.tolerance:g})"
            )
        if not self.broken_error > 10 * self.tolerance:
            self.problems.append(
                f"a broken translation ({self.broken}) passes: error {self.broken_error:.3g}"
            )

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return (
            f"{self.model} {shape} {self.options}: rel {self.relative_error:.2e}, "
            f"max abs {self.max_abs_error:.2e}, images differ {self.sensitivity:.2e}, "
            f"broken {self.broken_error:.2e}"
        )


def compare(
    translation: Any, keras_model: Any, images: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Run Keras and the translated Flax model on ``images`` (raw, [0, 255]; the model's
    preprocessing is applied first) and measure the agreement and the power of the test."""
    import jax

    x = apply_mode(translation.spec.preprocessing, images)
    expected = np.asarray(keras_model(x, training=False))
    apply = jax.jit(translation.module.apply)
    actual = np.asarray(apply(translation.variables, x))
    what, broken = break_translation(translation.variables)
    broken_out = np.asarray(apply(broken, x))
    sensitivity = relative_error(actual[:1], actual[1:2]) if len(actual) > 1 else float("inf")
    return ParityReport(
        model=translation.spec.name,
        input_shape=tuple(images.shape[1:]),
        options={k: v for k, v in translation.options.items()
                 if v != translation.spec.default_options()[k]},
        relative_error=relative_error(actual, expected),
        max_abs_error=float(np.max(np.abs(actual - expected))),
        output_shape=tuple(actual.shape),
        sensitivity=sensitivity,
        broken=what,
        broken_error=relative_error(broken_out, expected),
        tolerance=tolerance,
    )


def reference_model(
    name: str,
    *,
    input_shape: tuple[int | None, int | None, int] | None = None,
    calibration_shape: tuple[int, int] | None = None,
    seed: int = 0,
    weights: str | None = None,
    prepare: bool = True,
    **options: Any,
):
    """Build the Keras model of ``name`` with ``weights`` and, with ``prepare``, randomise it and
    calibrate its statistics (see the module doc); then translate it.

    ``input_shape`` may have None for height and width (Keras then accepts any size, so one
    reference serves several sizes); calibration then runs at ``calibration_shape`` or the default.
    Returns ``(translation, keras_model)``.
    """
    prepare_environment()
    from .api import translate
    from .keras_ref import build_keras_model
    from .options import check_options

    spec = get_spec(name)
    checked = check_options(spec, options)
    keras_model = build_keras_model(spec, checked, weights, input_shape).model
    height = input_shape[0] if input_shape and input_shape[0] else None
    width = input_shape[1] if input_shape and input_shape[1] else None
    calib = calibration_shape or (height or spec.input_size[0], width or spec.input_size[1])
    if prepare:
        images = sample_images((4, *calib, spec.input_size[2]), seed + 100)
        prepare_reference(keras_model, apply_mode(spec.preprocessing, images), seed)
    translation = translate(name, weights, keras_model=keras_model, **options)
    return translation, keras_model


def check(
    name: str,
    *,
    input_shape: tuple[int, int, int] | None = None,
    sizes: list[tuple[int, int]] | None = None,
    batch: int = 2,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    **options: Any,
) -> list[ParityReport]:
    """Parity of ``name`` against Keras on randomised, calibrated weights.

    Either one ``input_shape`` (the Keras model is built for it; needed with ``include_top``), or
    ``sizes``: one Keras model built for any size, checked at each (height, width).
    """
    spec = get_spec(name)
    channels = spec.input_size[2]
    if sizes:
        translation, keras_model = reference_model(
            name, input_shape=(None, None, channels), calibration_shape=sizes[0], seed=seed, **options
        )
    else:
        shape = tuple(input_shape or spec.input_size)
        translation, keras_model = reference_model(name, input_shape=shape, seed=seed, **options)
        sizes = [shape[:2]]
    return [
        compare(translation, keras_model, sample_images((batch, h, w, channels), seed + 7 + i), tolerance)
        for i, (h, w) in enumerate(sizes)
    ]


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
