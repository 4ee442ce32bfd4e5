"""``kjax convert``: any Keras model file to a Flax module running its graph, judged in float64
against Keras (the float64 twin is the model rebuilt from its own serialized config in float64).

Default tier, together covering every op the applications need: MobileNetV3Small (keras.ops
nodes, Rescaling, hard swish, Reshape, Multiply), ConvNeXtTiny (LayerScale, StochasticDepth,
LayerNormalization, Normalization, Conv2D(groups=C)) and RegNetY002 (saved by tf_keras: its
TFOpLambda add and multiply, tf_keras' BatchNormalization), each also against its hand-written twin; a
fine-tuned EfficientNetB0 (Normalization, DepthwiseConv2D, Dropout with a noise shape, a nested
model called with training=False); a small functional model with branches, a shared layer, a nested
Sequential, SeparableConv2D, Cropping2D, ZeroPadding2D and pooling, as .keras and as legacy .h5, at
two sizes, and one saved by tf_keras with TensorFlow functions on symbolic tensors; training
(BatchNorm statistics, gradients) for both; bad files. Every other application is in the slow tier
(NASNetMobile alone takes ~60 s).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import kjax_core
from kjax_core.graph.converter import graph_paths
from kjax_core.parity import compare, reference_model, relative_error, sample_images
from kjax_core.parity.reference import (
    float64_clone, float64_module, float64_variables, keras_float64,
)

from helpers import run_cli

FAST = ["mobilenetv3small", "convnexttiny", "regnety002"]


def _apply64(module, variables, x, **kwargs):
    with jax.enable_x64(True):
        return jax.jit(lambda v, x: float64_module(module).apply(v, x, **kwargs))(
            jax.tree.map(float64_variables, variables), np.asarray(x, np.float64))


def _judge(translation, keras_model, size, seed=7):
    report = compare(translation, keras_model, sample_images((2, *size, 3), seed))
    print(report.summary())
    assert report.ok, f"{report.summary()}: {'; '.join(report.problems)}"
    return report


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in kjax_core.list_models()])
def test_application_converts_generically(name, tmp_path):
    """The model saved by Keras (model.save; by tf_keras for ResNet-RS and RegNet), converted
    with no knowledge of its family, equals Keras in float64 at an odd size, and its hand-written
    twin."""
    spec = kjax_core.get_spec(name)
    low = spec.min_input_size | 1
    size = (low + 2, low + 12)
    twin, keras_model = reference_model(name, input_shape=(*size, 3), classifier_activation=None)
    keras_model.save(tmp_path / "model.keras")
    converted = kjax_core.convert(tmp_path / "model.keras")
    _judge(converted, keras_model, size)
    x = np.asarray(sample_images((2, *size, 3), 3), np.float64)
    from kjax_core.preprocessing import apply_mode

    ours = _apply64(converted.module, converted.variables, x)
    theirs = _apply64(twin.module, twin.variables, apply_mode(spec.preprocessing, x))
    if spec.preprocessing == "none":
        assert relative_error(ours, theirs) < 1e-12


def _branchy_model(keras):
    """Branches, Concatenate, Add, a layer shared by two branches, a nested Sequential, a head."""
    from keras import layers

    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0)(x)
    shared = layers.Conv2D(8, 1, activation="swish", name="shared")
    left = shared(x)
    right = shared(layers.MaxPooling2D(3, strides=1, padding="same")(x))
    x = layers.Concatenate()([left, right, x])
    inner = keras.Sequential([keras.Input((None, None, 24)),
                              layers.DepthwiseConv2D(3, padding="same", name="dw"),
                              layers.BatchNormalization(name="dw_bn"),
                              layers.Activation("relu"),
                              layers.Conv2D(24, 1, name="pw")], name="inner")
    x = layers.Add()([x, inner(x)])
    x = layers.SeparableConv2D(16, 3, padding="same", name="sep")(x)
    x = layers.ZeroPadding2D(((1, 0), (2, 1)))(x)
    x = layers.Cropping2D(((0, 1), (1, 1)))(x)
    x = layers.AveragePooling2D(2, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.0)(x)
    outputs = layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs, name="branchy")


def _tf_keras_model():
    """A model saved by tf_keras: TensorFlow functions on symbolic tensors (TFOpLambda layers,
    positional and keyword arguments, Python constants), a shared layer, a nested Sequential."""
    import tensorflow as tf
    import tf_keras
    from tf_keras import layers

    inputs = tf_keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = tf.nn.relu6(x)
    shared = layers.Conv2D(8, 1, name="shared")
    left = tf.nn.silu(shared(x))
    right = tf.math.sigmoid(shared(layers.MaxPooling2D(3, strides=1, padding="same")(x)))
    x = tf.math.multiply(left, right) + x * 0.5 - tf.math.tanh(x) / 2.0
    x = tf.nn.relu(tf.math.add(x, y=left))
    inner = tf_keras.Sequential([tf_keras.Input((None, None, 8)),
                                 layers.DepthwiseConv2D(3, padding="same", name="dw"),
                                 layers.BatchNormalization(name="dw_bn"),
                                 layers.ReLU(),
                                 layers.Conv2D(8, 1, name="pw")], name="inner")
    x = layers.Add()([x, inner(x)])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, name="head")(x)
    return tf_keras.Model(inputs, outputs, name="tf_ops")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_tf_keras_model_with_tensorflow_functions(tmp_path, suffix):
    model = _randomised(_tf_keras_model())
    path = tmp_path / f"tf_ops{suffix}"
    model.save(path)
    converted = kjax_core.convert(path)
    classes = {entry["class"] for entry in converted.graph["layers"].values()}
    assert {"tf.nn.relu6", "tf.nn.silu", "tf.math.sigmoid", "tf.math.multiply",
            "tf.__operators__.add", "tf.math.subtract", "tf.math.truediv", "tf.math.tanh",
            "tf.math.add", "tf.nn.relu", "tf_keras.BatchNormalization"} <= classes, classes
    for size in ((33, 21), (40, 57)):
        _judge(converted, model, size)


def _randomised(model):
    from kjax_core.parity.reference import randomize

    randomize(model, seed=3)
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_functional_model_with_shared_and_nested_layers(tmp_path, suffix):
    import keras

    model = _randomised(_branchy_model(keras))
    path = tmp_path / f"branchy{suffix}"
    model.save(path)
    converted = kjax_core.convert(path)
    assert set(converted.variables["params"]) == {"stem", "stem_bn", "shared", "inner", "sep", "head"}
    assert set(converted.variables["params"]["inner"]) == {"dw", "dw_bn", "pw"}
    for size in ((33, 21), (40, 57)):  # one Keras model for any size
        _judge(converted, model, size)


def test_fine_tuned_application(tmp_path):
    """EfficientNetB0 without top + GlobalAveragePooling2D + Dropout + Dense(10, softmax), saved
    by model.save: the user's whole model in one command."""
    import keras

    from kjax_core.parity.reference import prepare_reference

    base = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                             input_shape=(None, None, 3))
    # randomised and calibrated (else all images give nearly one answer)
    prepare_reference(base, sample_images((16, 35, 45, 3), 1), seed=2, calibration="in_order")
    inputs = keras.Input((None, None, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    # The head's own weights, not Keras' draw (which depends on what the process drew before):
    # pooled features of random images differ little, and a glorot head left the probabilities
    # of different images within 2e-8 of each other in one CI ordering (too close to judge).
    head = model.get_layer("classifier")
    rng = np.random.default_rng(4)
    head.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in head.get_weights()])
    model.save(tmp_path / "fine_tuned.keras")
    out = tmp_path / "out"
    code = run_cli_quiet(["convert", tmp_path / "fine_tuned.keras", "-o", out])
    assert code == 0
    module, variables = kjax_core.load(out)
    assert set(variables["params"]) == {"efficientnetb0", "classifier"}
    loaded = kjax_core.convert(tmp_path / "fine_tuned.keras").with_variables(variables, "loaded")
    _judge(loaded, model, (35, 45))


