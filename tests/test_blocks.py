"""The shared blocks of kjax_core.nn that the families beyond the first seven need, each against the
Keras layers it stands for (Keras 3 on TensorFlow; tf_keras for tf_keras' BatchNormalization and
ResNet-RS' squeeze-excite), on random inputs and randomised weights carried by the real translator:

- in float64 (Keras with floatx and the dtype policy float64, its preprocessing constants exact;
  kjax under ``jax.enable_x64``), within :data:`TOLERANCE` ``["float64"]`` = 1e-13;
- in float32, within 1e-6 (relative error ||a - b|| / ||b||).

Every comparison is shown able to fail: a plausible wrong twin (a wrong epsilon, gate, padding,
rounding or constant dtype, Flax's own LayerNorm, Keras 3's BatchNorm step for tf_keras') is more
than :data:`MARGIN` tolerances off, in the same harness. Shapes are small; the whole file runs in
seconds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import keras
import tf_keras
from kjax_core import nn as knn
from kjax_core.parity import randomize, relative_error
from kjax_core.parity.reference import _exact_constants, _float64_policy

from test_dtypes import foreign_dtypes, unexcused
from test_layer_rules import One, flax_dtypes, translate_one

SHAPE = (9, 7, 6)  # odd, non-square, more than one channel
PRECISIONS = ("float64", "float32")
TOLERANCE = {"float64": 1e-13, "float32": 1e-6}
MARGIN = 100.0  # a wrong twin must be this many tolerances off, at least

L = keras.layers
precisions = pytest.mark.parametrize("precision", PRECISIONS)
FlaxFn = Callable[[jax.Array, dict], jax.Array]


@dataclass
class Reference:
    """A Keras model's output on ``x`` and its weights translated for a Flax twin."""

    precision: str
    x: np.ndarray
    expected: np.ndarray
    variables: dict

    def error(self, flax_fn: FlaxFn, variables: dict | None = None) -> float:
        """Relative error of ``flax_fn(x, dtypes)`` (in this precision) against Keras."""
        with jax.enable_x64(self.precision == "float64"):
            module = One(lambda x: flax_fn(x, flax_dtypes(self.precision)))
            actual = jax.jit(module.apply)(self.variables if variables is None else variables,
                                           self.x)
        assert actual.dtype == self.precision and actual.shape == self.expected.shape
        return relative_error(np.asarray(actual), self.expected)


def keras_precision(package: Any, precision: str):
    """Keras builds in ``precision`` meanwhile (floatx and dtype policy, as the float64 twin)."""
    return _float64_policy(package) if precision == "float64" else contextlib.nullcontext()


def reference(keras_build: Callable[[Any], Any], flax_fn: FlaxFn, precision: str, *,
              shape=SHAPE, package=keras, x: np.ndarray | None = None) -> Reference:
    """Keras' ``keras_build(inputs)`` as a model in ``precision``, every weight randomised (gates at
    full scale), float constants exact in float64; its weights translated (rules, name matching,
    strict assembly) into the Flax twin ``flax_fn``."""
    with keras_precision(package, precision):
        inputs = package.Input(shape, dtype=precision)
        model = package.Model(inputs, keras_build(inputs))
    randomize(model, seed=3, gate_scale=1.0)
    if precision == "float64":
        _exact_constants(model)
    if x is None:
        x = np.random.default_rng(1).normal(size=(2, *shape))
    x = np.asarray(x, precision)
    expected = np.asarray(model(x))
    assert expected.dtype == precision, expected.dtype
    variables = {}
    if model.weights:
        with jax.enable_x64(precision == "float64"):
            module = One(lambda x: flax_fn(x, flax_dtypes(precision)))
            variables = translate_one(model, module, shape)
    return Reference(precision, x, expected, variables)


def assert_twin(ref: Reference, flax_fn: FlaxFn, *wrong: FlaxFn) -> float:
    """``flax_fn`` within tolerance of Keras; each of ``wrong`` more than MARGIN tolerances off."""
    tolerance = TOLERANCE[ref.precision]
    error = ref.error(flax_fn)
    assert error < tolerance, f"{error:.3g} > {tolerance:g} ({ref.precision})"
    for fn in wrong:
        off = ref.error(fn)
        assert off > MARGIN * tolerance, f"a wrong twin passes: {off:.3g} ({ref.precision})"
    print(f"{ref.precision}: {error:.2e}")
    return error


