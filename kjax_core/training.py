"""Fine-tuning pieces that make a Flax/optax loop compute what Keras' ``fit`` computes.

- :func:`cross_entropy`: Keras' ``SparseCategoricalCrossentropy(from_logits=True)``, the mean over
  the batch (a translated model ends in softmax unless built with ``classifier_activation=None``:
  train on logits).
- :func:`keras_adam`: optax's Adam/AdamW with Keras' epsilon. Keras adds epsilon to
  ``sqrt(v)`` before the bias correction, optax after it, so a constant optax ``eps`` equals
  Keras' only at one step; here ``eps`` follows the step, ``epsilon / sqrt(1 - beta_2**t)``,
  which is Keras' update at every step (tested against ``keras.optimizers.Adam``/``AdamW``).
- :func:`freeze`: an optax transformation that trains only the parameters whose path a predicate
  accepts (the rest get zero updates), for a frozen backbone.

Keras' frozen backbone (``base.trainable = False``: BatchNorm in inference mode, dropout still on)
is a model option, ``training="dropout"`` (see :data:`kjax_core.nn.TRAINING_MODES`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits`` (N, classes) against integer ``labels`` (N,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def keras_adam(
    learning_rate: float | Callable[[jax.Array], jax.Array] = 0.001,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
    weight_decay: float | None = None,
    *,
    dtype: Any = None,
) -> optax.GradientTransformation:
    """Keras' ``Adam`` (``weight_decay`` None) or ``AdamW`` (Keras' AdamW default is 0.004), with
    Keras' argument names and defaults, as an optax transformation.

    Keras: ``var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)``, i.e. optax's
    ``m_hat / (sqrt(v_hat) + eps)`` with ``eps = epsilon / sqrt(1 - b2^t)`` at step t (injected per
    step); AdamW first decays ``var -= var * weight_decay * lr``, as optax's ``adamw`` does.
    ``dtype``: of the hyperparameters (optax's default, float32, otherwise); Keras keeps the
    learning rate in a float32 variable and casts it to each weight's dtype.
    """
    def eps(count: jax.Array) -> jax.Array:
        return epsilon / jnp.sqrt(1 - beta_2 ** (count + 1))

    if weight_decay is None:
        return optax.inject_hyperparams(optax.adam, hyperparam_dtype=dtype)(
            learning_rate=learning_rate, b1=beta_1, b2=beta_2, eps=eps)
    return optax.inject_hyperparams(optax.adamw, hyperparam_dtype=dtype)(
        learning_rate=learning_rate, b1=beta_1, b2=beta_2, eps=eps, weight_decay=weight_decay)


def freeze(
    optimizer: optax.GradientTransformation, trainable: Callable[[tuple[str, ...]], bool]
) -> optax.GradientTransformation:
    """``optimizer`` on the parameters whose path (a tuple of names, e.g. ``("predictions",
    "kernel")``) ``trainable`` accepts; the others are frozen (zero updates, no optimizer state)."""
    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(tuple(_key(k) for k in path)) else "freeze", params)

    return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def _key(entry: Any) -> str:
    return str(getattr(entry, "key", getattr(entry, "name", entry)))
