"""The parity harness: is the Flax model what the Keras model is, on weights that expose errors?

Shared by ``kjax verify``, the test suite, and plugin authors' own tests. Default Keras weights
(BatchNorm at mean 0, variance 1, gamma 1, beta 0; zero biases) hide dropped or swapped weights, and
arbitrary BatchNorm statistics make a deep net forget its input, which hides errors in early layers.
So a reference is prepared in three steps:

1. :func:`randomize` every weight (kernels scaled by fan-in, gamma, beta, biases, Normalization
   mean and variance);
2. :func:`calibrate` statistics on data: each Normalization layer gets the mean/variance of what it
   really receives; one training-mode pass with momentum 0 and dropout off sets each BatchNorm
   moving mean/variance to what its input really has (or, for models whose spec's ``parity``
   says ``"calibration": "in_order"``, each BatchNorm in model order on its inference-mode input);
3. perturb those statistics, so that a swapped mean/variance or an ignored statistic still shows.

:func:`check` then compares Keras and Flax on a batch of different images and proves that the
comparison can fail: the outputs for different images must differ by far more than the tolerance,
and a deliberately broken translation (swapped BatchNorm statistics in the first BatchNorm, the
layer a deep net forgets first) must exceed the tolerance.
"""

from __future__ import annotations

import contextlib
import math
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


def _is_gate(layer: Any) -> bool:
    """A layer with a sigmoid activation of its own: a squeeze-excitation gate."""
    return getattr(getattr(layer, "activation", None), "__name__", None) == "sigmoid"


def randomize(model: Any, seed: int = 0, gate_scale: float = 1.0) -> None:
    """Give every weight of a Keras model a random value that keeps activations in range.

    ``gate_scale`` multiplies the kernels of sigmoid-activated layers (squeeze-excitation gates;
    see :data:`PARITY_DEFAULTS`)."""
    rng = np.random.default_rng(seed)
    for layer in iter_keras_layers(model):
        if not layer.weights:
            continue
        gate = gate_scale if _is_gate(layer) else 1.0
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
                value = gate * rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
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


def _sub_model(model: Any, outputs: Any) -> Any:
    """A functional model from ``model``'s inputs to ``outputs``, in ``model``'s Keras package."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as package
    else:
        import keras as package
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return package.Model(inputs, outputs)


def calibrate_normalization(
    model: Any, images: np.ndarray, seed: int = 0, perturb: float = 0.2
) -> None:
    """Set the mean/variance of each Keras ``Normalization`` layer (in-graph preprocessing) to the
    statistics of what it really receives from ``images``, then perturb them as :func:`calibrate`
    perturbs BatchNorm statistics. Random statistics of the wrong scale (EfficientNet normalises
    after a Rescaling(1/255)) would leave the image as a faint signal on a large constant, which
    float32 rounding drowns and deep nets amplify into chaos."""
    rng = np.random.default_rng(seed + 2)
    for layer in iter_keras_layers(model):
        if type(layer).__name__ != "Normalization" or not layer.weights:
            continue
        names = [_short(w, layer) for w in layer.weights]
        if "mean" not in names or "variance" not in names:
            continue
        values = layer.get_weights()
        mean, var = names.index("mean"), names.index("variance")
        seen = np.asarray(_sub_model(model, layer.input)(images), np.float64)
        axes = tuple(a % seen.ndim for a in np.atleast_1d(layer.axis))
        reduce = tuple(a for a in range(seen.ndim) if a not in axes)
        data_mean = np.reshape(seen.mean(axis=reduce), values[mean].shape)
        data_var = np.reshape(seen.var(axis=reduce), values[var].shape)
        std = np.sqrt(np.maximum(data_var, 1e-12))
        values[mean] = (data_mean + perturb * std * rng.normal(size=std.shape)).astype(np.float32)
        factor = rng.uniform(1 - perturb, 1 + perturb, size=std.shape)
        values[var] = (data_var * factor).astype(np.float32)
        layer.set_weights(values)
        layer.finalize_state()  # Normalization only reads new weights after this


def _is_batch_norm(layer: Any) -> bool:
    return "BatchNormalization" in type(layer).__name__


def _set_statistics(layer: Any, mean: np.ndarray, var: np.ndarray, rng: Any, perturb: float) -> None:
    """A BatchNorm's moving statistics := (mean, var), perturbed (see :func:`calibrate`)."""
    names = [_short(w, layer) for w in layer.weights]
    values = layer.get_weights()
    std = np.sqrt(np.maximum(var, 1e-6))
    values[names.index("moving_mean")] = (
        mean + perturb * std * rng.normal(size=std.shape)).astype(np.float32)
    factor = rng.uniform(1 - perturb, 1 + perturb, size=std.shape)
    values[names.index("moving_variance")] = (var * factor).astype(np.float32)
    layer.set_weights(values)