# ------------------------------------------------------------------------------ make_divisible


def test_make_divisible_is_keras_rounding():
    """MobileNetV2's _make_divisible and MobileNetV3's _depth, over widths the applications use
    and beyond; EfficientNet's round_filters is the same after the width multiplier."""
    from keras.src.applications.mobilenet_v2 import _make_divisible
    from keras.src.applications.mobilenet_v3 import _depth

    values = [f * a for f in (3, 8, 12, 16, 24, 32, 40, 72, 96, 112, 320, 1280)
              for a in (0.35, 0.5, 0.75, 0.9, 1.0, 1.1, 1.3, 1.4, 1.8, 2.0, 3.1)]
    values += list(np.linspace(0.5, 200.0, 797))
    bumped = 0
    for v in values:
        for divisor, min_value in ((8, None), (4, None), (8, 16), (16, None)):
            ours = knn.make_divisible(v, divisor, min_value)
            assert ours == _make_divisible(v, divisor, min_value) == _depth(v, divisor, min_value)
            assert isinstance(ours, int)
            plain = max(min_value or divisor, int(v + divisor / 2) // divisor * divisor)
            bumped += ours != plain
    assert bumped > 10  # the 10% rule is exercised (a rounding without it would fail)
    assert knn.make_divisible(32 * 0.35) == 16 and knn.make_divisible(9.5) == 16  # the 10% rule

    from kjax_efficientnet.model import EfficientNet

    for width in (1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0):
        model = EfficientNet(width, 1.0)
        for filters in (16, 24, 32, 40, 80, 112, 192, 320, 1280):
            assert model.round_filters(filters) == _make_divisible(filters * width, 8)


# -------------------------------------------------------------------- correct-pad strided conv


def _keras_correct_pad(layer: Callable[..., Any], kernel_size: int, strides: int):
    """What MobileNetV2/V3 and EfficientNet write: ZeroPadding2D(correct_pad) + 'valid' where
    strided, else 'same'."""
    from keras.src.applications import imagenet_utils

    def build(x):
        if strides == 2:
            x = L.ZeroPadding2D(imagenet_utils.correct_pad(x, kernel_size))(x)
        return layer(kernel_size, strides=strides, padding="same" if strides == 1 else "valid",
                     name="c")(x)
    return build


CONV_KINDS = {
    "conv": (lambda k, **kw: L.Conv2D(5, k, use_bias=False, **kw),
             dict(layer=knn.conv, features=5, use_bias=False)),
    "depthwise": (lambda k, **kw: L.DepthwiseConv2D(k, use_bias=False, **kw),
                  dict(layer=knn.depthwise_conv, use_bias=False)),
}


@precisions
@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
@pytest.mark.parametrize("kernel_size,strides", [(3, 2), (5, 2), (3, 1)])
@pytest.mark.parametrize("size", [(9, 7), (8, 10), (9, 8)])
def test_correct_pad_conv(kind, kernel_size, strides, size, precision):
    """Odd, even and mixed sizes. A port padding kernel_size // 2 on every side (PyTorch's way)
    fails wherever a strided size is even (and is right elsewhere)."""
    keras_layer, flax_kw = CONV_KINDS[kind]
    layer, layer_kw = flax_kw["layer"], {k: v for k, v in flax_kw.items() if k != "layer"}

    def twin(x, kw):
        return knn.correct_pad_conv(x, kernel_size, strides=strides, name="c", **flax_kw, **kw)

    def symmetric(x, kw):
        k = kernel_size // 2
        return layer(knn.zero_pad(x, ((k, k), (k, k))), kernel_size=kernel_size,
                     strides=strides, name="c", **layer_kw, **kw)

    ref = reference(_keras_correct_pad(keras_layer, kernel_size, strides), twin, precision,
                    shape=(*size, 3))
    even = strides == 2 and (size[0] % 2 == 0 or size[1] % 2 == 0)
    assert_twin(ref, twin, *([symmetric] if even else []))


def test_correct_pad_reads_the_static_size():
    """The note on correct_pad: a Keras model built for (None, None, C) pads as for an even size,
    so at an odd size it is not the model built for that size; the twin is the latter."""
    build = _keras_correct_pad(CONV_KINDS["conv"][0], 3, 2)
    flax_fn = lambda x, kw: knn.correct_pad_conv(  # noqa: E731
        x, 3, strides=2, features=5, use_bias=False, name="c", **kw)
    ref = reference(build, flax_fn, "float64", shape=(9, 7, 3))
    assert ref.error(flax_fn) < TOLERANCE["float64"]
    inputs = keras.Input((None, None, 3), dtype="float64")
    with keras_precision(keras, "float64"):
        unsized = keras.Model(inputs, build(inputs))
    unsized.get_layer("c").set_weights([np.asarray(ref.variables["params"]["c"]["kernel"])])
    shifted = np.asarray(unsized(ref.x))  # one row and column shifted
    assert shifted.shape != ref.expected.shape or relative_error(shifted, ref.expected) > 1e-2


# ------------------------------------------------------------------------------- drop connect


@precisions
@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_drop_connect(rate, precision):
    """Keras Dropout(rate, noise_shape=(None, 1, 1, 1)): in training each sample is dropped
    whole or kept and scaled by 1 / (1 - rate), at the rate; the identity in inference. The
    random draws differ between the frameworks, so what is compared is that structure, the
    scaled values (to rounding) and the kept fraction (within 4.5 binomial standard deviations)."""
    samples = 400
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 3, 2, 4)).astype(precision) + 3.0  # no zeros
    with keras_precision(keras, precision):
        dropout = L.Dropout(rate, noise_shape=(None, 1, 1, 1), seed=7)
        keras_out = np.asarray(dropout(x, training=True))

    def flax_out(fn, train, seed=1):
        with jax.enable_x64(precision == "float64"):
            module = One(lambda x: fn(x, train))
            return np.asarray(module.apply({}, jnp.asarray(x),
                                           rngs={"dropout": jax.random.PRNGKey(seed)}))

    ours = flax_out(lambda x, train: knn.drop_connect(x, rate, train=train, name="drop"), True)
    for out in (keras_out, ours):
        assert out.dtype == precision
        kept = np.all(out != 0, axis=(1, 2, 3))
        assert np.all(kept | np.all(out == 0, axis=(1, 2, 3))), "a sample dropped in part"
        error = relative_error(out[kept], x[kept] / (1 - rate))
        assert error < TOLERANCE[precision], error
        spread = 4.5 * np.sqrt(samples * rate * (1 - rate))
        assert abs(kept.sum() - samples * (1 - rate)) < spread, (kept.sum(), samples)
    for train in (False, True):  # rate 0, and inference, leave the input as it is
        assert np.array_equal(flax_out(lambda x, t: knn.drop_connect(
            x, 0.0 if train else rate, train=t, name="drop"), train), x)

    # The check can fail: element-wise dropout, and the rate taken as the keep probability
    elementwise = flax_out(lambda x, t: nn.Dropout(rate, deterministic=False)(x), True)
    assert not np.all(np.all(elementwise != 0, axis=(1, 2, 3)) | np.all(elementwise == 0,
                                                                         axis=(1, 2, 3)))
    inverted = flax_out(lambda x, t: knn.drop_connect(x, 1 - rate, train=t, name="drop"), True)
    kept = np.all(inverted != 0, axis=(1, 2, 3))
    assert relative_error(inverted[kept], x[kept] / (1 - rate)) > 1e-2


