"""The fast inference path: BatchNorm folded, XLA options chosen for the device, optional bfloat16
compute and data parallelism, behind one callable (:func:`predictor`).

Measured on a 2-core Xeon (Sapphire Rapids), jax 0.10.2, float32 (see benchmarks/README.md): most of
a step is convolution. JAX's XLA:CPU runs every convolution through YNNPACK by default; on this
machine its Eigen convolutions (with 1x1 convolutions rewritten as matrix products, as TensorFlow's
XLA does) are faster, and folding BatchNorm then lets XLA merge the remaining bias, residual addition
and ReLU into one pass. Together they take ResNet50 from Keras-on-JAX speed to Keras-on-TensorFlow
speed. Both are per-compilation choices, not process-wide flags: nothing else in the process changes.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

# XLA:CPU: YNNPACK only for dot products, Eigen (with 1x1 convolutions as dots) for convolutions.
CPU_XLA_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _options_accepted(platform: str, items: tuple) -> bool:
    """Does this jaxlib's compiler for ``platform`` know these options? (They are experimental.)"""
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda a: a + 1).lower(jnp.zeros(1)).compile(compiler_options=dict(items))
        return True
    except Exception:
        return False


def xla_options_for(platform: str, xla_options: Any = "auto") -> dict:
    """The compiler options :func:`predictor` uses: ``"auto"`` is :data:`CPU_XLA_OPTIONS` on CPU
    (when this jaxlib knows them) and none elsewhere; None is none; a dict is used as given."""
    if xla_options is None:
        return {}
    if xla_options != "auto":
        return dict(xla_options)
    if platform == "cpu" and _options_accepted("cpu", tuple(sorted(CPU_XLA_OPTIONS.items()))):
        return dict(CPU_XLA_OPTIONS)
    return {}


def cast_params(variables: dict, dtype: Any) -> dict:
    """``variables`` with its floating ``params`` in ``dtype``; statistics stay as they are."""
    import jax
    import jax.numpy as jnp

    def cast(leaf):
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    out = dict(variables)
    if "params" in out:
        out["params"] = jax.tree_util.tree_map(cast, out["params"])
    return out


class Predictor:
    """``predictor(images) -> outputs``, compiled once per input shape; see :func:`predictor`.

    Attributes: ``module`` and ``variables`` (folded and cast as asked: ``module.apply(variables,
    images)`` is what runs), ``folds`` (the folded BatchNorms), ``devices``, ``xla_options``.
    """

    def __init__(
        self,
        module: Any,
        variables: Any,
        *,
        fold_bn: bool = True,
        dtype: Any = None,
        devices: Any = None,
        xla_options: Any = "auto",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        import jax
        import jax.numpy as jnp

        from .fold import DEFAULT_INPUT_SHAPE, FoldedModel, fold_batch_norm
        from .sharding import data_parallel, local_devices

        self.folds: tuple = ()
        if fold_bn:
            module, variables = fold_batch_norm(
                module, variables, input_shape=input_shape or DEFAULT_INPUT_SHAPE
            )
            self.folds = module.folds
        if dtype is not None:
            if isinstance(module, FoldedModel):
                module = FoldedModel(module.module.clone(dtype=dtype), module.folds)
            else:
                module = module.clone(dtype=dtype)
            variables = cast_params(variables, dtype)
        self.module = module
        self.devices = local_devices(devices) if devices is not None else [jax.devices()[0]]
        self.xla_options = xla_options_for(self.devices[0].platform, xla_options)
        if len(self.devices) > 1:
            self._run = data_parallel(module.apply, variables, self.devices, self.xla_options or None)
            self.variables = self._run.variables
        else:
            self.variables = jax.device_put(variables, self.devices[0])
            compiled = jax.jit(module.apply, compiler_options=self.xla_options or None)
            self._run = lambda images: compiled(self.variables, images)
        self._float = jnp.float32

    def __call__(self, images: Any) -> Any:
        import jax.numpy as jnp

        return self._run(jnp.asarray(images, self._float))


def predictor(
    module: Any,
    variables: Any,
    *,
    fold_bn: bool = True,
    dtype: Any = None,
    devices: Any = None,
    xla_options: Any = "auto",
    input_shape: Sequence[int] | None = None,
) -> Predictor:
    """The fastest way kjax knows to run ``module`` for inference: ``predict(images)``.

    ``predict(images)`` returns what ``module.apply(variables, images)`` returns, to float32
    rounding (with the default float32 compute), compiling once per input shape.

    :param fold_bn: fold each BatchNorm that follows a convolution into it
        (:func:`kjax_core.fold.fold_batch_norm`); exact to float32 rounding, inference only.
    :param dtype: compute dtype, e.g. ``jnp.bfloat16`` (parameters are cast to it; BatchNorm
        statistics that are not folded stay float32). See benchmarks/README.md for its accuracy
        cost; on CPUs without fast bfloat16 convolutions it is slower than float32.
    :param devices: None for the default device; ``"all"`` or a list of devices to split each
        batch across them, variables replicated (:mod:`kjax_core.sharding`); any batch size.
    :param xla_options: XLA compiler options for this model's compilation only: ``"auto"`` (on
        CPU, Eigen convolutions instead of YNNPACK's: :data:`CPU_XLA_OPTIONS`), None, or a dict.
    :param input_shape: (H, W, C) used to trace the model for folding; default 224x224x3.
    """
    return Predictor(
        module, variables, fold_bn=fold_bn, dtype=dtype, devices=devices,
        xla_options=xla_options, input_shape=input_shape,
    )
