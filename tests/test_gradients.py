"""Fine-tuning computes what Keras computes: for one model of every family, the gradient of a
cross-entropy loss with respect to every trainable parameter equals Keras' (``tf.GradientTape``)
in float64 within 1e-9, kjax's float32 no worse than twice Keras' own float32 error, in inference
and in training mode, where the moving statistics of every BatchNorm step as Keras' do
(:func:`kjax_core.parity.gradients.compare_gradients`); one optimiser step from identical weights
gives identical weights (optax against Keras' own optimisers); the training switches
(``training=``) act as Keras' frozen backbone does; and the fine-tuning helpers keep their word."""

import numpy as np
import pytest

import kjax_core
from kjax_core.parity import reference_model, sample_images
from kjax_core.parity.gradients import (
    compare_gradients, in_flax_layout, keras_gradients, kjax_gradients,
)
from kjax_core.parity.reference import float64_module, float64_variables, keras_float64
from kjax_core.preprocessing import apply_mode


# The smallest model of each family (a test keeps it one per family); options give each the
# layers its family can have (MobileNet at alpha 0.25: the conv head with dropout).
FAMILY_MODELS = {
    "convnext": ("convnexttiny", {}),
    "densenet": ("densenet121", {}),
    "efficientnet": ("efficientnetb0", {}),
    "efficientnetv2": ("efficientnetv2b0", {}),
    "inceptionresnetv2": ("inceptionresnetv2", {}),
    "inceptionv3": ("inceptionv3", {}),
    "mobilenet": ("mobilenet", {"alpha": 0.25}),
    "mobilenetv2": ("mobilenetv2", {"alpha": 0.35}),
    "mobilenetv3": ("mobilenetv3small", {"alpha": 0.75}),
    "nasnet": ("nasnetmobile", {}),
    "regnet": ("regnetx002", {}),
    "resnet": ("resnet50", {}),
    "resnetrs": ("resnetrs50", {}),
    "resnetv2": ("resnet50v2", {}),
    "vgg": ("vgg16", {}),
    "xception": ("xception", {}),
}


def test_one_model_of_every_family():
    """Every family of Keras Applications models has its model here (a new family is named)."""
    specs = [kjax_core.get_spec(name) for name in kjax_core.list_models()]
    families = {spec.family for spec in specs
                if spec.keras_constructor.startswith(("keras.", "tf_keras."))}
    assert families == set(FAMILY_MODELS), sorted(families ^ set(FAMILY_MODELS))
    for family, (name, _) in FAMILY_MODELS.items():
        assert kjax_core.get_spec(name).family == family


@pytest.fixture(scope="module")
def mobilenetv2_reference():
    """One randomised MobileNetV2 (alpha 0.35) and its translation, for the tests that are not
    about a family: they leave it as they found it."""
    return _reference("mobilenetv2", (37, 35), alpha=0.35)


def _reference(name, size, **options):
    spec = kjax_core.get_spec(name)
    translation, keras_model = reference_model(name, input_shape=(*size, 3),
                                               classifier_activation=None, **options)
    images = apply_mode(spec.preprocessing, sample_images((4, *size, 3), 5))
    labels = np.array([3, 999, 0, 517])
    return translation, keras_model, images, labels


# In the default tier, two families that between them take Keras 3's and tf_keras' layer paths:
# Keras 3's BatchNorm, depthwise convolutions, hard swish, squeeze-excite and in-graph
# preprocessing (MobileNetV3), tf_keras' fused-BatchNorm statistics and grouped convolutions
# (RegNet). Every family runs in the slow tier (nox -s full); EfficientNet (swish, drop connect,
# 73 s) and MobileNet (37 s) left the default tier for CI's time budget.
DEFAULT_TIER = {"mobilenetv3", "regnet"}


# Families whose random model's float32 gradients are decided by a few ReLU sign flips: one
# draw's float32 error, kjax's or Keras', is lumpy, and its ratio to Keras' own spreads widely.
# InceptionResNetV2 in inference, kjax float32 / Keras float32, both against Keras float64
# (measured): 2.6x at 79x77, 0.87x at 83x81, 0.20x at 91x75, 1.66x at 107x99; at 79x77 Keras on
# JAX's own float32 is 1.19x Keras on TensorFlow's. For these the float32 bar is judged on the
# median ratio over the sizes listed here besides the first; float64 at every size.
FLOAT32_DRAWS = {"inceptionresnetv2": [(83, 81), (107, 99)]}