# ---------------------------------------------------------------------------- squeeze-excite


def _keras_se_efficientnet(x):
    """EfficientNet's block: GAP, Reshape, Conv2D(swish), Conv2D(sigmoid), multiply."""
    channels = x.shape[-1]
    s = L.GlobalAveragePooling2D()(x)
    s = L.Reshape((1, 1, channels))(s)
    s = L.Conv2D(2, 1, padding="same", activation="swish", name="se_reduce")(s)
    s = L.Conv2D(channels, 1, padding="same", activation="sigmoid", name="se_expand")(s)
    return L.multiply([x, s])


def _keras_se_mobilenet_v3(x):
    """MobileNetV3's _se_block: GAP (keepdims), Conv2D, ReLU, Conv2D, its hard sigmoid written
    in the graph (ReLU(6)(x + 3) * (1 / 6)), Multiply."""
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(8, 1, padding="same", name="squeeze_excite_conv")(s)
    s = L.ReLU()(s)
    s = L.Conv2D(x.shape[-1], 1, padding="same", name="squeeze_excite_conv_1")(s)
    s = L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)
    return L.Multiply()([x, s])


def _keras_se_regnet(x):
    """RegNet's SqueezeAndExciteBlock (tf_keras): GAP (keepdims), Conv2D(relu), Conv2D(sigmoid),
    the gate times the input."""
    T = tf_keras.layers
    s = T.GlobalAveragePooling2D(keepdims=True)(x)
    s = T.Conv2D(3, (1, 1), activation="relu", name="se_squeeze")(s)
    s = T.Conv2D(x.shape[-1], (1, 1), activation="sigmoid", name="se_excite")(s)
    return T.Multiply()([s, x])


