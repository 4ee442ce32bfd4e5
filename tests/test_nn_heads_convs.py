"""The heads and convolutions of kjax_core.nn that the families to come need, against the Keras
layers they twin, in float32 and float64:

- MobileNet v1 / v3's conv head (``Application.conv_top``), VGG's Flatten + Dense head
  (``flatten_top``), ConvNeXt's LayerNormalization head (``layer_norm_top``), with and without top;
- ``knn.conv(groups=g)``: grouped (``GroupedConv``, computed group by group) and depthwise
  (``groups`` = input channels: ``DepthwiseConv``), against Keras ``Conv2D(groups=g)``.

Each case builds the Keras layers the application stacks (Keras in float64 with floatx and the dtype
policy set, as the parity harness does), randomises every weight, translates them with kjax's own
translator (layer rules, name matching, strict assembly: the Flax names must be the Keras names, or
the order fallback must pair them) and compares outputs: float64 within 1e-14, float32 within 1e-6
(relative). Each comparison is shown able to fail: another input and any one translated leaf
changed move the output far outside it, and a deliberate mistake particular to the case (Flatten
over channels first, the groups' output channels interleaved, a wrong epsilon, the hidden
activation swapped) fails by orders of magnitude. A float64 apply holds no float32 operation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import keras
from kjax_core import nn as knn
from kjax_core.conversion.assembly import assemble
from kjax_core.conversion.flax_side import flax_modules, trace_flax
from kjax_core.conversion.keras_layers import convert_keras_layers
from kjax_core.conversion.matching import default_match

from helpers import output_moves
from kjax_core.nn import grouped as kgrouped
from kjax_core.parity import randomize, relative_error
from kjax_core.parity.reference import _float64_policy
from kjax_core.plugin_system.registry import registry
from test_dtypes import foreign_dtypes

L = keras.layers
PRECISIONS = ("float32", "float64")
TOLERANCE = {"float32": 1e-6, "float64": 1e-14}  # measured: 2.2e-7, 3.3e-16 at most
MARGIN = 100.0  # a wrong leaf, input or formulation moves the output this many tolerances away


@contextlib.contextmanager
def keras_precision(precision: str):
    """Keras builds ``precision`` models meanwhile (float64: floatx and the dtype policy)."""
    if precision == "float64":
        with _float64_policy(keras):
            yield
    else:
        yield


def flax_dtypes(precision: str) -> dict[str, Any]:
    return {"dtype": jnp.float64, "param_dtype": jnp.float64} if precision == "float64" else {}


class Tiny(knn.Application):
    """An application that is only a head (``head``: conv, flatten, layer_norm; ``options``: the
    method's keywords as pairs), so the one-line methods themselves are what is tested."""

    head: str = "conv"
    options: tuple = ()
    channels_first: bool = False  # a deliberate mistake: the map transposed to NCHW first

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = self.inputs(x)
        if self.channels_first:
            x = jnp.transpose(x, (0, 3, 1, 2))
        options = dict(self.options)
        if self.head == "conv":
            return self.conv_top(x, train=train, **options)
        if self.head == "flatten":
            return self.flatten_top(x, **options)
        return self.layer_norm_top(x, **options)


class One(nn.Module):
    """A module holding what ``make`` builds (e.g. one ``knn.conv``)."""

    make: Callable

    @nn.compact
    def __call__(self, x):
        return self.make(x)


def translate(keras_model, module, shape):
    """Keras weights -> Flax variables through kjax's translator (rules, matching, assembly)."""
    layers = convert_keras_layers(keras_model, registry().rules)
    target, order = trace_flax(module, shape)
    return assemble("test", layers, target, default_match(layers, flax_modules(target, order)))


def check(build_keras: Callable[[Any], Any], module: nn.Module, precision: str, shape,
          *, scale: float = 1.0, wrong: dict[str, Callable] | None = None):
    """Build the Keras model (``build_keras(inputs)`` -> outputs) in ``precision``, randomise and
    translate its weights into ``module``, assert parity on a batch of 2 (inputs times ``scale``),
    and that the comparison can fail: another input, every leaf changed and each of ``wrong``
    (label -> ``f(variables, x)``, a deliberately mistaken computation) land more than
    :data:`MARGIN` tolerances away. Returns (variables, x) for further checks."""
    tolerance = TOLERANCE[precision]
    with jax.enable_x64(precision == "float64"), keras_precision(precision):
        inputs = keras.Input(shape, dtype=precision)
        model = keras.Model(inputs, build_keras(inputs))
        randomize(model, seed=3)
        variables = translate(model, module, shape)
        rng = np.random.default_rng(1)
        x = (scale * rng.normal(size=(2, *shape))).astype(precision)
        expected = np.asarray(model(x))
        assert expected.dtype == precision
        apply = jax.jit(module.apply)
        actual = np.asarray(apply(variables, x))
        assert actual.dtype == precision and actual.shape == expected.shape, (actual.dtype,
                                                                              actual.shape)
        error = relative_error(actual, expected)
        assert error < tolerance, f"error {error:.3g} > {tolerance:g} ({precision})"

        other = (scale * rng.normal(size=x.shape)).astype(precision)
        moved = output_moves(apply, variables, x, expected, other, rng)
        for label, mistake in (wrong or {}).items():
            moved[label] = relative_error(np.asarray(mistake(variables, x)), expected)
    blind = {what: e for what, e in moved.items() if not e > MARGIN * tolerance}
    assert len(moved) > 1 and not blind, f"the comparison cannot see: {blind}"
    return variables, x


# ------------------------------------------------------------------------------------- heads

SHAPE = (5, 3, 6)  # the last feature map: odd, non-square, a few channels
CLASSES = 7
precisions = pytest.mark.parametrize("precision", PRECISIONS)


# (label, Keras layers after GlobalAveragePooling2D(keepdims=True), conv_top options), as
# keras/src/applications/mobilenet.py and mobilenet_v3.py write them.
MOBILENETS = {
    "v1": (
        lambda: [L.Dropout(1e-3, name="dropout"),
                 L.Conv2D(CLASSES, (1, 1), padding="same", name="conv_preds"),
                 L.Reshape((CLASSES,), name="reshape_2")],
        (("dropout_rate", 1e-3),),
    ),
    "v3": (
        lambda: [L.Conv2D(9, kernel_size=1, padding="same", use_bias=True, name="conv_2"),
                 L.Activation("hard_swish"),
                 L.Dropout(0.2),
                 L.Conv2D(CLASSES, kernel_size=1, padding="same", name="logits"),
                 L.Flatten()],
        (("logits_name", "logits"), ("hidden_features", 9), ("hidden_activation", "hard_swish"),
         ("dropout_rate", 0.2)),
    ),
    "v3-minimalistic": (
        lambda: [L.Conv2D(9, kernel_size=1, padding="same", use_bias=True, name="conv_2"),
                 L.ReLU(),
                 L.Conv2D(CLASSES, kernel_size=1, padding="same", name="logits"),
                 L.Flatten()],
        (("logits_name", "logits"), ("hidden_features", 9), ("hidden_activation", "relu"),
         ("dropout_rate", 0.0)),
    ),
}


@precisions
@pytest.mark.parametrize("activation", [None, "softmax"])
@pytest.mark.parametrize("variant", list(MOBILENETS))
def test_conv_head_is_mobilenets(variant, activation, precision):
    layers, options = MOBILENETS[variant]

    def build(x):
        x = L.GlobalAveragePooling2D(keepdims=True)(x)
        for layer in layers():
            x = layer(x)
        return L.Activation(activation, name="predictions")(x)

    kw = dict(head="conv", options=options, classes=CLASSES, classifier_activation=activation,
              **flax_dtypes(precision))
    wrong = {}
    if variant != "v1":  # the hidden activation matters: the other one is far off
        swapped = dict(options, hidden_activation="relu" if variant == "v3" else "hard_swish")
        wrong["hidden activation swapped"] = Tiny(**dict(kw, options=tuple(swapped.items()))).apply
    variables, _ = check(build, Tiny(**kw), precision, SHAPE, wrong=wrong)
    params = variables["params"]
    assert set(params) == ({"conv_preds"} if variant == "v1" else {"conv_2", "logits"})


def test_conv_head_dropout_acts_in_training_only():
    module = Tiny(head="conv", options=(("dropout_rate", 0.5),), classes=CLASSES,
                  classifier_activation=None)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *SHAPE)), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x)
    inference = module.apply(variables, x)
    trained = module.apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert inference.shape == trained.shape == (2, CLASSES)
    assert relative_error(trained, inference) > 1e-2
    np.testing.assert_array_equal(module.apply(variables, x), inference)


