"""BatchNorm folding (kjax_core.inference.fold) and the fast inference path (kjax_core.predictor).

Folding must be exact: every family is folded in float64 and judged against Keras' float64 twin on
randomised, calibrated weights (kjax_core.parity: within 1e-9), the float32 fold no further from it
than twice Keras' own float32 model, and a deliberately broken fold must fail the same check.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import kjax_core
from kjax_core.inference.fold import FoldedModel, find_folds, fold_batch_norm
from kjax_core.parity import (
    FLOAT32_FACTOR, FLOAT64_TOLERANCE, MIN_SENSITIVITY, float64_module, float64_variables,
    keras_float64, reference_model, relative_error, sample_images,
)
from kjax_core.preprocessing import apply_mode

# (model, input (H, W), number of BatchNorms that fold): the smallest variant of every family;
# each plugin's own tests cover its variants and sizes.
FAMILIES = [
    ("resnet50", (67, 45), 53),  # all 53; conv with bias: the BatchNorm disappears
    ("resnet50v2", (64, 64), 32),  # of 49: pre-activation BatchNorms follow an addition
    ("densenet121", (64, 64), 59),  # of 121: BN-ReLU-conv, only the BN inside each block folds
    ("mobilenetv2", (64, 64), 52),  # all 52; depthwise convolutions
    # depthwise, squeeze-excite, in-graph Normalization; at 64x64 its 2x2 feature maps amplify
    # float32 rounding beyond 1e-4 even unfolded (Keras itself is 4e-4 off a float64 evaluation)
    ("efficientnetb0", (96, 96), 49),  # all 49
    ("inceptionv3", (75, 75), 94),  # all 94; BatchNorm without gamma (scale=False)
    ("resnetrs50", (64, 64), 56),  # the family's own BatchNorm module, checked numerically
]

_references: dict = {}


def _reference(name: str, size: tuple[int, int]):
    """(translation, keras_model) on randomised, calibrated weights, built once per session."""
    if name not in _references:
        # Every family ships with kjax: a missing one is a failure, never a skip.
        assert name in kjax_core.list_models(), f"{name} is not installed"
        _references[name] = reference_model(name, input_shape=(*size, 3), include_top=False)
    return _references[name]


def _expected(translation, keras_model, x):
    """(Keras float64 on x, Keras float32's error against it)."""
    expected = np.asarray(keras_float64(translation, keras_model)(np.asarray(x, np.float64)))
    return expected, relative_error(keras_model(x, training=False), expected)


def _fold64(translation, size):
    """The float64 twin of the translation, folded in float64: (folded module, its variables)."""
    return fold_batch_norm(float64_module(translation.module),
                           float64_variables(translation.variables), input_shape=(*size, 3))


@pytest.mark.parametrize("name,size,folds", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_folded_model_matches_keras(name, size, folds):
    translation, keras_model = _reference(name, size)
    x = apply_mode(kjax_core.get_spec(name).preprocessing, sample_images((2, *size, 3), 3))
    expected, keras_error32 = _expected(translation, keras_model, x)
    with jax.enable_x64(True):
        folded64, variables64 = _fold64(translation, size)
        error64 = relative_error(jax.jit(folded64.apply)(variables64, np.asarray(x, np.float64)),
                                 expected)
    folded, variables = fold_batch_norm(translation.module, translation.variables, input_shape=(*size, 3))
    assert len(folded.folds) == len(folded64.folds) == folds
    error32 = relative_error(jax.jit(folded.apply)(variables, x), expected)
    print(f"{name} folded: float64 {error64:.2e}, float32 {error32:.2e} (Keras {keras_error32:.2e})")
    assert error64 <= FLOAT64_TOLERANCE
    assert error32 <= FLOAT32_FACTOR * keras_error32


def test_folded_is_as_exact_as_unfolded():
    """Against a float64 evaluation of the same weights, the folded float32 model is no farther
    off than the unfolded one (folding in float64 adds no error of its own)."""
    size = (67, 45)
    translation, _ = _reference("resnet50", size)
    folded, variables = fold_batch_norm(translation.module, translation.variables, input_shape=(*size, 3))
    x = apply_mode("caffe", sample_images((2, *size, 3), 5))
    plain = jax.jit(translation.module.apply)(translation.variables, x)
    fast = jax.jit(folded.apply)(variables, x)
    with jax.enable_x64(True):
        module64 = translation.module.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        variables64 = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), translation.variables)
        exact = np.asarray(jax.jit(module64.apply)(variables64, np.asarray(x, np.float64)))
    plain_error, fast_error = relative_error(plain, exact), relative_error(fast, exact)
    assert fast_error < 1.5 * plain_error + 1e-6, (fast_error, plain_error)
    # every BatchNorm folded: no statistics left, and the computation has fewer inputs
    assert "batch_stats" not in variables
    assert len(jax.tree_util.tree_leaves(variables)) < len(jax.tree_util.tree_leaves(translation.variables))
    # the input variables are untouched (the fold copies what it changes, shares the rest)
    assert "batch_stats" in translation.variables


