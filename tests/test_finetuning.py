"""The fine-tuning helpers keep their word: drop_top leaves out a with-top file's top and names it,
new_top puts a new top on a backbone as Keras initialises one, with_variables and save() record
what the variables are, the ``training`` switches act as Keras' frozen backbone does, keras_adam is
Keras' Adam/AdamW at every step, freeze moves only what it is told to."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kjax_core
from kjax_core.conversion.keras_model import build_keras_model, placeholder_initializers
from kjax_core.training import cross_entropy, freeze, keras_adam

from helpers import run_cli


@pytest.fixture(scope="module")
def with_top_file(tmp_path_factory):
    """A MobileNet (alpha 0.25) weights file with its top, random weights."""
    spec = kjax_core.get_spec("mobilenet")
    options = {**spec.default_options(), "alpha": 0.25}
    options.pop("features_only"), options.pop("training")
    model = build_keras_model(spec, options, None).model
    path = tmp_path_factory.mktemp("weights") / "mobilenet_025_top.weights.h5"
    model.save_weights(path)
    return path, model


def test_drop_top_names_what_it_leaves_out(with_top_file, tmp_path, capsys):
    path, keras_model = with_top_file
    with pytest.raises(kjax_core.WeightsError, match="unused: .* drop_top=True"):  # not silently
        kjax_core.translate("mobilenet", str(path), include_top=False, alpha=0.25)
    t = kjax_core.translate("mobilenet", str(path), include_top=False, pooling="avg",
                            alpha=0.25, drop_top=True)
    assert t.dropped == {"conv_preds": {"params/kernel": (1, 1, 256, 1000),
                                        "params/bias": (1000,)}}
    # The backbone's weights are the file's.
    np.testing.assert_array_equal(t.variables["params"]["conv1"]["kernel"],
                                  keras_model.get_layer("conv1").kernel.numpy())
    code, out, err = run_cli(["translate", "mobilenet", "-w", str(path), "--no-include-top",
                              "--drop-top", "--set", "alpha=0.25", "-o", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "dropped (--drop-top): conv_preds (kernel 1x1x256x1000, bias 1000)" in err
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["dropped"] == {"conv_preds": {"params/kernel": [1, 1, 256, 1000],
                                                "params/bias": [1000]}}
    assert config["variables"] == "translated"


@pytest.mark.parametrize("args, message", [
    (["--drop-top"], "error: drop_top leaves out the top of the weights' model: it needs "
                     "--no-include-top (the model you get)"),
    (["--drop-top", "--no-include-top", "-w", "none"], "error: drop_top leaves out the top of a "
     "weights file's model: pass --weights (a file with top, or imagenet)"),
])
def test_drop_top_refusals(args, message, tmp_path, capsys):
    code, out, err = run_cli(["translate", "mobilenet", *args, "-o", str(tmp_path / "o")], capsys)
    assert (code, err.strip()) == (2, message)
    assert not (tmp_path / "o").exists()


def test_drop_top_of_a_file_without_top_is_refused(tmp_path):
    spec = kjax_core.get_spec("mobilenet")
    options = {**spec.default_options(), "alpha": 0.25, "include_top": False}
    options.pop("features_only"), options.pop("training")
    with placeholder_initializers():
        model = build_keras_model(spec, options, None).model
    model.save_weights(tmp_path / "notop.weights.h5")
    with pytest.raises(Exception):  # Keras itself refuses to load it into the with-top model
        kjax_core.translate("mobilenet", str(tmp_path / "notop.weights.h5"), include_top=False,
                            alpha=0.25, drop_top=True)


def test_new_top_and_saving_what_the_variables_are(with_top_file, tmp_path):
    path, _ = with_top_file
    backbone = kjax_core.translate("mobilenet", str(path), include_top=False, alpha=0.25,
                                   drop_top=True)
    model = kjax_core.new_top(backbone, classes=10, seed=3)
    assert model.options["classes"] == 10 and model.options["classifier_activation"] is None
    kernel = np.asarray(model.variables["params"]["conv_preds"]["kernel"])
    assert kernel.shape == (1, 1, 256, 10)
    limit = np.sqrt(6 / (256 + 10))  # Glorot-uniform, as Keras' Conv2D
    assert np.abs(kernel).max() <= limit and kernel.std() > 0.4 * limit
    np.testing.assert_array_equal(model.variables["params"]["conv_preds"]["bias"], 0)
    np.testing.assert_array_equal(model.variables["params"]["conv1"]["kernel"],
                                  backbone.variables["params"]["conv1"]["kernel"])
    assert "conv_preds" in model.variables_note
    x = np.zeros((2, 64, 64, 3), np.float32)
    assert model.module.apply(model.variables, x).shape == (2, 10)
    with pytest.raises(kjax_core.OptionError, match="new_top replaces no top"):
        kjax_core.new_top(model, classes=5)

    trained = jax.tree.map(lambda a: np.asarray(a) * 0.5, model.variables)
    with pytest.raises(kjax_core.WeightsError, match="do not fit"):
        model.with_variables({"params": trained["params"]}, "half")
    tuned = model.with_variables(trained, "fine-tuned: halved")
    out = kjax_core.save(tuned, tmp_path / "tuned")
    config = json.loads((out / "config.json").read_text())
    assert config["variables"] == "fine-tuned: halved" and config["options"]["classes"] == 10
    module, variables = kjax_core.load(out)
    np.testing.assert_array_equal(module.apply(variables, x), tuned.module.apply(trained, x))


def test_training_switches():
    """train=True with training="all" moves BatchNorm and drops out; "batch_norm" never drops
    out (no rng needed); "dropout" keeps BatchNorm in inference mode (Keras' frozen backbone)."""
    x = jnp.linspace(0, 255, 2 * 48 * 40 * 3).reshape(2, 48, 40, 3)
    base = kjax_core.create_model("mobilenet", alpha=0.25, dropout=0.5, classifier_activation=None)
    variables = jax.jit(base.init)(jax.random.key(0), x)
    inference = base.apply(variables, x)
    for mode, bn_moves, drops in [("all", True, True), ("batch_norm", True, False),
                                  ("dropout", False, True)]:
        model = base.clone(training=mode)
        rngs = {"dropout": jax.random.key(1)} if drops else {}
        out, updated = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        moved = any(not np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])))
        assert moved == bn_moves, mode
        if mode == "dropout":  # BatchNorm as in inference: only the head's dropout differs
            other, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.key(2)})
            assert not np.array_equal(out, other)
    with pytest.raises(kjax_core.OptionError, match="training must be one of all, batch_norm, dropout"):
        kjax_core.create_model("mobilenet", training="frozen")