@precisions
@pytest.mark.parametrize("activation", [None, "softmax"])
def test_flatten_head_is_vggs(activation, precision):
    def build(x):
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(16, activation="relu", name="fc1")(x)
        x = L.Dense(12, activation="relu", name="fc2")(x)
        return L.Dense(CLASSES, activation=activation, name="predictions")(x)

    kw = dict(head="flatten", options=(("hidden", (16, 12)),), classes=CLASSES,
              classifier_activation=activation, **flax_dtypes(precision))
    # Flatten over (C, H, W), as a channels-first port would: same shapes, other order.
    wrong = {"flatten channels first": Tiny(**kw, channels_first=True).apply}
    variables, _ = check(build, Tiny(**kw), precision, SHAPE, wrong=wrong)
    assert variables["params"]["fc1"]["kernel"].shape == (np.prod(SHAPE), 16)


def test_flatten_head_defaults_are_vggs():
    module = Tiny(head="flatten", classes=CLASSES)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 512)))
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes["params"]) == {
        "fc1": {"kernel": (25088, 4096), "bias": (4096,)},
        "fc2": {"kernel": (4096, 4096), "bias": (4096,)},
        "predictions": {"kernel": (4096, CLASSES), "bias": (CLASSES,)},
    }


PREFIX = "convnext_tiny"