def _keras_se_resnet_rs(x):
    """ResNet-RS' SE (tf_keras' own function): layers blk_se_se_reduce, blk_se_se_expand."""
    from tf_keras.src.applications.resnet_rs import SE

    return SE(x.shape[-1] // 4, se_ratio=0.25, name="blk_se")(x)


def _se(reduced, reduce_name, expand_name, **options):
    return lambda x, kw: knn.squeeze_excite(x, reduced, reduce_name=reduce_name,
                                            expand_name=expand_name, **options, **kw)


SQUEEZE_EXCITE = {
    # style: (Keras build, package, twin, wrong twins)
    "efficientnet": (_keras_se_efficientnet, keras,
                     _se(2, "se_reduce", "se_expand", activation_name="swish"),
                     [_se(2, "se_reduce", "se_expand", activation_name="relu")]),
    "mobilenet_v3": (_keras_se_mobilenet_v3, keras,
                     _se(8, "squeeze_excite_conv", "squeeze_excite_conv_1", gate="hard_sigmoid"),
                     [_se(8, "squeeze_excite_conv", "squeeze_excite_conv_1")]),  # sigmoid gate
    "regnet": (_keras_se_regnet, tf_keras, _se(3, "se_squeeze", "se_excite"),
               [_se(3, "se_squeeze", "se_excite", gate=knn.hard_sigmoid)]),
    "resnet_rs": (_keras_se_resnet_rs, tf_keras,
                  lambda x, kw: knn.SqueezeExcite(2, name="blk_se", **kw)(x),
                  [lambda x, kw: knn.SqueezeExcite(2, name="blk_se", gate="hard_sigmoid",
                                                   **kw)(x)]),
}


@precisions
@pytest.mark.parametrize("style", sorted(SQUEEZE_EXCITE))
def test_squeeze_excite(style, precision):
    keras_build, package, twin, wrong = SQUEEZE_EXCITE[style]
    ref = reference(keras_build, twin, precision, package=package, shape=(9, 7, 8))
    assert_twin(ref, twin, *wrong)


# -------------------------------------------------------------------------------- activations


GELU_SQRT_HALF = 0.7071067811865476


def _exact_keras_gelu(monkeypatch) -> None:
    """Keras on TensorFlow computes the exact gelu as ``0.5 x erfc(-x cast(1/sqrt(2)))``, and
    that cast of a Python float goes through float32 even in float64 (1.3e-9 relative; see
    :func:`test_keras_float64_gelu_rounds_its_constant`): make the constant exact, as the parity
    harness does for Rescaling's."""
    import tensorflow as tf
    from keras.src import backend

    keras_gelu = backend.nn.gelu

    def gelu(x, approximate=True):
        if approximate:
            return keras_gelu(x, approximate)
        x = tf.convert_to_tensor(x)
        return 0.5 * x * tf.math.erfc(-x * tf.constant(GELU_SQRT_HALF, x.dtype))

    monkeypatch.setattr(backend.nn, "gelu", gelu)


@precisions
@pytest.mark.parametrize("name", sorted(a for a in knn.ACTIVATIONS if a is not None))
def test_activation(name, precision, monkeypatch):
    """Every activation name kjax knows, against keras.activations.get(name); inputs spread
    over the kinks of the hard ones (-3, 3)."""
    if name == "gelu" and precision == "float64":
        _exact_keras_gelu(monkeypatch)
    x = 3.0 * np.random.default_rng(2).normal(size=(2, *SHAPE))
    ref = reference(lambda x: L.Activation(name)(x), lambda x, kw: knn.activation(name)(x),
                    precision, x=x)
    wrong = {
        "gelu": lambda x, kw: jax.nn.gelu(x),  # jax's default: the tanh approximation
        "hard_sigmoid": lambda x, kw: jnp.clip(0.2 * x + 0.5, 0, 1),  # tf_keras' hard sigmoid
        "hard_silu": lambda x, kw: x * jax.nn.sigmoid(x),
        "hard_swish": lambda x, kw: x * jnp.clip(0.2 * x + 0.5, 0, 1),
    }
    assert_twin(ref, lambda x, kw: knn.activation(name)(x), *([wrong[name]] if name in wrong
                                                            else []))


def test_keras_float64_gelu_rounds_its_constant():
    """Keras' float64 gelu (on TensorFlow) is 1.3e-9 off the exact one, entirely because its
    1/sqrt(2) is rounded to float32: with that constant rounded, the formula is Keras' to 1e-15.
    kjax computes the exact gelu; a float64 reference for a model with gelu (ConvNeXt) needs the
    constant made exact, as :func:`_exact_keras_gelu` does."""
    from jax.scipy.special import erfc

    x = 3.0 * np.random.default_rng(2).normal(size=(2, *SHAPE))
    ref = reference(lambda x: L.Activation("gelu")(x), lambda x, kw: knn.gelu(x), "float64", x=x)
    rounded = np.float64(np.float32(GELU_SQRT_HALF))
    assert 1e-10 < ref.error(lambda x, kw: knn.gelu(x)) < 1e-8
    assert ref.error(lambda x, kw: 0.5 * x * erfc(-x * rounded)) < 1e-15


def test_gelu_approximation_is_visible_in_float32():
    """jax.nn.gelu's tanh approximation is ~1e-4 off Keras' exact gelu: far outside float32
    rounding, so the exact one is not a float64 nicety."""
    x = 3.0 * np.random.default_rng(2).normal(size=(2, *SHAPE))
    ref = reference(lambda x: L.Activation("gelu")(x), lambda x, kw: knn.gelu(x), "float32", x=x)
    assert ref.error(lambda x, kw: knn.gelu(x)) < 1e-6
    assert ref.error(lambda x, kw: jax.nn.gelu(x)) > 1e-5


# ----------------------------------------------------------------------------------- LayerNorm


@precisions
@pytest.mark.parametrize("epsilon", [1e-6, 1e-3])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [SHAPE, (6,)], ids=["NHWC", "NC"])
def test_layer_norm(epsilon, center, scale, shape, precision):
    """Keras LayerNormalization (ConvNeXt: epsilon 1e-6, on feature maps and on the pooled
    features of its head). Inputs with a small spread (std 0.05) make epsilon count: the other
    epsilon fails."""
    x = 0.3 + 0.05 * np.random.default_rng(4).normal(size=(2, *shape))

    def twin(eps):
        return lambda x, kw: knn.LayerNorm(epsilon=eps, use_bias=center, use_scale=scale,
                                           name="ln", **kw)(x)

    ref = reference(lambda x: L.LayerNormalization(epsilon=epsilon, center=center, scale=scale,
                                                   name="ln")(x),
                    twin(epsilon), precision, shape=shape, x=x)
    assert_twin(ref, twin(epsilon), twin(1e-3 if epsilon == 1e-6 else 1e-6))