def _calibrate_in_order(model: Any, images: np.ndarray, rng: Any, perturb: float) -> bool:
    """One inference-mode pass in which each BatchNorm, when reached, takes the statistics of the
    input it really receives (the earlier BatchNorms already calibrated and perturbed), perturbed.
    False when some BatchNorm could not be calibrated this way (not reached eagerly)."""
    layers = [layer for layer in iter_keras_layers(model) if _is_batch_norm(layer)]
    done: set[int] = set()

    def wrap(layer: Any, original: Any) -> Any:
        def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            x = np.asarray(inputs)
            axes = {a % x.ndim for a in np.atleast_1d(layer.axis)}
            reduce = tuple(a for a in range(x.ndim) if a not in axes)
            _set_statistics(layer, x.mean(axis=reduce, dtype=np.float64),
                            x.var(axis=reduce, dtype=np.float64), rng, perturb)
            done.add(id(layer))
            return original(inputs, *args, **kwargs)

        return call

    for layer in layers:
        layer.call = wrap(layer, layer.call)
    try:
        model(images, training=False)
    except Exception:
        return False
    finally:
        for layer in layers:
            del layer.call
    return len(done) == len(layers)


CALIBRATIONS = ("batch", "in_order")

# How a reference is prepared unless the model's ``ModelSpec.parity`` says otherwise:
#   calibration: "batch" or "in_order" (see :func:`calibrate`);
#   gate_scale: factor on the random kernels of sigmoid-activated layers. Random gates saturate
#     and switch with the image; in a deep squeeze-excitation net (with swish, whose response to
#     scale is more than linear) an image of somewhat larger activations then drifts further at
#     every block. Measured on EfficientNetB6 at 67x45 ("in_order"): 3e-3 with 1.0 (an input
#     change of 1e-6 changed the output by 6e-3), 4e-5 with 0.1.
#   damp_layers, damping: after calibration, gamma and beta of the BatchNorms whose names end with
#     ``damp_layers`` are multiplied by ``damping`` (as zero-init-residual training leaves the last
#     BatchNorm of each residual branch small). Measured on ResNet-RS: without it the random trunk
#     is chaotic from ~100 layers on (resnetrs152 at 35x33: tf_keras float32 24% away from float64);
#     with the last BatchNorm of each branch halved, Keras and kjax are ~1e-6 from float64.
PARITY_DEFAULTS: dict[str, Any] = {
    "calibration": "batch", "gate_scale": 1.0, "damp_layers": None, "damping": 1.0,
}


def damp(model: Any, suffix: str | None, factor: float) -> None:
    """Scale gamma and beta of the BatchNorms named ``*suffix`` by ``factor`` (see
    :data:`PARITY_DEFAULTS`)."""
    if not suffix or factor == 1.0:
        return
    for layer in iter_keras_layers(model):
        if _is_batch_norm(layer) and layer.name.endswith(suffix):
            names = [_short(w, layer) for w in layer.weights]
            values = layer.get_weights()
            for key in ("gamma", "beta"):
                if key in names:
                    values[names.index(key)] = values[names.index(key)] * np.float32(factor)
            layer.set_weights(values)


