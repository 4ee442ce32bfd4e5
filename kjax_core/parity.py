"""The parity harness: is the Flax model what the Keras model is, on weights that expose errors?

Shared by ``kjax verify``, the test suite, and plugin authors' own tests.

The judge is float64. A deep net on random weights amplifies float32 rounding by 10^3-10^4, so a
float32 tolerance is both too strict (exact twins of deep nets fail it) and too loose (a wrong
epsilon or a constant rounded to float32 hides under it). So the Keras reference (on TensorFlow)
is built a second time in float64 with the same weights (:func:`keras_float64`), and

- kjax in float64 must equal it within :data:`FLOAT64_TOLERANCE` (a correct twin lands near 1e-14);
- kjax in float32 must be no further from it than :data:`FLOAT32_FACTOR` times Keras' own float32
  model (float32 rounding, yes; anything more, no).

Default Keras weights (BatchNorm at mean 0, variance 1, gamma 1, beta 0; zero biases) hide dropped or
swapped weights, and arbitrary BatchNorm statistics make a deep net forget its input or amplify any
difference into chaos (in float64 too: measured on EfficientNetB7 and ResNet-RS 152, below). So the
reference is prepared in three steps:

1. :func:`randomize` every weight (kernels scaled by fan-in, gamma, beta, biases, Normalization
   mean and variance);
2. :func:`calibrate` statistics on data: each Normalization layer gets the mean/variance of what it
   really receives; each BatchNorm, in model order, the statistics of what it really receives once
   the earlier ones are set ("in_order"; or all at once from one training-mode pass, "batch");
3. perturb those statistics, so that a swapped mean/variance or an ignored statistic still shows.

:func:`compare` then proves that the comparison can fail: the outputs for different images, and a
deliberately broken translation (the first BatchNorm's statistics reset, the layer a deep net forgets
first), must differ from the reference by more than :data:`MIN_SENSITIVITY`.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .keras_ref import prepare_environment
from .plugins import get_spec
from .preprocessing import apply_mode
from .translator import flatten, iter_keras_layers, short_name



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


def randomize(model: Any, seed: int = 0, gate_scale: float = 0.1) -> None:
    """Give every weight of a Keras model a random value that keeps activations in range.

    ``gate_scale`` multiplies the kernels of sigmoid-activated layers (squeeze-excitation gates):
    random gates of full scale saturate and switch with the image, and a deep squeeze-excitation
    net then amplifies any difference block after block. Measured in float64 on EfficientNetB7 at
    35x45 ("in_order" calibration): 5.7e-8 with 1.0 (Keras' own float32 model 45% off its float64
    twin), 6.0e-14 with 0.1."""
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
#   calibration: "in_order" or "batch" (see :func:`calibrate`).
# Measured in float64 (kjax and Keras both float64, relative error of logits): EfficientNetB7 at
# 33x97 is 1.4e-1 with "batch" (the random net is chaotic: Keras' own float32 model is 69% off
# its float64 twin) and 3.7e-15 with "in_order"; ResNet-RS 152 at 35x33 1.6e-1 and 1.4e-13;
# ResNet152 at 224x224 stays exact with "in_order" (3.3e-13). The residual damping ResNet-RS once
# needed is gone; small squeeze-excitation gates (:func:`randomize`) are the other general care.
PARITY_DEFAULTS: dict[str, Any] = {"calibration": "in_order"}


def calibrate(
    model: Any, images: np.ndarray, seed: int = 0, perturb: float = 0.2, mode: str = "in_order"
) -> None:
    """Set Normalization statistics (:func:`calibrate_normalization`) and BatchNorm moving
    statistics from ``images``, then perturb them (mean by ``perturb`` standard deviations,
    variance by a factor within 1 +- ``perturb``).

    ``mode`` (a model's ``ModelSpec.parity["calibration"]``): ``"in_order"``, the BatchNorms are
    set in model order in one inference-mode pass, each on the input it really receives (the
    earlier ones already perturbed), so that the perturbations do not compound through depth;
    ``"batch"``, one training-mode pass with momentum 0 and dropout off sets every BatchNorm from
    its training-mode input, then each is perturbed, and a deep net drifts (EfficientNetB0 at 64x64
    into activations 10^4 too large; chaos in the deep variants, see :data:`PARITY_DEFAULTS`).
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
    model: Any, images: np.ndarray, seed: int = 0, calibration: str = "in_order"
) -> Any:
    """Randomise and calibrate a Keras model in place (see the module doc); returns it."""
    randomize(model, seed)
    calibrate(model, images, seed, mode=calibration)
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


FLOAT64_TOLERANCE = 1e-9  # kjax float64 against Keras float64: a correct twin lands near 1e-14
FLOAT32_FACTOR = 2.0  # kjax float32 may be this many times as far from Keras float64 as Keras float32
# The test must be able to fail: two different images, and a deliberately broken translation,
# must be this far (relative) from the reference, far above the float64 tolerance.
MIN_SENSITIVITY = 1e-4


@contextlib.contextmanager
def _float64_policy(package: Any) -> Iterator[None]:
    """Keras (``keras`` or ``tf_keras``) builds float64 models meanwhile: floatx and the dtype
    policy both, else the Input layer stays float32."""
    if package.__name__ == "tf_keras":
        from tf_keras import backend, mixed_precision

        saved = backend.floatx(), mixed_precision.global_policy()
        backend.set_floatx("float64")
        mixed_precision.set_global_policy("float64")
        try:
            yield
        finally:
            backend.set_floatx(saved[0])
            mixed_precision.set_global_policy(saved[1])
        return
    saved = package.config.floatx(), package.config.dtype_policy()
    package.config.set_floatx("float64")
    package.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        package.config.set_floatx(saved[0])
        package.config.set_dtype_policy(saved[1])