def _judged(report, float32_by_median):
    problems = [p for p in report.problems
                if not (float32_by_median and p.startswith("float32 gradients"))]
    assert not problems, f"{report.summary()}: {'; '.join(problems)}"


@pytest.mark.parametrize("family", [
    pytest.param(family, marks=() if family in DEFAULT_TIER else pytest.mark.slow)
    for family in sorted(FAMILY_MODELS)])
def test_gradients_equal_keras(family):
    name, options = FAMILY_MODELS[family]
    low = kjax_core.get_spec(name).min_input_size | 1
    translation, keras_model, images, labels = _reference(name, (low + 4, low + 2), **options)
    by_median = name in FLOAT32_DRAWS
    ratios = []
    for train in (False, True):
        report = compare_gradients(translation, keras_model, images, labels, train=train)
        print(report.summary())
        _judged(report, by_median)
        ratios.append(report.error32 / report.keras_error32)
        assert report.leaves == len(kjax_core.parity.gradients._flat(translation.variables["params"]))
        if train and translation.variables.get("batch_stats"):
            assert report.statistics_error is not None
    if by_median:
        for size in FLOAT32_DRAWS[name]:
            translation, keras_model, images, labels = _reference(name, size, **options)
            report = compare_gradients(translation, keras_model, images, labels, train=False)
            print(report.summary())
            _judged(report, by_median)
            ratios.append(report.error32 / report.keras_error32)
        assert np.median(ratios) <= 2.0, ratios


def test_a_wrong_gradient_fails(mobilenetv2_reference):
    """The comparison can fail: one BatchNorm scale off by one part in a million on kjax's side
    (a forward pass would call it a rounding) puts the float64 gradients far beyond 1e-9."""
    import dataclasses

    import jax

    translation, keras_model, images, labels = mobilenetv2_reference
    params = jax.tree.map(np.array, translation.variables["params"])
    params["bn_Conv1"]["scale"] *= 1 + 1e-6
    broken = dataclasses.replace(translation, variables={**translation.variables, "params": params})
    report = compare_gradients(broken, keras_model, images, labels, train=False)
    print(report.summary())
    assert not report.ok and report.error64 > 1e-8


def test_one_optimiser_step_equals_keras(mobilenetv2_reference):
    """SGD with momentum and Adam (:func:`kjax_core.training.keras_adam`), one step from the same
    weights with the same gradients, in float64: the new weights equal Keras' optimisers' (the
    hyperparameters are exact in float32, as Keras on TensorFlow casts Python floats through it)."""
    import jax
    import keras
    import optax

    from kjax_core.training import keras_adam

    translation, keras_model, images, labels = mobilenetv2_reference
    twin = keras_float64(translation, keras_model)
    _, grads = keras_gradients(twin, np.asarray(images, np.float64), labels, train=False)
    start = float64_variables(translation.variables)["params"]
    lr, b1, b2, eps = 2.0 ** -7, 0.875, 1 - 2.0 ** -9, 2.0 ** -24
    optimisers = {
        "sgd": (keras.optimizers.SGD(lr, momentum=0.875), optax.sgd(lr, momentum=0.875)),
        "adam": (keras.optimizers.Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps),
                 keras_adam(lr, b1, b2, eps, dtype=np.float64)),
    }
    with jax.enable_x64(True):
        _, ours, _ = kjax_gradients(float64_module(translation.module),
                                    float64_variables(translation.variables),
                                    np.asarray(images, np.float64), labels, train=False)
    for label, (keras_optimiser, tx) in optimisers.items():
        twin = keras_float64(translation, keras_model)  # the weights again
        weights = twin.trainable_weights
        keras_optimiser.apply_gradients([(keras.ops.convert_to_tensor(grads[id(w)]), w)
                                         for w in weights])
        expected = in_flax_layout(translation, twin, {})["params"]
        with jax.enable_x64(True):
            updates, _ = tx.update(ours, tx.init(start), start)
            stepped = optax.apply_updates(start, updates)
        flat_expected = jax.tree.leaves(expected)
        flat_ours = jax.tree.leaves(stepped)
        moved = max(float(np.max(np.abs(e - s))) for e, s in zip(flat_expected, jax.tree.leaves(start)))
        diff = max(float(np.max(np.abs(np.asarray(o) - e))) for o, e in zip(flat_ours, flat_expected))
        print(label, "largest move", moved, "largest difference", diff)
        assert moved > 1e-4 and diff <= 1e-9 * moved, (label, moved, diff)