@precisions
@pytest.mark.parametrize("include_top,pooling,activation", [
    (True, None, None), (True, None, "softmax"), (True, "max", None),  # pooling ignored with top
    (False, None, None), (False, "avg", None), (False, "max", None),
])
def test_layer_norm_head_is_convnexts(include_top, pooling, activation, precision):
    def build(x):  # keras/src/applications/convnext.py: Head, or the no-top branch
        if include_top:
            x = L.GlobalAveragePooling2D(name=f"{PREFIX}_head_gap")(x)
            x = L.LayerNormalization(epsilon=1e-6, name=f"{PREFIX}_head_layernorm")(x)
            return L.Dense(CLASSES, activation=activation, name=f"{PREFIX}_head_dense")(x)
        if pooling == "avg":
            x = L.GlobalAveragePooling2D()(x)
        elif pooling == "max":
            x = L.GlobalMaxPooling2D()(x)
        return L.LayerNormalization(epsilon=1e-6)(x)  # automatically named

    kw = dict(head="layer_norm", include_top=include_top, pooling=pooling, classes=CLASSES,
              classifier_activation=activation, **flax_dtypes(precision))
    module = Tiny(**kw, options=(("prefix", PREFIX),))
    wrong = {"Keras' default epsilon 1e-3":
             Tiny(**kw, options=(("prefix", PREFIX), ("epsilon", 1e-3))).apply}
    # Features of small spread, as ConvNeXt's (where epsilon matters).
    variables, _ = check(build, module, precision, SHAPE, scale=0.05, wrong=wrong)
    expected = {f"{PREFIX}_head_layernorm"} | ({f"{PREFIX}_head_dense"} if include_top else set())
    assert set(variables["params"]) == expected