def calibrate(
    model: Any, images: np.ndarray, seed: int = 0, perturb: float = 0.2, mode: str = "batch"
) -> None:
    """Set Normalization statistics (:func:`calibrate_normalization`) and BatchNorm moving
    statistics from ``images``, then perturb them (mean by ``perturb`` standard deviations,
    variance by a factor within 1 +- ``perturb``).

    ``mode`` (a model's ``ModelSpec.parity["calibration"]``): ``"batch"``, one training-mode pass
    with momentum 0 and dropout off sets every BatchNorm, then each is perturbed; ``"in_order"``,
    the BatchNorms are set in model order in one inference-mode pass, each on the input it really
    receives (the earlier ones already perturbed), so that the perturbations do not compound.
    Measured: after a "batch" calibration EfficientNetB0 at 64x64 drifts block after block into
    activations 10^4 too large, and Keras and kjax on EfficientNetB3 at 300x300 differ by 1.8e-1
    (both float32 results chaotic), 2e-5 "in_order"; ResNet152 at 224x224 is 4e-6 in "batch" and
    2e-4 in "in_order" (a freshly normalised deep BatchNorm net amplifies its input's rounding).
    A model that cannot be walked in order eagerly falls back to "batch".
    """
    if mode not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {mode!r}; known: {', '.join(CALIBRATIONS)}")
    calibrate_normalization(model, images, seed, perturb)
    rng = np.random.default_rng(seed + 1)
    if mode == "in_order" and _calibrate_in_order(model, images, rng, perturb):
        return
    rng = np.random.default_rng(seed + 1)
    with _calibration_mode(model):
        model(images, training=True)
    for layer in iter_keras_layers(model):
        if _is_batch_norm(layer):
            names = [_short(w, layer) for w in layer.weights]
            values = layer.get_weights()
            mean, var = values[names.index("moving_mean")], values[names.index("moving_variance")]
            _set_statistics(layer, mean, var, rng, perturb)


def prepare_reference(
    model: Any, images: np.ndarray, seed: int = 0, calibration: str = "batch",
    gate_scale: float = 1.0, damp_layers: str | None = None, damping: float = 1.0,
) -> Any:
    """Randomise and calibrate a Keras model in place (see the module doc and
    :data:`PARITY_DEFAULTS` for the settings); returns it."""
    randomize(model, seed, gate_scale)
    calibrate(model, images, seed, mode=calibration)
    damp(model, damp_layers, damping)
    return model


def parity_settings(spec: Any) -> dict[str, Any]:
    """:data:`PARITY_DEFAULTS` with the spec's own ``parity`` settings applied, checked."""
    unknown = set(spec.parity) - set(PARITY_DEFAULTS)
    if unknown:
        raise ValueError(f"{spec.name}: unknown parity settings {sorted(unknown)}; "
                         f"known: {sorted(PARITY_DEFAULTS)}")
    settings = {**PARITY_DEFAULTS, **spec.parity}
    if settings["calibration"] not in CALIBRATIONS:
        raise ValueError(f"{spec.name}: unknown calibration {settings['calibration']!r}")
    return settings


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
        settings = parity_settings(spec)
        if calibration_batch is None:
            calibration_batch = 4
            if settings["calibration"] == "in_order":
                calibration_batch = max(4, math.ceil(4 * 224 * 224 / (calib[0] * calib[1])))
        images = sample_images((calibration_batch, *calib, spec.input_size[2]), seed + 100)
        prepare_reference(keras_model, apply_mode(spec.preprocessing, images), seed,
                          settings["calibration"], settings["gate_scale"],
                          settings["damp_layers"], settings["damping"])
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
    calibration_batch: int | None = None,
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
        compare(translation, keras_model, sample_images((batch, h, w, channels), seed + 7 + i), tolerance)
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
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """One training-mode pass against Keras' ``training=True`` on the same ``images``: the outputs
    agree within ``tolerance``, and the moving statistics of the BatchNorm Keras names
    ``batch_norm`` (``path`` in Flax's ``batch_stats``) moved as Keras moved them. The steps
    (new - old) are compared, within 1e-3, not the values they barely change. ``module`` replaces
    the translation's (e.g. a clone without dropout). Returns the updated ``batch_stats``
    collection as Flax's ``mutable`` apply gives it.
    """
    import jax

    module = module or translation.module
    out, updated = jax.jit(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])
    )(translation.variables, images)
    error = relative_error(out, np.asarray(keras_model(images, training=True)))
    assert error < tolerance, f"training-mode outputs are {error:.2e} from Keras'"
    layer = keras_model.get_layer(batch_norm)
    before, after = translation.variables["batch_stats"], updated["batch_stats"]
    for key in path:
        before, after = before[key], after[key]
    for ours, theirs in (("mean", layer.moving_mean), ("var", layer.moving_variance)):
        keras_step = theirs.numpy() - np.asarray(before[ours])
        assert np.linalg.norm(keras_step) > 0, f"Keras' training pass did not move {batch_norm}"
        step_error = relative_error(np.asarray(after[ours]) - np.asarray(before[ours]), keras_step)
        assert step_error < 1e-3, f"moving {ours} of {batch_norm} stepped {step_error:.2e} off Keras'"
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