def test_broken_fold_fails_the_parity_check():
    """The check used above catches the fold bugs one would make: each broken copy must fail."""
    size = (67, 45)
    translation, keras_model = _reference("resnet50", size)
    x = apply_mode("caffe", sample_images((2, *size, 3), 3))
    expected, _ = _expected(translation, keras_model, x)
    with jax.enable_x64(True):
        folded, variables = _fold64(translation, size)
        first = folded.folds[0]

        def node(tree, path):
            for key in path:
                tree = tree[key]
            return tree

        original = node(float64_variables(translation.variables)["params"], first.conv)
        mean = np.asarray(node(translation.variables["batch_stats"], first.bn)["mean"], np.float64)
        broken_cases = {
            "kernel not scaled": ("kernel", original["kernel"]),
            "bias without the mean": ("bias", node(variables["params"], first.conv)["bias"] + mean),
        }
        apply = jax.jit(folded.apply)
        x64 = np.asarray(x, np.float64)
        assert relative_error(apply(variables, x64), expected) <= FLOAT64_TOLERANCE
        for what, (leaf, value) in broken_cases.items():
            broken = jax.tree_util.tree_map(lambda a: a, variables)
            node(broken["params"], first.conv)[leaf] = jnp.asarray(value)
            error = relative_error(apply(broken, x64), expected)
            assert error > MIN_SENSITIVITY, f"{what} passes: error {error:.2e}"


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_predictor_float32_options(name):
    """kjax_core.predictor in float32 matches Keras with its default compiler options (on CPU:
    Eigen convolutions, YNNPACK matrix products) and with XLA's own defaults (``{}``): no
    further from Keras' float64 twin than twice Keras' own float32 model."""
    from kjax_core.inference.predictor import EIGEN_CONVOLUTIONS

    size = {family[0]: family[1] for family in FAMILIES}[name]
    translation, keras_model = _reference(name, size)
    mode = kjax_core.get_spec(name).preprocessing
    x = apply_mode(mode, sample_images((2, *size, 3), 5))
    expected, keras_error32 = _expected(translation, keras_model, x)
    default = kjax_core.predictor(translation.module, translation.variables, input_shape=(*size, 3))
    assert default.xla_options == (EIGEN_CONVOLUTIONS if jax.default_backend() == "cpu" else {})
    plain_xla = kjax_core.predictor(translation.module, translation.variables, xla_options={},
                                    input_shape=(*size, 3))
    assert plain_xla.xla_options == {}
    for predict in (default, plain_xla):
        assert relative_error(np.asarray(predict(x)), expected) <= FLOAT32_FACTOR * keras_error32