def test_layer_norm_computes_the_variance_as_keras():
    """Keras' variance is E[(x - mean)^2]; Flax's LayerNorm's E[x^2] - mean^2 loses digits in
    float32 when the mean is large against the spread (here 3 against 0.05). Judged against
    Keras in float64: kjax's float32 twin is as close as Keras' own float32 layer (measured
    5.8e-6 and 4.9e-6), Flax's 80 times further (4.1e-4)."""
    x = 3.0 + 0.05 * np.random.default_rng(4).normal(size=(2, *SHAPE))

    def twin(x, kw):
        return knn.LayerNorm(epsilon=1e-6, name="ln", **kw)(x)

    def build(x):
        return L.LayerNormalization(epsilon=1e-6, name="ln")(x)

    ref64 = reference(build, twin, "float64", x=x)
    keras32 = reference(build, twin, "float32", x=x)
    keras_error = relative_error(keras32.expected, ref64.expected)
    variables = jax.tree.map(lambda v: np.asarray(v, np.float32), ref64.variables)
    float32 = Reference("float32", keras32.x, ref64.expected, variables)
    ours = float32.error(twin)
    flax = float32.error(lambda x, kw: nn.LayerNorm(epsilon=1e-6, name="ln", **kw)(x))
    print(f"against Keras float64: Keras float32 {keras_error:.2e}, kjax {ours:.2e}, "
          f"Flax {flax:.2e}")
    assert ref64.error(twin) < TOLERANCE["float64"]
    assert ours < 2 * keras_error and flax > 20 * keras_error