def _flat(tree):
    return {"/".join(str(p.key) for p in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def run_cli_quiet(args):
    from kjax_core.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code


@pytest.mark.parametrize("saved_by", ["keras", "tf_keras"])
def test_training_step_equals_keras(tmp_path, saved_by):
    """train=True: outputs, BatchNorm moving statistics after the step and the gradient of every
    parameter equal Keras' (float64 twin, tf.GradientTape)."""
    import keras
    import tensorflow as tf

    model = _randomised(_branchy_model(keras) if saved_by == "keras" else _tf_keras_model())
    model.save(tmp_path / "m.keras")
    converted = kjax_core.convert(tmp_path / "m.keras")
    twin = keras_float64(converted, model)
    x = np.asarray(sample_images((4, 29, 31, 3), 5), np.float64)
    weights = np.random.default_rng(0).normal(size=(4, 10))

    with tf.GradientTape() as tape:
        keras_out = twin(x, training=True)
        keras_loss = tf.reduce_sum(keras_out * weights)
    grads = tape.gradient(keras_loss, twin.trainable_weights)

    def loss(params, rest):
        out, updates = float64_module(converted.module).apply(
            {"params": params, **rest}, x, train=True, mutable=["batch_stats"])
        return (out * weights).sum(), (out, updates)

    with jax.enable_x64(True):
        variables = jax.tree.map(float64_variables, converted.variables)
        rest = {k: v for k, v in variables.items() if k != "params"}
        (value, (out, updates)), ours = jax.jit(jax.value_and_grad(loss, has_aux=True))(
            variables["params"], rest)
    assert relative_error(out, keras_out.numpy()) < 1e-12
    assert abs(float(value) - float(keras_loss)) < 1e-9 * abs(float(keras_loss))

    # Keras' numbers in Flax's layout: the layer rules, run on a copy holding the gradients
    # (trainable weights) and the moved statistics (the rest).
    holder = float64_clone(model)  # not keras_float64: that is `twin` again, its weights reset
    by_weight = {id(w): g for w, g in zip(twin.trainable_weights, grads)}
    for target, source in zip(holder.weights, twin.weights):
        target.assign(by_weight[id(source)] if id(source) in by_weight else source)
    from kjax_core.conversion.assembly import assemble
    from kjax_core.conversion.flax_side import trace_flax
    from kjax_core.conversion.keras_layers import convert_keras_layers
    from kjax_core.plugin_system.registry import registry

    with jax.enable_x64(True):
        target, _ = trace_flax(float64_module(converted.module), (29, 31, 3))
    expected = assemble("m", convert_keras_layers(holder, registry().rules), target,
                        graph_paths(converted.graph))
    ours_flat, theirs = _flat(ours), _flat(expected["params"])
    assert ours_flat.keys() == theirs.keys()
    # All gradients together, and each one that is not noise on its own (a bias before a
    # BatchNorm in training has no gradient: ~1e-16 on both sides)
    stack = lambda flat: np.concatenate([flat[k].ravel() for k in sorted(flat)])  # noqa: E731
    assert relative_error(stack(ours_flat), stack(theirs)) < 1e-12
    largest = max(np.linalg.norm(v) for v in theirs.values())
    for key in theirs:
        if np.linalg.norm(theirs[key]) > 1e-3 * largest:
            assert relative_error(ours_flat[key], theirs[key]) < 1e-10, key
    stats, keras_stats = _flat(updates["batch_stats"]), _flat(expected["batch_stats"])
    assert stats.keys() == keras_stats.keys()
    if saved_by == "tf_keras":
        # The float64 twin's step, made what tf_keras' float32 model (which users train) does:
        # tf_keras takes the decay 1 - momentum as a float32 tensor even for float64 statistics
        # (a 1e-9 error of the reference), and its fused float32 kernel moves the variance toward
        # the unbiased batch variance, the unfused float64 one toward the biased one: n / (n - 1),
        # n = 4 images of 15x16 at both BatchNorms (29x31 after a stride of 2).
        n, old = 4 * 15 * 16, _flat(float64_variables(converted.variables["batch_stats"]))
        decay = 1 - 0.99  # tf_keras' default momentum
        for key in keras_stats:  # the batch statistic the twin moved toward, and the step
            batch = old[key] + (keras_stats[key] - old[key]) / float(np.float32(decay))
            batch = batch * n / (n - 1) if key.endswith("var") else batch
            keras_stats[key] = old[key] + decay * (batch - old[key])
    for key in keras_stats:
        assert relative_error(stats[key], keras_stats[key]) < 1e-12, key


# ------------------------------------------------------------------------------ bad input


def _refused(tmp_path, capsys, model_file, words):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["convert", model_file, "-o", out], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() and stdout == ""


def test_a_lambda_layer_is_refused(tmp_path, capsys):
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    _refused(tmp_path, capsys, tmp_path / "lambda.keras", ["Lambda", "safe mode"])


def test_a_lambda_in_a_tf_keras_h5_file_is_refused_before_its_code_runs(tmp_path, capsys):
    """tf_keras runs a legacy HDF5 file's Lambda code whatever safe_mode says: kjax refuses it
    from the file's config, before Keras reads the model."""
    import tf_keras

    ran = tmp_path / "the lambda ran"
    marker = str(ran)  # the file keeps the closure's values: JSON ones only
    inputs = tf_keras.Input((8, 8, 3))
    outputs = tf_keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1],
                                     name="touch")(inputs)
    tf_keras.Model(inputs, outputs).save(tmp_path / "lambda.h5")
    ran.unlink()  # building the model ran it; loading the file must not
    _refused(tmp_path, capsys, tmp_path / "lambda.h5", ["Lambda", "'touch'", "safe mode"])
    assert not ran.exists()


