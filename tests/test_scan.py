"""Runs of identical blocks scanned (kjax_core.nn.repeat, kjax_core.inference.scan): the scanned
model is the same computation as the unrolled one, judged against Keras like every model.

For the smallest variant of each family that repeats blocks (the deep ones in the slow tier), on
randomised, calibrated weights at an odd size: the scanned, folded model in float64 equals Keras'
float64 twin (1e-9) and the predictor in float32 is no farther from it than twice Keras' own float32
model; the runs really are scanned (stacked variables, one module per run), and a run stacked in
the wrong order fails the same judge.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kjax_core
from kjax_core.inference.fold import fold_batch_norm
from kjax_core.inference.scan import scan_blocks, stack_runs
from kjax_core.nn.repeat import BODY, record_runs
from kjax_core.parity import (
    FLOAT32_FACTOR, FLOAT64_TOLERANCE, MIN_SENSITIVITY, float64_module, float64_variables,
    keras_float64, reference_model, relative_error, sample_images,
)
from kjax_core.preprocessing import apply_mode

# (model, size, the runs it scans: blocks per run, two or more)
MODELS = [
    ("resnet50", (67, 45), [2, 3, 5, 2]),
    ("efficientnetb0", (97, 83), [2, 2, 3]),
    ("resnetrs50", (67, 45), [2, 3, 5, 2]),
    ("regnety002", (67, 45), [3, 6]),
    ("convnexttiny", (67, 45), [3, 3, 9, 3]),
    ("resnet50v2", (67, 45), [2, 4]),
    ("efficientnetv2b0", (67, 45), [2, 4, 7]),
    ("inceptionresnetv2", (79, 77), [10, 20, 9]),
]
DEEP = [
    ("resnet152", (67, 45), [2, 7, 35, 2]),
    ("efficientnetb7", (97, 83), [3, 6, 6, 9, 9, 12, 3]),
    ("resnetrs420", (67, 45), [3, 43, 86, 3]),
    ("convnextxlarge", (67, 45), [3, 3, 27, 3]),
    ("regnety320", (67, 45), [4, 11]),
]


def _runs(module, variables, shape):
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype), variables)
    with record_runs() as runs:
        jax.eval_shape(module.apply, abstract, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return runs


def _node(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def check_scanned(name, size, run_lengths):
    shape = (*size, 3)
    translation, keras_model = reference_model(name, input_shape=shape, include_top=False)
    x = apply_mode(kjax_core.get_spec(name).preprocessing, sample_images((2, *size, 3), 3))
    x64 = np.asarray(x, np.float64)
    expected = np.asarray(keras_float64(translation, keras_model)(x64, training=False))
    keras_error32 = relative_error(keras_model(x, training=False), expected)

    runs = _runs(translation.module, translation.variables, shape)
    assert [len(names) for _, names in runs] == run_lengths

    with jax.enable_x64(True):
        folded, variables = fold_batch_norm(float64_module(translation.module),
                                            float64_variables(translation.variables),
                                            input_shape=shape)
        scanned, stacked = scan_blocks(folded, variables, shape)
        apply = jax.jit(scanned.apply)
        error64 = relative_error(apply(stacked, x64), expected)
        # the runs are scanned: one module per run, its variables stacked over its blocks
        for path, names in runs:
            leaves = jax.tree.leaves(_node(stacked["params"], (*path, BODY)))
            assert leaves and all(np.shape(leaf)[0] == len(names) for leaf in leaves)
            assert not any(name in _node(stacked["params"], path[:-1]) for name in names)
        # and the judge sees a run stacked in the wrong order
        path, names = max(runs, key=lambda run: len(run[1]))
        wrong = jax.tree.map(lambda a: a, stacked)
        body = _node(wrong["params"], path)
        body[BODY] = jax.tree.map(lambda a: a[::-1], body[BODY])
        wrong_error = relative_error(apply(wrong, x64), expected)

    predict = kjax_core.predictor(translation.module, translation.variables, input_shape=shape,
                                  scan_blocks=True)
    unrolled = kjax_core.predictor(translation.module, translation.variables, input_shape=shape)
    out, out_unrolled = np.asarray(predict(x)), np.asarray(unrolled(x))
    error32 = relative_error(out, expected)
    print(f"{name} scanned: float64 {error64:.2e}, float32 {error32:.2e} (Keras "
          f"{keras_error32:.2e}, unrolled {relative_error(out_unrolled, expected):.2e}), "
          f"run reversed {wrong_error:.2e}")
    assert error64 <= FLOAT64_TOLERANCE
    assert wrong_error > MIN_SENSITIVITY
    assert error32 <= FLOAT32_FACTOR * keras_error32
    assert len(predict.folds) == len(unrolled.folds)
    assert predict.module.scan_blocks and not unrolled.module.scan_blocks


@pytest.mark.parametrize("name,size,runs", MODELS, ids=[m[0] for m in MODELS])
def test_scanned_model_matches_keras(name, size, runs):
    check_scanned(name, size, runs)


@pytest.mark.slow
@pytest.mark.parametrize("name,size,runs", DEEP, ids=[m[0] for m in DEEP])
def test_scanned_deep_model_matches_keras(name, size, runs):
    check_scanned(name, size, runs)


def test_scanned_feature_pyramid():
    """A backbone's pyramid taps after each run: scanned, it gives the same maps."""
    size = (67, 45)
    module = kjax_core.create_model("resnet50", include_top=False, features_only=True)
    x = jnp.asarray(sample_images((1, *size, 3), 1) / 255.0, jnp.float32)
    variables = module.init(jax.random.key(0), x)
    scanned, stacked = scan_blocks(module, variables, (*size, 3))
    assert scanned.scan_blocks and not module.scan_blocks
    ours, theirs = jax.jit(scanned.apply)(stacked, x), jax.jit(module.apply)(variables, x)
    assert set(ours) == set(theirs) == {"P1", "P2", "P3", "P4", "P5"}
    for level in theirs:
        assert relative_error(ours[level], theirs[level]) < 1e-6


def test_scanned_model_is_for_inference_only():
    module = kjax_core.create_model("resnet50", include_top=False)
    x = jnp.zeros((1, 64, 64, 3))
    variables = module.init(jax.random.key(0), x)
    scanned, stacked = scan_blocks(module, variables, (64, 64, 3))
    with pytest.raises(ValueError, match="for inference"):
        scanned.apply(stacked, x, train=True, mutable=["batch_stats"])


def test_blocks_that_differ_are_not_stacked():
    variables = {"params": {"a": {"kernel": np.zeros((3, 3))}, "b": {"kernel": np.zeros((3, 4))}}}
    with pytest.raises(ValueError, match="a..b: the blocks a, b do not hold the same params"):
        stack_runs(variables, [(("a..b",), ("a", "b"))], BODY)


def test_inference_only_fields_need_one_value_per_block():
    from flax import linen as nn

    class Block(nn.Module):
        rate: float = 0.0

        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return kjax_core.nn.repeat(self, Block, ["a", "b"], x, inference_only={"rate": [0.1]})

    with pytest.raises(ValueError, match="rate: 1 values for 2 blocks"):
        Net().init(jax.random.key(0), jnp.zeros((1, 2)))