def test_layer_norm_needs_its_epsilon():
    with pytest.raises(TypeError):
        knn.LayerNorm()


# ---------------------------------------------------------------------------------- LayerScale


@precisions
def test_layer_scale(precision):
    """ConvNeXt's LayerScale, twice in one model: Keras names the weights ``variable`` and
    ``variable_1`` (or further on, by a per-process counter); the rule takes each whatever its
    name."""
    from keras.src.applications.convnext import LayerScale

    def build(x):
        x = LayerScale(1e-6, x.shape[-1], name="a_layer_scale")(x)
        return LayerScale(1e-6, x.shape[-1], name="b_layer_scale")(x)

    def twin(x, kw):
        x = knn.LayerScale(name="a_layer_scale", **kw)(x)
        return knn.LayerScale(name="b_layer_scale", **kw)(x)

    ref = reference(build, twin, precision)
    assert set(ref.variables["params"]["a_layer_scale"]) == {"gamma"}
    swapped = {"params": {"a_layer_scale": ref.variables["params"]["a_layer_scale"],
                          "b_layer_scale": {"gamma": ref.variables["params"]["b_layer_scale"][
                              "gamma"][::-1]}}}
    assert_twin(ref, twin)
    assert ref.error(twin, swapped) > MARGIN * TOLERANCE[precision]


def test_layer_scale_rule_refuses_other_weights():
    from kjax_core.conversion.layer_rules import layer_scale
    from kjax_core.errors import WeightsError
    from kjax_core.plugin_system.types import WeightBag

    bag = WeightBag("ls", {"variable_3": np.ones(4)})
    assert list(layer_scale(None, bag)["params"]) == ["gamma"] and not bag.leftover()
    with pytest.raises(WeightsError, match="one weight"):
        layer_scale(None, WeightBag("ls", {"a": np.ones(4), "b": np.ones(4)}))


# -------------------------------------------------------------------- tf_keras' BatchNorm


def _tf_keras_batch_norm(x):
    return tf_keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")(x)


def _tf_bn_twin(x, kw, cls=knn.TFKerasBatchNorm, train=False):
    return cls(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn", **kw)(x)


@precisions
def test_tf_keras_batch_norm_inference(precision):
    """tf_keras BatchNormalization (RegNet's epsilon and momentum) with its moving statistics."""
    ref = reference(_tf_keras_batch_norm, _tf_bn_twin, precision, package=tf_keras)
    # tf_keras' default epsilon (1e-3) instead of RegNet's 1e-5
    assert_twin(ref, _tf_bn_twin,
                lambda x, kw: knn.TFKerasBatchNorm(use_running_average=True, momentum=0.9,
                                                   name="bn", **kw)(x))


def test_tf_keras_batch_norm_training():
    """training=True: outputs normalised with the batch statistics (float64, against tf_keras'
    float64 layer), and the moving statistics stepped as tf_keras' float32 layer (the fused
    kernel users run) steps them: the moving variance toward n / (n - 1) times the batch
    variance. tf_keras' float64 layer (not fused) and Keras 3's BatchNorm step toward the biased
    variance, visibly otherwise (n = 2 * 9 * 7 = 126: 0.8% of the variance)."""
    rng = np.random.default_rng(5)
    x = 1.5 + 2.0 * rng.normal(size=(2, *SHAPE))
    # gamma, beta, moving mean, moving variance: float32 values (exact in float64)
    weights = [np.asarray(w, np.float32) for w in (
        rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.2, 6), rng.normal(0, 0.5, 6),
        rng.uniform(0.5, 2.0, 6))]
    keras_out, keras_step = {}, {}
    for precision in PRECISIONS:
        with keras_precision(tf_keras, precision):
            inputs = tf_keras.Input(SHAPE, dtype=precision)
            model = tf_keras.Model(inputs, _tf_keras_batch_norm(inputs))
        layer = model.get_layer("bn")
        layer.set_weights([np.asarray(w, precision) for w in weights])
        keras_out[precision] = np.asarray(model(np.asarray(x, precision), training=True))
        keras_step[precision] = [np.asarray(after, np.float64) - before for after, before
                                 in zip(layer.get_weights()[2:], weights[2:])]

    def flax_step(cls, precision):
        """(output, [mean step, variance step]) of a training pass of the twin ``cls``."""
        variables = {"params": {"bn": {"scale": weights[0], "bias": weights[1]}},
                     "batch_stats": {"bn": {"mean": weights[2], "var": weights[3]}}}
        with jax.enable_x64(precision == "float64"):
            module = One(lambda x: _tf_bn_twin(x, flax_dtypes(precision), cls, train=True))
            variables = jax.tree.map(lambda v: np.asarray(v, precision), variables)
            out, updated = module.apply(variables, np.asarray(x, precision),
                                        mutable=["batch_stats"])
        after = updated["batch_stats"]["bn"]
        return np.asarray(out), [np.asarray(after[k], np.float64) - w
                                 for k, w in (("mean", weights[2]), ("var", weights[3]))]

    for precision in PRECISIONS:
        out, (mean_step, var_step) = flax_step(knn.TFKerasBatchNorm, precision)
        error = relative_error(out, keras_out["float64"])
        assert error < TOLERANCE[precision], (precision, error)
        assert relative_error(mean_step, keras_step["float32"][0]) < 1e-5
        assert relative_error(var_step, keras_step["float32"][1]) < 1e-5
        print(f"{precision}: outputs {error:.2e}, variance step "
              f"{relative_error(var_step, keras_step['float32'][1]):.2e} (against float32)")
        # Keras 3's step (knn.BatchNorm), toward the biased variance, is off; it is the step of
        # tf_keras' own float64 layer
        _, (_, biased) = flax_step(knn.BatchNorm, precision)
        assert relative_error(biased, keras_step["float32"][1]) > 1e-3
        assert relative_error(biased, keras_step["float64"][1]) < 1e-5