@pytest.mark.parametrize("head", ["conv", "flatten"])
@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_heads_without_top_pool_as_keras(head, pooling):
    """MobileNet's and VGG's heads without top: GlobalAverage/MaxPooling2D or the map itself."""
    x = np.random.default_rng(0).normal(size=(2, *SHAPE))
    keras_pool = {"avg": L.GlobalAveragePooling2D, "max": L.GlobalMaxPooling2D}
    with keras_precision("float64"):
        expected = np.asarray(keras_pool[pooling]()(x)) if pooling else x
    with jax.enable_x64(True):
        module = Tiny(head=head, include_top=False, pooling=pooling, dtype=jnp.float64,
                      param_dtype=jnp.float64)
        assert module.init(jax.random.PRNGKey(0), x) == {}
        actual = module.apply({}, x)
    assert actual.dtype == jnp.float64 and actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-15


# ------------------------------------------------------------------------ grouped convolutions

# (input H, W, C; filters; kernel; groups; strides; padding): odd and non-square sizes, both
# paddings, stride 2 on odd sizes; groups below C (RegNet), = C (ConvNeXt's depthwise Conv2D),
# = C with 2C filters (a depth multiplier).
GROUPED = [
    ((9, 7, 6), 9, 3, 3, 1, "same"),
    ((9, 7, 6), 9, 3, 3, 2, "same"),
    ((11, 8, 12), 8, 3, 4, 2, "valid"),
    ((10, 13, 8), 16, (3, 2), 2, 1, "valid"),
    ((9, 7, 6), 6, 7, 6, 1, "same"),
    ((9, 7, 6), 12, 3, 6, 2, "same"),
]


def _interleaved(kernel, groups):
    """``kernel`` with its output channels read group-minor (o * g + k) instead of Flax's
    group-major (k * O/g + o): the layout mistake a translation could make."""
    kh, kw, cin, out = kernel.shape
    return np.asarray(kernel).reshape(kh, kw, cin, out // groups, groups).swapaxes(3, 4).reshape(
        kernel.shape)


def _submodule_types(module, x) -> list[str]:
    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:  # not the root
            seen.append(type(context.module).__name__)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    return seen


@precisions
@pytest.mark.parametrize("case", GROUPED, ids=str)
def test_grouped_conv_is_keras_conv2d_groups(case, precision):
    shape, filters, kernel, groups, strides, padding = case

    def make(x):
        return knn.conv(x, filters, kernel, groups=groups, strides=strides, padding=padding,
                        name="c", **flax_dtypes(precision))

    module = One(make)

    def with_kernel(change):
        def apply(variables, x):
            params = variables["params"]["c"]
            return module.apply({"params": {"c": dict(params, kernel=change(params["kernel"]))}}, x)
        return apply

    wrong = {"kernel flipped (convolution, not correlation)":
             with_kernel(lambda k: np.asarray(k)[::-1, ::-1])}
    if filters > groups:  # groups of more than one output channel: their order matters
        wrong["groups' channels interleaved"] = with_kernel(lambda k: _interleaved(k, groups))
    variables, x = check(
        lambda x: L.Conv2D(filters, kernel, strides=strides, padding=padding, groups=groups,
                           name="c")(x),
        module, precision, shape, wrong=wrong)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert variables["params"]["c"]["kernel"].shape == (kh, kw, shape[-1] // groups, filters)
    depthwise = groups == shape[-1]
    with jax.enable_x64(precision == "float64"):
        assert _submodule_types(module, x) == ["DepthwiseConv" if depthwise else "GroupedConv"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(kgrouped.FORMULATIONS))
def test_every_grouped_formulation_is_xlas(name, precision):
    """The formulations benchmarks/grouped_conv.py measures all compute XLA's grouped convolution
    (explicit pads and a non-square kernel included)."""
    tolerance = {"float32": 1e-6, "float64": 1e-14}[precision]
    rng = np.random.default_rng(0)
    cases = [((2, 9, 7, 12), (3, 3, 4, 18), 3, (1, 1), "SAME"),
             ((2, 10, 9, 12), (3, 3, 3, 8), 4, (2, 2), "SAME"),
             ((1, 8, 11, 6), (3, 2, 3, 4), 2, (2, 1), ((1, 0), (2, 1)))]
    with jax.enable_x64(precision == "float64"):
        for x_shape, k_shape, groups, strides, padding in cases:
            x = jnp.asarray(rng.normal(size=x_shape), precision)
            kernel = jnp.asarray(rng.normal(size=k_shape), precision)
            expected = kgrouped.grouped_xla(x, kernel, strides, padding, groups)
            actual = jax.jit(kgrouped.FORMULATIONS[name], static_argnums=(2, 3, 4))(
                x, kernel, strides, padding, groups)
            assert actual.dtype == precision and actual.shape == expected.shape
            assert relative_error(actual, expected) < tolerance
            assert relative_error(kgrouped.grouped_xla(
                x, jnp.asarray(_interleaved(kernel, groups)), strides, padding, groups),
                expected) > 1e-2


def test_each_platform_lowers_its_own_grouped_formulation():
    """CPU compiles the group loop (a while loop over dense convolutions); CUDA and TPU get XLA's
    grouped convolution. Decided by the platform lowered for: exported here for each."""
    from jax import export

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 12)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 18)), jnp.float32)
    apply = jax.jit(lambda x, k: kgrouped.grouped_conv(x, k, (2, 2), "SAME", 3))
    np.testing.assert_allclose(apply(x, kernel), kgrouped.grouped_xla(x, kernel, (2, 2), "SAME", 3),
                               rtol=1e-5, atol=1e-5)
    for platform in ("cpu", "cuda", "tpu"):
        text = export.export(apply, platforms=[platform])(x, kernel).mlir_module()
        assert ("stablehlo.while" in text) == (platform == "cpu"), platform
        assert ("feature_group_count = 3" in text) == (platform != "cpu"), platform