def test_predictor_falls_back_to_xla_defaults_when_an_option_is_refused():
    """A jax release whose XLA does not know an option (here: one that exists nowhere) refuses it
    when compiling; the predictor then compiles with XLA's defaults, says so once, and computes
    the same outputs. Other errors are not taken for a refusal."""
    import warnings

    from kjax_core.inference.compiler import refused
    from kjax_core.inference.sharding import data_parallel

    module, shape = _Net(), (2, 9, 7, 3)
    variables = _random_variables(module, shape)
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    expected = np.asarray(kjax_core.predictor(module, variables, xla_options={},
                                              input_shape=shape[1:])(x))
    unknown = {"xla_kjax_option_no_xla_knows": "true"}
    predict = kjax_core.predictor(module, variables, xla_options=unknown, input_shape=shape[1:])
    assert predict.xla_options == unknown
    with pytest.warns(RuntimeWarning, match="XLA refused the compiler options .*"
                      "xla_kjax_option_no_xla_knows.*compiling with XLA's defaults instead"):
        out = predict(x)
    assert predict.xla_options == {}
    np.testing.assert_array_equal(np.asarray(out), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: neither the next call nor a new shape warns again
        predict(x)
        predict(x[:1])
    # The data-parallel path takes the same way (here over one device).
    run = data_parallel(module.apply, variables, jax.devices()[:1], unknown)
    with pytest.warns(RuntimeWarning, match="XLA refused"):
        out = run(x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(module.apply)(variables, x)))
    assert run.compiled.compiler_options == {}

    assert not refused(RuntimeError("INVALID_ARGUMENT: shapes differ"), unknown)
    assert not refused(ValueError("xla_kjax_option_no_xla_knows"), unknown)


def test_predictor_bfloat16():
    """kjax_core.predictor with dtype=bfloat16: BatchNorm folded, computed in bfloat16.
    (The float32 predictor is checked against one device in tests/test_sharding.py.)"""
    size = (67, 45)
    translation, keras_model = _reference("resnet50", size)
    x = apply_mode("caffe", sample_images((2, *size, 3), 11))
    expected = np.asarray(keras_model(x, training=False))
    bf16 = kjax_core.predictor(translation.module, translation.variables, dtype=jnp.bfloat16,
                               input_shape=(*size, 3))
    assert len(bf16.folds) == 53
    out = bf16(x)
    assert out.dtype == jnp.bfloat16
    error = relative_error(np.asarray(out, np.float32), expected)
    # bfloat16 keeps 8 bits of mantissa. A randomised deep net amplifies rounding (float32: 1e-5
    # here) far more than a trained one: ~0.1-0.2 on these feature maps (benchmarks/README.md).
    assert 1e-3 < error < 0.5


# --------------------------------------------------------------- what folds and what must not


