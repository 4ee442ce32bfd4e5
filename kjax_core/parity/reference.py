"""Preparing the Keras reference so that a comparison can tell errors apart: random weights,
statistics calibrated on data and perturbed (:func:`prepare_reference`), and the float64 twin that
judges (:func:`keras_float64`). See :mod:`kjax_core.parity` for why."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import numpy as np

from ..conversion.keras_layers import iter_keras_layers, short_name


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
    if not layers:  # nothing to calibrate (ConvNeXt): spare the pass over the calibration batch
        return True
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


def _is_keras_gelu(fn: Any) -> bool:
    """Keras 3's or tf_keras' ``gelu`` activation (both end in ``tf.nn.gelu``)."""
    return (getattr(fn, "__name__", None) == "gelu"
            and getattr(fn, "__module__", "").startswith(("keras.", "tf_keras.")))


def _exact_gelu(x: Any, approximate: bool = False) -> Any:
    """TensorFlow's exact GELU, ``0.5 x erfc(-x / sqrt(2))``, with 1/sqrt(2) in ``x``'s dtype
    (TensorFlow casts the Python float through float32). The activation string "gelu" is the
    exact GELU in Keras; the tanh approximation is not replaced."""
    import tensorflow as tf

    if approximate:
        raise ValueError("the float64 twin replaces only the exact (erf) GELU")
    x = tf.convert_to_tensor(x)
    return 0.5 * x * tf.math.erfc(-x * tf.constant(np.sqrt(0.5), dtype=x.dtype))


def _exact_activations(model: Any) -> None:
    """Make the activations of a float64 Keras model exact: TensorFlow's exact GELU multiplies by
    ``cast(0.7071067811865476, float64)``, 1/sqrt(2) rounded to float32 (up to 1.7e-7 off the
    exact GELU, measured), so each layer whose activation is Keras' ``gelu`` (an Activation
    layer, or a Dense or Conv with ``activation="gelu"``) gets :func:`_exact_gelu` instead. For
    the float64 twin only (its float32 rounding is what a float32 model computes)."""
    for layer in iter_keras_layers(model):
        if _is_keras_gelu(getattr(layer, "activation", None)):
            layer.activation = _exact_gelu


def _is_depthwise_conv2d(layer: Any) -> bool:
    """A Keras 3 ``Conv2D(groups=C)`` on C input channels (ConvNeXt's 7x7), channels last, whose
    stride or dilation is 1 (what ``tf.nn.depthwise_conv2d`` takes)."""
    if type(layer).__name__ != "Conv2D" or getattr(layer, "groups", 1) <= 1:
        return False
    if not type(layer).__module__.startswith("keras.") or layer.data_format != "channels_last":
        return False
    kernel = getattr(layer, "kernel", None)
    return (kernel is not None and kernel.shape[2] == 1
            and (max(layer.strides) == 1 or max(layer.dilation_rate) == 1))


def _float64_depthwise(model: Any) -> None:
    """Compute a float64 Keras model's depthwise ``Conv2D(groups=C)`` layers with TensorFlow's
    depthwise convolution instead of Keras' route for grouped convolutions on CPU, an XLA-compiled
    grouped convolution that XLA:CPU runs without a float64 kernel: measured, ConvNeXtTiny's
    float64 twin took 831 s for two 224x224 images (its float32 model 2 s). The same sums of the
    same products (output channel ``c * M + m`` of input channel ``c`` with kernel column
    ``c * M + m``, Keras' (kh, kw, 1, C * M) kernel read as TensorFlow's (kh, kw, C, M)), only
    the order of the 49 additions may differ. For the float64 twin only."""
    import tensorflow as tf

    for layer in iter_keras_layers(model):
        if not _is_depthwise_conv2d(layer):
            continue

        def depthwise_op(inputs: Any, kernel: Any, layer: Any = layer) -> Any:
            kh, kw, _, out = kernel.shape
            channels = inputs.shape[-1]
            filters = tf.reshape(kernel, (kh, kw, channels, out // channels))
            return tf.nn.depthwise_conv2d(
                inputs, filters, strides=(1, *layer.strides, 1), padding=layer.padding.upper(),
                dilations=tuple(layer.dilation_rate))

        layer.convolution_op = depthwise_op


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
    exactly (float32 values upcast), with exact preprocessing constants (:func:`_exact_constants`)
    and exact GELU (:func:`_exact_activations`), its depthwise ``Conv2D(groups=C)`` computed by
    TensorFlow's depthwise convolution (:func:`_float64_depthwise`).
    Built once per Keras model; its weights are copied again on every call, so a reference
    whose statistics moved (a training pass) is followed."""
    from ..conversion.keras_model import build_keras_model, placeholder_initializers

    twin = _TWINS.get(keras_model)
    if twin is None and getattr(translation, "graph", None) is not None:
        twin = float64_clone(keras_model)  # a converted model: no constructor to call again
        _TWINS[keras_model] = twin
    if twin is None:
        shape = tuple(None if d is None else int(d) for d in keras_model.inputs[0].shape[1:])
        # A named weight set can change Keras' graph (EfficientNet's imagenet-only Rescaling):
        # build the twin for it too (Keras finds the file where the reference's came from).
        named = translation.reference.weights
        named = named if named in translation.spec.weights else None
        with _float64_policy(_keras_package(keras_model)), placeholder_initializers():
            twin = build_keras_model(translation.spec, translation.options, named, shape).model
        _exact_constants(twin)
        _exact_activations(twin)
        _float64_depthwise(twin)
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


def _float64_config(config: Any) -> Any:
    """A serialized Keras model with every float32 dtype (layers' policies, inputs) float64."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config["config"], "name": "float64"}}
        return {k: ("float64" if k == "dtype" and v == "float32" else _float64_config(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [_float64_config(v) for v in config]
    return config


def float64_clone(model: Any) -> Any:
    """A Keras 3 or tf_keras model rebuilt from its serialized form in float64 (what
    ``kjax convert`` reads: any Sequential or functional model), with the float64 fixes of
    :func:`keras_float64`."""
    import json

    from ..graph.converter import application_layers

    package = _keras_package(model)
    text = json.dumps(_float64_config(json.loads(model.to_json())))
    custom = application_layers() if package.__name__ == "keras" else None
    twin = package.models.model_from_json(text, custom_objects=custom)
    _exact_constants(twin)
    _exact_activations(twin)
    _float64_depthwise(twin)
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