def test_tf_keras_hard_sigmoid_is_refused(tmp_path, capsys):
    """tf_keras' hard_sigmoid is another function than Keras 3's of the same name."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)),
                                 tf_keras.layers.Dense(2, activation="hard_sigmoid", name="gate")])
    model.save(tmp_path / "gate.keras")
    _refused(tmp_path, capsys, tmp_path / "gate.keras", ["'gate'", "hard_sigmoid"])


def test_an_unknown_custom_layer_is_refused(tmp_path, capsys):
    import keras

    @keras.saving.register_keras_serializable(package="kjax_test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, Doubler(name="doubler")(inputs)).save(tmp_path / "custom.keras")
    # Known to Keras (registered), but no op: refused naming the layer and the hook.
    _refused(tmp_path, capsys, tmp_path / "custom.keras",
             ["doubler (Doubler)", "kjax_register_layer_ops"])
    # Unknown to Keras (its code not imported): refused naming the class.
    del keras.saving.get_custom_objects()["kjax_test>Doubler"]
    _refused(tmp_path, capsys, tmp_path / "custom.keras", ["Doubler", "custom"])


def test_weights_only_and_corrupt_files_are_refused(tmp_path, capsys):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save_weights(tmp_path / "w.weights.h5")
    _refused(tmp_path, capsys, tmp_path / "w.weights.h5", ["weights file"])
    import tf_keras  # tf_keras writes weights-only HDF5 files under any name

    tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save_weights(
        tmp_path / "w.h5")
    _refused(tmp_path, capsys, tmp_path / "w.h5", ["weights only"])
    model.save(tmp_path / "good.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    _refused(tmp_path, capsys, tmp_path / "cut.keras", ["cut.keras"])
    (tmp_path / "text.h5").write_text("not hdf5")
    _refused(tmp_path, capsys, tmp_path / "text.h5", ["not an HDF5 file"])
    _refused(tmp_path, capsys, tmp_path / "missing.keras", ["not found"])


def test_convert_writes_the_translate_output_format(tmp_path, capsys):
    """The same output as translate: config (with the graph), variables, manifest; --force rules;
    a Dense-only Sequential (no image input) converts too."""
    import keras

    model = _randomised(keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                                          keras.layers.Dense(3)], name="mlp"))
    model.save(tmp_path / "mlp.keras")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["convert", tmp_path / "mlp.keras", "-o", out], capsys)
    assert code == 0, err
    assert "mlp" in stdout and "3 layers" not in stdout and "2 layers" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == "converted" and config["graph"]["name"] == "mlp"
    assert (out / "manifest.json").exists()
    code, _, err = run_cli(["convert", tmp_path / "mlp.keras", "-o", out], capsys)
    assert code != 0 and "--force" in err
    code, _, err = run_cli(["convert", tmp_path / "mlp.keras", "-o", out, "--force",
                            "--format", "safetensors"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(out)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    assert relative_error(module.apply(variables, x), model(x).numpy()) < 1e-6