def test_conv_rejects_groups_keras_rejects():
    with pytest.raises(ValueError, match="groups=4"):
        One(lambda x: knn.conv(x, 8, 3, groups=4, name="c")).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 6)))


# ----------------------------------------------------------------------------------- dtypes


FLOAT64_CASES = {
    "conv_top v3": lambda kw: Tiny(head="conv", options=MOBILENETS["v3"][1], classes=3, **kw),
    "flatten_top": lambda kw: Tiny(head="flatten", options=(("hidden", (4, 4)),), classes=3,
                                   **kw),
    "layer_norm_top": lambda kw: Tiny(head="layer_norm", options=(("prefix", PREFIX),),
                                      classes=3, **kw),
    "layer_norm_top, no top": lambda kw: Tiny(head="layer_norm", options=(("prefix", PREFIX),),
                                              include_top=False, **kw),
    "grouped conv": lambda kw: One(lambda x: knn.conv(x, 9, 3, groups=3, padding="same",
                                                      name="c", **kw)),
    "depthwise conv": lambda kw: One(lambda x: knn.conv(x, 6, 7, groups=6, padding="same",
                                                        name="c", **kw)),
}


@pytest.mark.parametrize("case", list(FLOAT64_CASES))
def test_float64_apply_has_no_float32(case):
    with jax.enable_x64(True):
        kw = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        module = FLOAT64_CASES[case](kw)
        x = jax.ShapeDtypeStruct((2, *SHAPE), jnp.float64)
        variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
        assert all(v.dtype == jnp.float64 for v in jax.tree_util.tree_leaves(variables))
        jaxpr = jax.make_jaxpr(module.apply)(variables, x)
        offences = foreign_dtypes(jaxpr, jnp.float64, everything=True)
        assert not offences, "\n".join(map(str, offences[:10]))
        assert jaxpr.out_avals[0].dtype == jnp.float64
        # the walk would see one: the same module fed a float32 constant
        shift = jnp.asarray(np.linspace(0, 1, SHAPE[-1]), jnp.float32)
        leaky = jax.make_jaxpr(lambda v, x: module.apply(v, x + shift.astype(x.dtype)))(
            variables, x)
        assert foreign_dtypes(leaky, jnp.float64, everything=True)