class _Net(nn.Module):
    """conv -> BN (folds), conv -> relu -> BN (does not), a conv read twice, a shared conv, Dense -> BN."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        bn = lambda name, **kw: nn.BatchNorm(use_running_average=not train, name=name, **kw)  # noqa: E731
        y = bn("bn_a")(nn.Conv(4, (3, 3), use_bias=False, name="conv_a")(x))
        y = bn("bn_b")(nn.relu(nn.Conv(4, (1, 1), name="conv_b")(y)))
        c = nn.Conv(4, (1, 1), name="conv_c")(y)
        y = bn("bn_c")(c) + c  # the conv output is read twice: folding would change the second read
        shared = nn.Conv(4, (1, 1), name="conv_s")
        y = bn("bn_s")(shared(y)) + shared(y)
        y = bn("bn_axis", axis=1)(nn.Conv(4, (1, 1), name="conv_axis")(y))  # not the channel axis
        return bn("bn_d")(nn.Dense(3, name="dense")(jnp.mean(y, axis=(1, 2))))


def _random_variables(module, shape):
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(shape))
    rng = np.random.default_rng(1)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables)


def test_only_exact_pairs_fold():
    module, shape = _Net(), (2, 9, 7, 3)
    variables = _random_variables(module, shape)
    folds = {(f.conv[-1], f.bn[-1]) for f in find_folds(module, variables, shape[1:])}
    assert folds == {("conv_a", "bn_a"), ("dense", "bn_d")}
    folded, folded_variables = fold_batch_norm(module, variables, input_shape=shape[1:])
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    assert relative_error(jax.jit(folded.apply)(folded_variables, x), jax.jit(module.apply)(variables, x)) < 1e-6
    assert set(folded_variables["batch_stats"]) == {"bn_b", "bn_c", "bn_s", "bn_axis"}
    assert set(folded_variables["params"]["bn_a"]) == {"bias"}  # the conv has no bias to carry it


def test_folded_model_is_for_inference_only():
    module, shape = _Net(), (1, 9, 7, 3)
    variables = _random_variables(module, shape)
    folded, folded_variables = fold_batch_norm(module, variables, input_shape=shape[1:])
    x = jnp.ones(shape)
    with pytest.raises(ValueError, match="inference only"):
        folded.apply(folded_variables, x, train=True, mutable=["batch_stats"])
    # the folded variables do not fit the unfolded module: a mix-up fails instead of computing
    with pytest.raises(Exception):
        module.apply(folded_variables, x)
    assert isinstance(folded, FoldedModel) and folded.module is module


_CACHE_PROBE = """
import json, sys
import jax, numpy as np
import kjax_core

module = kjax_core.create_model("mobilenet")
x = np.zeros((1, 32, 32, 3), np.float32)
shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)  # no compilation
variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)
events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
predict = kjax_core.predictor(module, variables, input_shape=(32, 32, 3))
predict(x)
print(json.dumps({"folder": str(predict.compilation_cache),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def test_predictor_keeps_compiled_programs_for_the_next_process(tmp_path):
    """The predictor turns JAX's persistent compilation cache on in the kjax cache: a second
    process finds the programs and compiles nothing. Off with KJAX_COMPILATION_CACHE=off; a
    folder the user gave JAX is kept. (JAX keeps only programs that took over a second to compile:
    the threshold is 0 here, so that the check does not depend on the machine's speed.)"""
    import json
    import os
    import subprocess
    import sys

    def probe():
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("KJAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
        environ.update(KJAX_CACHE=str(tmp_path / "kjax"), JAX_PLATFORMS="cpu",
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        result = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True,
                                text=True, env=environ)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.splitlines()[-1])

    first, second = probe(), probe()
    assert first["folder"] == str(tmp_path / "kjax" / "xla")
    assert first["misses"] > 0 and first["hits"] == 0, first
    assert second["misses"] == 0 and second["hits"] > 0, second
    assert any((tmp_path / "kjax" / "xla").iterdir())


def test_compilation_cache_settings(tmp_path, monkeypatch):
    """Off with KJAX_COMPILATION_CACHE=off (nothing created); a folder of the user's own with
    KJAX_COMPILATION_CACHE=PATH; a folder the user gave JAX is kept as it is."""
    from kjax_core.cache import compilation_cache_dir, use_compilation_cache

    assert jax.config.jax_compilation_cache_dir is None  # the test process keeps none
    monkeypatch.setenv("KJAX_CACHE", str(tmp_path / "kjax"))
    monkeypatch.setenv("KJAX_COMPILATION_CACHE", "off")
    assert use_compilation_cache() is None and not (tmp_path / "kjax").exists()
    monkeypatch.setenv("KJAX_COMPILATION_CACHE", str(tmp_path / "mine"))
    assert compilation_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("KJAX_COMPILATION_CACHE")
    assert compilation_cache_dir() == tmp_path / "kjax" / "xla"
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
    try:  # nothing compiles meanwhile, so JAX's cache is not opened in this process
        assert use_compilation_cache() == tmp_path / "users"
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
    assert not (tmp_path / "kjax").exists()