def test_frozen_backbone_is_keras_trainable_false():
    """Keras' BatchNormalization with trainable=False runs in inference mode under
    training=True: kjax's training="dropout" computes the same, in float64."""
    from kjax_core.parity import reference_model, sample_images
    from kjax_core.parity.reference import float64_module, float64_variables, keras_float64
    from kjax_core.preprocessing import apply_mode

    translation, keras_model = reference_model("mobilenetv2", input_shape=(37, 35, 3), alpha=0.35,
                                               classifier_activation=None)
    twin = keras_float64(translation, keras_model)
    for layer in twin.layers:
        if "BatchNormalization" in type(layer).__name__:
            layer.trainable = False
    x = apply_mode("tf", sample_images((2, 37, 35, 3), 3)).astype(np.float64)
    expected = np.asarray(twin(x, training=True))
    with jax.enable_x64(True):
        module = float64_module(translation.module.clone(training="dropout"))
        ours, _ = module.apply(float64_variables(translation.variables), x, train=True,
                               mutable=["batch_stats"])
        trains = float64_module(translation.module).apply(
            float64_variables(translation.variables), x, train=True, mutable=["batch_stats"])[0]
    assert np.linalg.norm(np.asarray(ours) - expected) <= 1e-12 * np.linalg.norm(expected)
    assert np.linalg.norm(np.asarray(trains) - expected) > 1e-3 * np.linalg.norm(expected)


@pytest.mark.parametrize("weight_decay", [None, 2.0 ** -8])
def test_keras_adam_is_keras_at_every_step(weight_decay):
    """Five steps of Keras' Adam/AdamW and of keras_adam on the same gradients, in float64 (with
    hyperparameters exact in float32, as Keras on TensorFlow casts them) and in float32; a plain
    optax.adam with eps=epsilon is visibly not Keras' where gradients are small."""
    import keras
    import optax

    rng = np.random.default_rng(0)
    start = rng.normal(size=(7,))
    grads = [rng.normal(size=(7,)) * 1e-6 for _ in range(5)]
    lr, b1, b2, eps = 2.0 ** -7, 0.875, 1 - 2.0 ** -9, 2.0 ** -24
    for dtype, limit in [(np.float64, 1e-12), (np.float32, 4 * np.finfo(np.float32).eps)]:
        variable = keras.Variable(start.astype(dtype))
        kwargs = dict(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
        keras_optimiser = (keras.optimizers.Adam(**kwargs) if weight_decay is None
                           else keras.optimizers.AdamW(weight_decay=weight_decay, **kwargs))
        with jax.enable_x64(dtype == np.float64):
            tx = keras_adam(lr, b1, b2, eps, weight_decay=weight_decay, dtype=dtype)
            naive = optax.adam(lr, b1, b2, eps) if weight_decay is None else optax.adamw(
                lr, b1, b2, eps, weight_decay=weight_decay)
            ours, state = jnp.asarray(start, dtype), None
            plain, plain_state = ours, naive.init(ours)
            state = tx.init(ours)
            for g in grads:
                g = jnp.asarray(g, dtype)
                keras_optimiser.apply_gradients([(keras.ops.convert_to_tensor(np.asarray(g)), variable)])
                updates, state = tx.update(g, state, ours)
                ours = optax.apply_updates(ours, updates)
                updates, plain_state = naive.update(g, plain_state, plain)
                plain = optax.apply_updates(plain, updates)
            expected = np.asarray(variable.numpy(), np.float64)
            moved = np.abs(expected - start.astype(dtype)).max()
            # float64: within rounding of the step; float32: within a few ulps of the weights
            scale = moved if dtype == np.float64 else np.abs(expected).max()
            assert np.abs(np.asarray(ours, np.float64) - expected).max() <= limit * scale, dtype
            assert np.abs(np.asarray(plain, np.float64) - expected).max() > 0.01 * moved


def test_freeze_moves_only_what_it_is_told():
    import optax

    params = {"backbone": {"kernel": jnp.ones(3)}, "predictions": {"kernel": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = freeze(optax.sgd(0.5), trainable=lambda path: path[0] == "predictions")
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["backbone"]["kernel"], 1.0)
    np.testing.assert_array_equal(new["predictions"]["kernel"], 0.5)
    assert float(cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))) == pytest.approx(np.log(2))
