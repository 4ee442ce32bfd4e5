"""Flax NNX: a translated model as an NNX module (kjax_core.to_nnx, load(..., nnx=True)) computes
what the Linen module computes, and an NNX train step equals the Linen train step.

The model is MobileNet (v1) at alpha 0.25 with logits and dropout 0.5 before the classifier:
BatchNorm (updated in train mode), depthwise convolutions, and dropout that moves the loss (so the
dropout stream is exercised); the smallest family model whose gradient compiles in a few seconds
(MobileNetV3Small's takes 12 s here). Its variables are random
(moving statistics included: a default init's mean 0 / variance 1 would hide a swap), made from
the abstract init without running it, which keeps this file cheap.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

import kjax_core
from kjax_core.parity import relative_error

from helpers import assert_same_variables

NAME, OPTIONS, SIZE = "mobilenet", {"alpha": 0.25, "dropout": 0.5, "classifier_activation": None}, (2, 64, 64, 3)
LABELS = jnp.array([3, 7])


def random_variables(module, seed=0):
    """Variables of ``module`` with every leaf random, at scales that keep the signal through the
    depth (He-scaled kernels, small offsets), so the logits depend on the images (measured: 10%
    apart for two batches; with unit-gain kernels 4%, as offsets drown the signal)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(SIZE))

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) if shape[-2] != 1 else int(np.prod(shape[:2]))
            value = rng.standard_normal(shape) * np.sqrt(2 / fan_in)
        elif name == "var":
            value = rng.uniform(0.8, 1.2, shape)
        elif name == "scale":
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:  # bias, mean
            value = 0.02 * rng.standard_normal(shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def linen():
    module = kjax_core.create_model(NAME, **OPTIONS)
    variables = random_variables(module)
    images = jax.random.uniform(jax.random.PRNGKey(1), SIZE, minval=-1.0, maxval=1.0)  # "tf" preprocessing
    return module, variables, images


def nnx_forward(model, images):
    return model(images)


def test_nnx_module_computes_the_linen_output(linen, tmp_path):
    """Same weights, same images: the NNX module's output equals module.apply's bit for bit
    (both jitted: the bridge runs the same Linen computation), from to_nnx and from load()."""
    module, variables, images = linen
    expected = np.asarray(jax.jit(module.apply)(variables, images))
    forward = nnx.jit(nnx_forward)
    model = kjax_core.to_nnx(module, variables)
    # The state is the Linen tree under NNX types, arrays as given (no copy), and back again.
    assert nnx.state(model, nnx.Param)["conv1"]["kernel"].get_value() is variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(forward(model, images)), expected)
    assert_same_variables({"params": nnx.state(model, nnx.Param).to_pure_dict(),
                           "batch_stats": nnx.state(model, nnx.BatchStat).to_pure_dict()}, variables)
    # The check can fail: other images give another output.
    assert relative_error(np.asarray(forward(model, images[::-1])), expected) > 1e-2

    translation = SimpleNamespace(
        spec=kjax_core.get_spec(NAME), options=OPTIONS, input_shape=SIZE[1:], variables=variables,
        reference=SimpleNamespace(weights=None, weights_file=None))
    kjax_core.save(translation, tmp_path / "out")
    loaded = kjax_core.load(tmp_path / "out", nnx=True)
    assert isinstance(loaded, nnx.Module)
    np.testing.assert_array_equal(np.asarray(forward(loaded, images)), expected)


def cross_entropy(logits):
    return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()


def test_nnx_train_step_equals_the_linen_train_step(linen):
    """One SGD step, NNX (nnx.Optimizer, nnx.value_and_grad, model(x, train=True)) against Linen
    (module.apply(..., train=True, mutable=["batch_stats"]) under jax.value_and_grad, the same
    dropout key): loss, every gradient, every updated moving statistic and every updated parameter
    agree to float32 rounding, relative L2 per leaf within 1e-6 (two jitted programs, which XLA
    may fuse differently; measured here: bit-identical)."""
    module, variables, images = linen
    tolerance = 1e-6
    model = kjax_core.to_nnx(module, variables, rngs=nnx.Rngs(dropout=5))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, images):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(images, train=True)))(model)
        optimizer.update(model, grads)
        return loss, grads

    loss, grads = nnx_step(model, optimizer, images)

    @jax.jit
    def linen_step(params, batch_stats, images, key):
        def loss_fn(params):
            logits, updates = module.apply({"params": params, "batch_stats": batch_stats}, images,
                                           train=True, mutable=["batch_stats"], rngs={"dropout": key})
            return cross_entropy(logits), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_stats, optax.apply_updates(params, jax.tree.map(lambda g: -0.1 * g, grads))

    # The key the model draws: the first of its fork of the Rngs it was given.
    key = nnx.Rngs(dropout=5).fork().dropout()
    want_loss, want_grads, want_stats, want_params = linen_step(
        variables["params"], variables["batch_stats"], images, key)

    def close(got, want, what):
        got, want = flatten_dict(got), flatten_dict(want)
        assert got.keys() == want.keys(), what
        worst = max(relative_error(np.asarray(got[p]), np.asarray(want[p])) for p in want)
        assert worst <= tolerance, f"{what}: {worst:.2e}"

    assert abs(float(loss) - float(want_loss)) <= tolerance * abs(float(want_loss))
    close(nnx.state(grads, nnx.Param).to_pure_dict(), want_grads, "gradients")
    close(nnx.state(model, nnx.BatchStat).to_pure_dict(), want_stats, "batch_stats")
    close(nnx.state(model, nnx.Param).to_pure_dict(), want_params, "params after the step")
    # The check can fail: the statistics and parameters moved, and dropout with another key
    # gives another loss.
    moved_stats = max(relative_error(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(want_stats), jax.tree.leaves(variables["batch_stats"])))
    moved_params = max(relative_error(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(want_params), jax.tree.leaves(variables["params"])))
    assert moved_stats > 1e-3 and moved_params > 1e-4, (moved_stats, moved_params)
    other_key = jax.random.key(9)  # a typed key as NNX's: the same compiled step
    other_loss = linen_step(variables["params"], variables["batch_stats"], images, other_key)[0]
    assert abs(float(other_loss) - float(want_loss)) > 1e3 * tolerance * abs(float(want_loss))


def test_variables_that_do_not_fit_are_named(linen):
    module, variables, _ = linen
    with pytest.raises(kjax_core.WeightsError, match=r"missing \['conv1_bn/mean'"):
        kjax_core.to_nnx(module, {"params": variables["params"]})
    bad = jax.tree.map(lambda leaf: leaf, variables)
    bad["params"]["conv1"]["kernel"] = jnp.zeros((3, 3, 3, 16))
    with pytest.raises(kjax_core.WeightsError, match=r"mis-shaped or of another collection \['conv1/kernel'\]"):
        kjax_core.to_nnx(module, bad)
