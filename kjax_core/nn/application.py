"""The bases of a family's Flax modules and Keras' classifier heads.

Heads (each a function of the feature map and the head options, and a one-line method of
:class:`Application` that passes its fields), every submodule named as the Keras layer it twins:

- :func:`classifier_head` (``top``): global average pooling, Dense ``predictions``; most families.
- :func:`conv_classifier_head` (``conv_top``): MobileNet v1 and v3, the classifier a 1x1 Conv2D
  on the pooled map (``conv_preds`` / ``logits``), v3 with a 1x1 Conv2D ``conv_2`` before it.
- :func:`flatten_classifier_head` (``flatten_top``): VGG, Flatten then Dense ``fc1``, ``fc2``,
  ``predictions``.
- :func:`layer_norm_classifier_head` (``layer_norm_top``): ConvNeXt, pooling, LayerNormalization,
  Dense.

Without top, all pool as Keras' ``pooling`` says ('avg', 'max' or None); ConvNeXt's then
normalises as well.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..images import check_images
from .convolution import conv
from .features import feature_pyramid
from .layers import TRAINING_MODES, Dense, Dropout, activation, enclosing_application
from .normalization import LayerNorm

Dtype = Any
Activation = str | None | Callable[[jax.Array], jax.Array]


def _activation(fn: Activation) -> Callable[[jax.Array], jax.Array]:
    """A Keras activation name (see :data:`kjax_core.nn.ACTIVATIONS`) or a function."""
    return fn if callable(fn) else activation(fn)


def global_pool(x: jax.Array, pooling: str | None) -> jax.Array:
    """Keras' ``pooling`` option without top: GlobalAveragePooling2D ('avg'),
    GlobalMaxPooling2D ('max') or, for anything else (None), the feature map itself, as Keras."""
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    return x


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
            x = Dropout(dropout_rate, deterministic=not train, name="top_dropout")(x)
        x = Dense(classes, dtype=dtype, param_dtype=param_dtype, name=name)(x)
        return activation(classifier_activation)(x)
    return global_pool(x, pooling)


def conv_classifier_head(
    x: jax.Array,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    logits_name: str = "conv_preds",
    hidden_features: int | None = None,
    hidden_name: str = "conv_2",
    hidden_activation: Activation = None,
    dropout_rate: float = 0.0,
    train: bool = False,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """MobileNet's top, with ``include_top``: GlobalAveragePooling2D(keepdims=True); with
    ``hidden_features`` (MobileNetV3's ``last_point_ch``) a 1x1 Conv2D with bias named
    ``hidden_name`` and ``hidden_activation`` (v3: hard_swish, or relu when minimalistic);
    Dropout(``dropout_rate``) where > 0 (v1 always has one, v3 unless ``dropout_rate=0``; active
    with ``train``); the 1x1 Conv2D(classes) named ``logits_name`` (v1 ``conv_preds``, v3
    ``logits``); Reshape/Flatten to (N, classes); the classifier activation. Without top, as
    :func:`global_pool`."""
    if not include_top:
        return global_pool(x, pooling)
    kw = dict(padding="same", dtype=dtype, param_dtype=param_dtype)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    if hidden_features is not None:
        x = conv(x, hidden_features, 1, name=hidden_name, **kw)
        x = _activation(hidden_activation)(x)
    if dropout_rate > 0:
        x = Dropout(dropout_rate, deterministic=not train, name="dropout")(x)
    x = conv(x, classes, 1, name=logits_name, **kw)
    x = x.reshape(x.shape[0], classes)
    return activation(classifier_activation)(x)


def flatten_classifier_head(
    x: jax.Array,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    hidden: Sequence[int] = (4096, 4096),
    hidden_names: Sequence[str] = ("fc1", "fc2"),
    hidden_activation: Activation = "relu",
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    name: str = "predictions",
) -> jax.Array:
    """VGG's top, with ``include_top``: Flatten (row-major over height, width, channels, as Keras'
    Flatten of an NHWC map, so ``fc1``'s kernel rows are in Keras' order), a Dense with
    ``hidden_activation`` per entry of ``hidden`` (named ``hidden_names``: VGG's ``fc1``, ``fc2``
    of 4096), Dense ``predictions`` with the classifier activation. Fixes the input size, as in
    Keras. Without top, as :func:`global_pool`."""
    if not include_top:
        return global_pool(x, pooling)
    if len(hidden) != len(hidden_names):
        raise ValueError(f"{len(hidden)} hidden layers but {len(hidden_names)} names")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = x.reshape(x.shape[0], -1)
    for features, layer_name in zip(hidden, hidden_names):
        x = _activation(hidden_activation)(Dense(features, name=layer_name, **kw)(x))
    x = Dense(classes, name=name, **kw)(x)
    return activation(classifier_activation)(x)


def layer_norm_classifier_head(
    x: jax.Array,
    *,
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    prefix: str,
    epsilon: float = 1e-6,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """ConvNeXt's top. With ``include_top``: GlobalAveragePooling2D, LayerNormalization(epsilon)
    named ``<prefix>_head_layernorm``, Dense named ``<prefix>_head_dense`` with the classifier
    activation (``prefix`` is Keras' model name, e.g. ``convnext_tiny``). Without top Keras still
    normalises: :func:`global_pool` ('avg', 'max' or None), then a LayerNormalization(epsilon)
    over the last axis (per position when not pooled). Keras names that one automatically
    (``layer_normalization...``, a per-process counter); here it is ``<prefix>_head_layernorm``
    in both cases, which the order fallback of name matching pairs with the one automatically
    named LayerNormalization of a ConvNeXt."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = jnp.mean(x, axis=(1, 2)) if include_top else global_pool(x, pooling)
    x = LayerNorm(epsilon=epsilon, name=f"{prefix}_head_layernorm", **kw)(x)
    if not include_top:
        return x
    x = Dense(classes, name=f"{prefix}_head_dense", **kw)(x)
    return activation(classifier_activation)(x)


def as_compute_dtype(x: Any, dtype: Dtype, param_dtype: Dtype) -> jax.Array:
    """A model's input in its compute dtype: ``dtype``; without one, as any Flax layer would
    compute, the floating type of ``x`` (float32 for integer images) promoted with ``param_dtype``."""
    if dtype is not None:
        return jnp.asarray(x, dtype)
    x = jnp.asarray(x)
    floating = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return x.astype(jnp.promote_types(floating, param_dtype))


class Block(nn.Module, kw_only=True):
    """Base of a family's modules: the compute and parameter dtypes (keyword-only, so a subclass's
    own fields may come without defaults and stay positional); ``**self.dtypes`` passes them on."""

    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @property
    def dtypes(self) -> dict[str, Dtype]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}

    def tap(self, x: jax.Array) -> jax.Array:
        """Offer ``x`` as the feature map of its resolution (see :mod:`kjax_core.nn.features`)
        and return it unchanged: kept by the model being applied when it was built with
        ``features_only=True``, ignored otherwise. A family taps the point after which Keras'
        model leaves that resolution (a later tap at the same resolution replaces it)."""
        root = enclosing_application(self)
        if root is not None and root.features_only:
            root._feature_taps.append(x)
        return x


