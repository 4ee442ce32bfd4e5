"""Gradients against Keras: the gradient of a cross-entropy loss with respect to every trainable
parameter, kjax (``jax.grad`` of ``module.apply``) against Keras (``tf.GradientTape`` over the
model), judged as :func:`kjax_core.parity.compare` judges outputs: kjax in float64 against Keras'
float64 twin, kjax's float32 no worse than twice Keras' own float32 error. In training mode the
BatchNorm statistics each side moved in that pass are compared too, every layer of them.

Keras' gradients are put into Flax's layout by the translation itself: each trainable Keras weight
is given its gradient's value and the model is translated again (the layer rules only move,
reshape and transpose weights, so they carry gradients exactly as they carry weights).

Dropout is random on both sides and is switched off for the comparison: Keras' Dropout layers run
at rate 0, kjax's module with ``training="batch_norm"``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..conversion.keras_layers import iter_keras_layers
from .judge import FLOAT32_FACTOR, FLOAT64_TOLERANCE, relative_error
from .reference import float64_module, float64_variables, keras_float64


@dataclass
class GradientReport:
    model: str
    train: bool
    leaves: int
    loss64: float
    error64: float  #: relative L2 error of all gradients together, kjax float64 vs Keras float64
    #: the parameter whose gradient is furthest off (relative), of those whose gradient's norm
    #: is at least 1e-3 of the largest one's
    worst_leaf64: tuple[str, float]
    error32: float
    keras_error32: float
    statistics_error: float | None = None  #: training mode: the moving statistics' step
    statistics_reference: str = "float64"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        mode = "train" if self.train else "inference"
        stats = ("" if self.statistics_error is None else
                 f", statistics step {self.statistics_error:.2e} ({self.statistics_reference})")
        return (f"{self.model} {mode}: {self.leaves} gradients, f64 {self.error64:.2e} (worst "
                f"{self.worst_leaf64[0]} {self.worst_leaf64[1]:.2e}), f32 {self.error32:.2e} "
                f"(Keras f32 {self.keras_error32:.2e}){stats}")


@contextlib.contextmanager
def _dropout_off(*models: Any) -> Iterator[None]:
    saved = [(layer, layer.rate) for model in models for layer in iter_keras_layers(model)
             if "Dropout" in type(layer).__name__]
    try:
        for layer, _ in saved:
            layer.rate = 0.0
        yield
    finally:
        for layer, rate in saved:
            layer.rate = rate


def _is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith("tf_keras")


def keras_gradients(model: Any, images: np.ndarray, labels: np.ndarray, train: bool):
    """``(loss, {id(weight): gradient})`` of the mean sparse softmax cross-entropy of ``model``'s
    logits, one pass with ``training=train`` (which moves the BatchNorm statistics in training)."""
    import tensorflow as tf

    dtype = model.trainable_weights[0].dtype
    x = tf.constant(np.asarray(images, np.dtype(str(getattr(dtype, "name", dtype)))))
    with tf.GradientTape() as tape:
        logits = model(x, training=train)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.constant(labels), logits=logits))
    weights = model.trainable_weights
    grads = tape.gradient(loss, weights)
    return float(loss), {id(w): (np.zeros(w.shape) if g is None else np.asarray(g))
                         for w, g in zip(weights, grads)}


def in_flax_layout(translation: Any, model: Any, values: dict[int, np.ndarray]) -> dict:
    """The translation of ``model`` (the translation's Keras model or its twin) with each weight
    whose id is in ``values`` replaced by that value: Keras gradients in Flax's ``params``."""
    saved = []
    try:
        for layer in iter_keras_layers(model):
            if not layer.weights:
                continue
            current = layer.get_weights()
            saved.append((layer, current))
            layer.set_weights([np.asarray(values.get(id(w), c), c.dtype)
                               for w, c in zip(layer.weights, current)])
        variables = _translate64(translation, model)
    finally:
        for layer, current in saved:
            layer.set_weights(current)
    return variables


# (id of the Flax module, id of the Keras model) -> (float64 target tree, Keras layer -> Flax
# path): traced and matched once per pair, then every set of values is only converted and placed
# (a deep net's trace costs seconds). Two entries: the twin and the Keras model of the latest
# translation (its training and inference comparisons share them).
_LAYOUTS: dict[tuple[int, int], tuple[Any, Any, Any, Any]] = {}


def _translate64(translation: Any, model: Any) -> dict:
    """``model`` translated into float64 leaves: the module's own float32 ones would round
    gradients and the small steps of statistics."""
    import jax

    from ..conversion.assembly import assemble
    from ..conversion.flax_side import flax_modules, trace_flax
    from ..conversion.keras_layers import convert_keras_layers
    from ..conversion.translate import match_layers
    from ..plugin_system.registry import registry

    rules = registry().rules
    key = (id(translation.module), id(model))
    with jax.enable_x64(True):
        layers = convert_keras_layers(model, rules)
        if _LAYOUTS.get(key, (None,))[0] is not translation.module:
            target, order = trace_flax(float64_module(translation.module), translation.input_shape)
            assignment = match_layers(translation.spec, layers, flax_modules(target, order))
            while len(_LAYOUTS) >= 2:
                _LAYOUTS.pop(next(iter(_LAYOUTS)))
            _LAYOUTS[key] = (translation.module, model, target, assignment)
        _, _, target, assignment = _LAYOUTS[key]
        return assemble(translation.spec.name, layers, target, assignment)


def _flat(tree: Any) -> dict[str, np.ndarray]:
    from flax import traverse_util

    return {"/".join(k): np.asarray(v, np.float64)
            for k, v in traverse_util.flatten_dict(tree).items()}


def _global_error(actual: dict, expected: dict) -> float:
    diff = sum(float(np.sum((actual[k] - expected[k]) ** 2)) for k in expected)
    norm = sum(float(np.sum(expected[k] ** 2)) for k in expected)
    return float(np.sqrt(diff / norm)) if norm > 0 else float(np.sqrt(diff))


def kjax_gradients(module: Any, variables: dict, images: np.ndarray, labels: np.ndarray,
                   train: bool):
    """``(loss, gradients of params, updated batch_stats or None)`` of kjax's model, compiled."""
    import jax
    import optax

    def loss_fn(params: Any, rest: dict, x: Any, y: Any):
        if train:
            logits, updated = module.apply({"params": params, **rest}, x, train=True,
                                           mutable=["batch_stats"])
        else:
            logits, updated = module.apply({"params": params, **rest}, x), {}
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updated.get("batch_stats")

    rest = {k: v for k, v in variables.items() if k != "params"}
    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], rest, images, labels)
    return float(loss), jax.tree.map(np.asarray, grads), (
        None if stats is None else jax.tree.map(np.asarray, stats))


