"""The bases of a family's Flax modules and Keras' classifier head."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn

from .layers import Dense, activation

Dtype = Any


def classifier_head(
    x: jax.Array,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    name: str = "predictions",
    dropout_rate: float = 0.0,
    train: bool = False,
) -> jax.Array:
    """The top shared by the Keras applications: with ``include_top``, global average pooling,
    dropout ``top_dropout`` where the family has one (``dropout_rate`` > 0; active with ``train``)
    and a Dense named ``predictions``; without, optional global 'avg' or 'max' pooling."""
    if include_top:
        x = jnp.mean(x, axis=(1, 2))
        if dropout_rate > 0:
            x = nn.Dropout(dropout_rate, deterministic=not train, name="top_dropout")(x)
        x = Dense(classes, dtype=dtype, param_dtype=param_dtype, name=name)(x)
        return activation(classifier_activation)(x)
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    return x


class Block(nn.Module, kw_only=True):
    """Base of a family's modules: the compute and parameter dtypes (keyword-only, so a subclass's
    own fields may come without defaults and stay positional); ``**self.dtypes`` passes them on."""

    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @property
    def dtypes(self) -> dict[str, Dtype]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


class Application(Block, kw_only=True):
    """Base of a family's model: the options every Keras application has, with Keras' names and
    defaults, and the dtypes of :class:`Block`. A family subclasses it, adds its own fields,
    starts ``__call__`` with ``self.inputs(x)`` and ends it with ``self.top(x)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | None = "softmax"

    def inputs(self, x: jax.Array) -> jax.Array:
        """The images in the compute dtype: ``dtype``; without one, as any Flax layer would
        compute, the floating type of the images (float32 for integer images) promoted with
        ``param_dtype`` (float32 for float32 images and parameters)."""
        if self.dtype is not None:
            return jnp.asarray(x, self.dtype)
        x = jnp.asarray(x)
        floating = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        return x.astype(jnp.promote_types(floating, self.param_dtype))

    def top(self, x: jax.Array, *, dropout_rate: float = 0.0, train: bool = False) -> jax.Array:
        """Keras' head on the last feature map (see :func:`classifier_head`)."""
        return classifier_head(x, include_top=self.include_top, pooling=self.pooling,
                               classes=self.classes, classifier_activation=self.classifier_activation,
                               dropout_rate=dropout_rate, train=train, **self.dtypes)