def test_tf_keras_batch_norm_folds():
    """BatchNorm folding recognises it (it is a flax BatchNorm) and folds it exactly."""
    from kjax_core.inference.fold import fold_batch_norm

    class ConvBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = knn.conv(x, 4, 3, use_bias=False, name="c")
            return _tf_bn_twin(x, {})

    module, x = ConvBN(), np.random.default_rng(0).normal(size=(1, 9, 7, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda v: np.asarray(v * rng.uniform(0.5, 1.5, v.shape) + 0.1,
                                                  np.float32), variables)
    folded, folded_variables = fold_batch_norm(module, variables, input_shape=(9, 7, 3))
    assert len(folded.folds) == 1
    assert relative_error(folded.apply(folded_variables, x), module.apply(variables, x)) < 1e-6


# ------------------------------------------------------------ constant in-graph preprocessing

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_VARIANCE = [0.229**2, 0.224**2, 0.225**2]
CONVNEXT_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
CONVNEXT_VARIANCE = [(0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2]

PREPROCESSING = {
    # family: (Keras layer, twin, a wrong twin)
    "mobilenet_v3": (lambda: L.Rescaling(scale=1.0 / 127.5, offset=-1.0),
                     lambda x: knn.rescaling(x, 1.0 / 127.5, -1.0),
                     lambda x: knn.rescaling(x, 1.0 / 127.5)),  # the offset forgotten
    "regnet": (lambda: L.Rescaling(scale=1.0 / 255.0),
               lambda x: knn.rescaling(x, 1.0 / 255.0),
               lambda x: knn.rescaling(x, 1.0 / 127.5, -1.0)),  # MobileNetV3's instead
    "efficientnet_v2": (lambda: L.Rescaling(scale=1.0 / 128.0, offset=-1),
                        lambda x: knn.rescaling(x, 1.0 / 128.0, -1),
                        lambda x: knn.rescaling(x, 1.0 / 127.5, -1)),
    "per_channel": (lambda: L.Rescaling(scale=[1 / 0.229, 1 / 0.224, 1 / 0.225]),
                    lambda x: knn.rescaling(x, [1 / 0.229, 1 / 0.224, 1 / 0.225]),
                    lambda x: knn.rescaling(x, [1 / 0.225, 1 / 0.224, 1 / 0.229])),  # BGR
    "resnet_rs": (lambda: L.Normalization(mean=IMAGENET_MEAN, variance=IMAGENET_VARIANCE),
                  lambda x: knn.normalize_constant(x, IMAGENET_MEAN, IMAGENET_VARIANCE),
                  # the variance used as the std (tensorflow/tensorflow#49930, the other way)
                  lambda x: knn.normalize_constant(x, IMAGENET_MEAN, np.square(
                      IMAGENET_VARIANCE))),
    "convnext": (lambda: L.Normalization(mean=CONVNEXT_MEAN, variance=CONVNEXT_VARIANCE),
                 lambda x: knn.normalize_constant(x, CONVNEXT_MEAN, CONVNEXT_VARIANCE),
                 lambda x: knn.normalize_constant(x, CONVNEXT_MEAN[::-1], CONVNEXT_VARIANCE)),
}


def _float32_constants(twin):
    """The same twin computed in float32 (what a float32 constant leaks into a float64 model)."""
    def leaky(x):
        return twin(x.astype(jnp.float32)).astype(x.dtype)
    return leaky


@precisions
@pytest.mark.parametrize("name", sorted(PREPROCESSING))
def test_constant_preprocessing(name, precision):
    """Rescaling / Normalization with constants given to the constructor (no weights), on pixel
    values, with the constants in the compute dtype: in float64 exact (Keras' own rounding of
    them through float32 undone by the parity harness), and a twin computing in float32 is off."""
    keras_layer, twin, mistaken = PREPROCESSING[name]
    x = np.random.default_rng(6).uniform(0, 255, size=(2, 9, 7, 3))
    ref = reference(lambda x: keras_layer()(x), lambda x, kw: twin(x), precision, x=x,
                    shape=(9, 7, 3))
    assert not ref.variables
    wrong = [lambda x, kw: mistaken(x)]
    if precision == "float64":
        wrong.append(lambda x, kw: _float32_constants(twin)(x))
    assert_twin(ref, lambda x, kw: twin(x), *wrong)


# ------------------------------------------------------------------------------------- dtypes

DTYPE_CASES = {
    "layer_norm": lambda x, kw: knn.LayerNorm(epsilon=1e-6, name="ln", **kw)(x),
    "layer_scale": lambda x, kw: knn.LayerScale(name="ls", **kw)(x),
    "tf_keras_batch_norm": lambda x, kw: _tf_bn_twin(x, kw, train=True),
    "squeeze_excite": _se(2, "r", "e", gate="hard_sigmoid"),
    "correct_pad_conv": lambda x, kw: knn.correct_pad_conv(x, 3, strides=2, features=4, name="c",
                                                           **kw),
    "drop_connect": lambda x, kw: knn.drop_connect(x, 0.3, train=True, name="d"),
    "preprocessing": lambda x, kw: knn.normalize_constant(
        knn.rescaling(x, 1.0 / 127.5, -1.0), [0.4, 0.5, 0.6], [0.04, 0.05, 0.06]),
    "activations": lambda x, kw: knn.hard_swish(knn.gelu(x)),
}


@pytest.mark.parametrize("case", sorted(DTYPE_CASES))
def test_blocks_keep_the_dtype(case):
    """A float64 apply holds no other floating dtype (constants included), and a bfloat16 one
    computes in bfloat16 but for tests/test_dtypes.py's exceptions (statistics, reductions,
    dropout masks). Training mode, so BatchNorm's step and dropout are traced too."""
    fn = DTYPE_CASES[case]

    def jaxpr(dtype, param_dtype):
        module = One(lambda x: fn(x, {"dtype": dtype, "param_dtype": param_dtype}))
        x = jax.ShapeDtypeStruct((2, 9, 7, 3), param_dtype)
        variables = jax.eval_shape(
            lambda x: module.init({"params": jax.random.PRNGKey(0),
                                   "dropout": jax.random.PRNGKey(1)}, x), x)
        stats = knn.statistics_dtype(param_dtype)
        variables = {c: jax.tree.map(lambda v: jax.ShapeDtypeStruct(
            v.shape, param_dtype if c == "params" else stats), tree)
            for c, tree in variables.items()}
        return jax.make_jaxpr(lambda v, x: module.apply(
            v, x.astype(dtype), mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(2)}))(
            variables, x)

    with jax.enable_x64(True):
        offences = foreign_dtypes(jaxpr(jnp.float64, jnp.float64), jnp.float64, everything=True)
    assert not offences, [str(o) for o in offences]
    offences = unexcused(foreign_dtypes(jaxpr(jnp.bfloat16, jnp.float32), jnp.bfloat16,
                                        everything=False))
    assert not offences, [str(o) for o in offences]