def _exact_constants(model: Any) -> None:
    """Make the float constants of in-graph preprocessing exact in a float64 Keras model.

    Keras (3 and tf_keras) on TensorFlow casts a Python float through float32 even in a float64
    model (``tf.cast(1 / 255, tf.float64)`` is 1/255 rounded to float32): Rescaling's scale and
    offset, and the mean/variance given to a Normalization constructor, would be float32 values,
    putting a 1e-8..1e-7 error into the reference itself. Numpy arrays in float64 are cast exactly.
    """
    import tensorflow as tf

    for layer in iter_keras_layers(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            layer.scale = np.asarray(layer.scale, np.float64)
            layer.offset = np.asarray(layer.offset, np.float64)
        elif kind == "Normalization" and getattr(layer, "input_mean", None) is not None:
            shape = tuple(int(d) for d in layer.mean.shape)
            for attribute, given in (("mean", layer.input_mean), ("variance", layer.input_variance)):
                value = np.asarray(given, np.float64)
                value = np.broadcast_to(value.reshape(shape) if value.size == np.prod(shape) else value, shape)
                setattr(layer, attribute, tf.constant(value))


def _keras_package(model: Any) -> Any:
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as package
    else:
        import keras as package
    return package


_TWINS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def keras_float64(translation: Any, keras_model: Any) -> Any:
    """The float64 twin of ``keras_model`` (the Keras reference of ``translation``): the same
    constructor and options built again in float64, holding ``keras_model``'s current weights
    exactly (float32 values upcast), with exact preprocessing constants (:func:`_exact_constants`).
    Built once per Keras model; its weights are copied again on every call, so a reference
    whose statistics moved (a training pass) is followed."""
    from .keras_ref import build_keras_model, placeholder_initializers

    twin = _TWINS.get(keras_model)
    if twin is None:
        shape = tuple(None if d is None else int(d) for d in keras_model.inputs[0].shape[1:])
        # A named weight set can change Keras' graph (EfficientNet's imagenet-only Rescaling):
        # build the twin for it too (Keras finds the file where the reference's came from).
        named = translation.reference.weights
        named = named if named in translation.spec.weights else None
        with _float64_policy(_keras_package(keras_model)), placeholder_initializers():
            twin = build_keras_model(translation.spec, translation.options, named, shape).model
        _exact_constants(twin)
        _TWINS[keras_model] = twin
    ours, theirs = list(iter_keras_layers(keras_model)), list(iter_keras_layers(twin))
    if [type(a).__name__ for a in ours] != [type(b).__name__ for b in theirs]:
        raise ValueError(f"the float64 Keras twin of {translation.spec.name} has other layers")
    for source, target in zip(ours, theirs):
        if source.weights:
            target.set_weights([np.asarray(w, np.float64) for w in source.get_weights()])
            if type(target).__name__ == "Normalization":
                target.finalize_state()  # Normalization only reads new weights after this
    return twin


def float64_variables(variables: Any) -> Any:
    """``variables`` with every floating leaf in float64 (exact: the values are float32)."""
    import jax

    return jax.tree.map(
        lambda a: np.asarray(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating)
        else np.asarray(a), variables)


def float64_module(module: Any) -> Any:
    """``module`` computing in float64 with float64 parameters."""
    import jax.numpy as jnp

    return module.clone(dtype=jnp.float64, param_dtype=jnp.float64)


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
    output_shape: tuple[int, ...]
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
    expected = np.asarray(keras_float64(translation, keras_model)(x64, training=False))
    with jax.enable_x64(True):
        apply64 = jax.jit(float64_module(translation.module).apply)
        actual = np.asarray(apply64(float64_variables(translation.variables), x64))
        what, broken = break_translation(translation.variables)
        broken_out = np.asarray(apply64(float64_variables(broken), x64))
    error32 = keras_error32 = None
    if float32:
        keras32 = np.asarray(keras_model(x32, training=False))
        ours32 = np.asarray(jax.jit(translation.module.apply)(translation.variables, x32))
        if ours32.dtype != np.float32:
            raise AssertionError(f"the float32 model returned {ours32.dtype}")
        error32, keras_error32 = relative_error(ours32, expected), relative_error(keras32, expected)
    if actual.dtype != np.float64:
        raise AssertionError(f"the float64 model returned {actual.dtype}")
    sensitivity = relative_error(actual[:1], actual[1:2]) if len(actual) > 1 else float("inf")
    return ParityReport(
        model=translation.spec.name,
        input_shape=tuple(images.shape[1:]),
        options={k: v for k, v in translation.options.items()
                 if v != translation.spec.default_options()[k]},
        output_shape=tuple(actual.shape),
        error64=relative_error(actual, expected),
        max_abs_error64=float(np.max(np.abs(actual - expected))),
        error32=error32,
        keras_error32=keras_error32,
        sensitivity=sensitivity,
        broken=what,
        broken_error=relative_error(broken_out, expected),
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
    from .api import translate
    from .keras_ref import build_keras_model, placeholder_initializers
    from .options import check_options

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