class Application(Block, kw_only=True):
    """Base of a family's model: the options every Keras application has, with Keras' names and
    defaults, and the dtypes of :class:`Block`. A family subclasses it, adds its own fields,
    starts ``__call__`` with ``self.inputs(x)`` and ends it with ``self.top(x)``."""

    include_top: bool = True
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | None = "softmax"
    # Return the feature pyramid {"P1": ..., "P5": ...} instead of the top (include_top=False,
    # pooling=None): see kjax_core.nn.features.
    features_only: bool = False
    # What train=True trains (kjax_core.nn.TRAINING_MODES): "all"; "batch_norm" (no dropout);
    # "dropout" (BatchNorm in inference mode: Keras' frozen backbone, base.trainable = False).
    training: str = "all"
    # Each run of identical blocks (kjax_core.nn.repeat) as one scanned module over stacked
    # variables: compiled once instead of once per block. For inference; the predictor builds it
    # from the translated variables (kjax_core.inference.scan).
    scan_blocks: bool = False
    is_kjax_application: ClassVar[bool] = True

    def inputs(self, x: jax.Array) -> jax.Array:
        """The images in the compute dtype: ``dtype``; without one, as any Flax layer would
        compute, the floating type of the images (float32 for integer images) promoted with
        ``param_dtype`` (float32 for float32 images and parameters). Images of another shape
        than a batch (N, H, W, C) fail with one line saying what to change: a single image, or
        a channels-first batch of RGB images (any number of channels last is let through)."""
        shape = jnp.shape(x)
        if len(shape) != 4 or (shape[1] == 3 and shape[-1] != 3):
            check_images(x, (None, None, 3), type(self).__name__)
        if self.training not in TRAINING_MODES:
            raise ValueError(f"training must be one of {', '.join(TRAINING_MODES)}; got "
                             f"{self.training!r}")
        if self.features_only:
            if self.include_top or self.pooling is not None:
                raise ValueError("features_only=True returns the feature maps: it needs "
                                 "include_top=False and pooling=None")
            # The maps tapped during this call (Block.tap); a bound module lives for one call.
            object.__setattr__(self, "_feature_taps", [])
            object.__setattr__(self, "_image_size", shape[1:3])
        return as_compute_dtype(x, self.dtype, self.param_dtype)

    def features(self, x: jax.Array) -> dict[str, jax.Array]:
        """The feature pyramid, ``x`` (the head's output without top or pooling) the last map."""
        self.tap(x)
        return feature_pyramid(self._image_size, self._feature_taps)

    def top(self, x: jax.Array, *, dropout_rate: float = 0.0, train: bool = False) -> jax.Array:
        """Keras' head on the last feature map (see :func:`classifier_head`)."""
        if self.features_only:
            return self.features(x)
        return classifier_head(x, include_top=self.include_top, pooling=self.pooling,
                               classes=self.classes, classifier_activation=self.classifier_activation,
                               dropout_rate=dropout_rate, train=train, **self.dtypes)

    @property
    def head_options(self) -> dict[str, Any]:
        """The head options and dtypes, as every head function takes them."""
        return dict(include_top=self.include_top, pooling=self.pooling, classes=self.classes,
                    classifier_activation=self.classifier_activation, **self.dtypes)

    def conv_top(self, x: jax.Array, *, logits_name: str = "conv_preds",
                 hidden_features: int | None = None, hidden_name: str = "conv_2",
                 hidden_activation: Activation = None, dropout_rate: float = 0.0,
                 train: bool = False) -> jax.Array:
        """MobileNet's head (see :func:`conv_classifier_head`): v1
        ``self.conv_top(x, dropout_rate=self.dropout, train=train)``; v3 ``self.conv_top(x,
        logits_name="logits", hidden_features=last_point_ch, hidden_activation=knn.hard_swish,
        dropout_rate=self.dropout_rate, train=train)``."""
        if self.features_only:
            return self.features(x)
        return conv_classifier_head(
            x, logits_name=logits_name, hidden_features=hidden_features, hidden_name=hidden_name,
            hidden_activation=hidden_activation, dropout_rate=dropout_rate, train=train,
            **self.head_options)

    def flatten_top(self, x: jax.Array, *, hidden: Sequence[int] = (4096, 4096),
                    hidden_names: Sequence[str] = ("fc1", "fc2")) -> jax.Array:
        """VGG's head (see :func:`flatten_classifier_head`): ``self.flatten_top(x)``."""
        if self.features_only:
            return self.features(x)
        return flatten_classifier_head(x, hidden=hidden, hidden_names=hidden_names,
                                       **self.head_options)

    def layer_norm_top(self, x: jax.Array, *, prefix: str, epsilon: float = 1e-6) -> jax.Array:
        """ConvNeXt's head (see :func:`layer_norm_classifier_head`):
        ``self.layer_norm_top(x, prefix=self.name_prefix)``. Its feature maps end with the head's
        LayerNormalization, applied per position as Keras does without top and pooling."""
        x = layer_norm_classifier_head(x, prefix=prefix, epsilon=epsilon, **self.head_options)
        return self.features(x) if self.features_only else x