def compare_gradients(
    translation: Any, keras_model: Any, images: np.ndarray, labels: np.ndarray, *, train: bool,
    tolerance: float = FLOAT64_TOLERANCE, float32_factor: float = FLOAT32_FACTOR,
) -> GradientReport:
    """kjax's gradients against Keras' on ``images`` (already preprocessed) and integer
    ``labels``, in training mode (batch statistics; their update compared) or inference mode.
    ``translation`` must end in logits (``classifier_activation=None``). Keras' models are left
    with the weights and statistics they had."""
    import jax

    twin = keras_float64(translation, keras_model)
    module = translation.module
    if hasattr(module, "training"):
        module = module.clone(training="batch_norm")  # no dropout: it is random on both sides
    x32 = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    with _dropout_off(twin, keras_model):
        before = _flat(translation.variables.get("batch_stats", {})) if train else {}
        loss64_keras, grads64 = keras_gradients(twin, x32.astype(np.float64), labels, train)
        # params: the gradients; batch_stats: the statistics as the pass left them
        translated = in_flax_layout(translation, twin, grads64)
        expected, keras_stats = _flat(translated["params"]), _flat(translated.get("batch_stats", {}))
        saved = [(layer, layer.get_weights()) for layer in iter_keras_layers(keras_model)
                 if layer.weights]
        try:
            _, grads32 = keras_gradients(keras_model, x32, labels, train)
            translated = in_flax_layout(translation, keras_model, grads32)
            keras32 = _flat(translated["params"])
            keras_stats32 = _flat(translated.get("batch_stats", {}))
        finally:
            for layer, weights in saved:
                layer.set_weights(weights)
    with jax.enable_x64(True):
        loss64, ours, stats = kjax_gradients(float64_module(module),
                                             float64_variables(translation.variables),
                                             x32.astype(np.float64), labels, train)
    ours = _flat(ours)
    _, ours32, _ = kjax_gradients(module, translation.variables, x32, labels, train)
    ours32 = _flat(ours32)
    problems = []
    if set(ours) != set(expected):
        problems.append(f"kjax has gradients for {sorted(set(ours) ^ set(expected))[:4]} where "
                        f"Keras has none, or the reverse")
        common = set(ours) & set(expected)
        ours = {k: ours[k] for k in common}
        expected = {k: expected[k] for k in common}
    error64 = _global_error(ours, expected)
    # Each parameter judged on its own too, where its gradient is not negligible (a conv bias
    # before a training-mode BatchNorm has none: the batch mean takes it away).
    largest = max(float(np.linalg.norm(g)) for g in expected.values())
    leaf_errors = {k: relative_error(ours[k], expected[k]) for k in expected
                   if np.linalg.norm(expected[k]) >= 1e-3 * largest}
    worst = max(leaf_errors.items(), key=lambda kv: kv[1])
    error32 = _global_error({k: ours32[k] for k in expected}, expected)
    keras_error32 = _global_error({k: keras32[k] for k in expected}, expected)
    if error64 > tolerance:
        problems.append(f"float64 gradients {error64:.2e} from Keras' (limit {tolerance:.0e})")
    if worst[1] > tolerance:
        problems.append(f"the float64 gradient of {worst[0]} is {worst[1]:.2e} from Keras' "
                        f"(limit {tolerance:.0e})")
    if abs(loss64 - loss64_keras) > tolerance * max(1.0, abs(loss64_keras)):
        problems.append(f"float64 loss {loss64!r} vs Keras' {loss64_keras!r}")
    if error32 > float32_factor * keras_error32:
        problems.append(f"float32 gradients {error32:.2e} from Keras' float64, Keras' own "
                        f"float32 {keras_error32:.2e} (limit x{float32_factor:g})")
    statistics_error, reference = None, "float64"
    if train and before:
        ours_stats = _flat(stats)

        def step_error(keys: list[str], target: dict) -> float:
            return _global_error({k: ours_stats[k] - before[k] for k in keys},
                                 {k: target[k] - before[k] for k in keys})

        groups = [(list(before), keras_stats, tolerance, "float64")]
        if _is_tf_keras(keras_model):
            # tf_keras' float64 BatchNorm moves the variance toward the biased batch variance, its
            # float32 fused kernel (what users run, and kjax follows) toward the unbiased one,
            # n / (n - 1) times it: the means are judged in float64, the variances against the
            # float32 kernel within 1e-4 (its rounding over a whole model measured 2.2e-5 on
            # RegNetX002; the biased/unbiased confusion it tells apart is 1/n, above 5e-4 here).
            # The means within 1e-7: tf_keras' float64 layer takes its decay 1 - momentum through
            # a float32 tensor (0.1 -> 0.10000000149), 1.5e-8 of every step, measured.
            means = [k for k in before if k.endswith("mean")]
            groups = [(means, keras_stats, 1e-7, "float64"),
                      ([k for k in before if k not in means], keras_stats32, 1e-4, "Keras float32")]
            reference = "means float64, variances Keras float32"
        errors = []
        for keys, target, limit, against in groups:
            if not any(np.any(target[k] != before[k]) for k in keys):
                problems.append(f"Keras' training pass moved no BatchNorm statistics ({against})")
                continue
            error = step_error(keys, target)
            errors.append(error)
            if error > limit:
                problems.append(f"the moving statistics stepped {error:.2e} off Keras' "
                                f"({against}, limit {limit:.0e})")
        statistics_error = max(errors, default=None)
    return GradientReport(
        model=translation.spec.name, train=train, leaves=len(expected), loss64=loss64,
        error64=error64, worst_leaf64=worst, error32=error32, keras_error32=keras_error32,
        statistics_error=statistics_error, statistics_reference=reference, problems=problems)
