"""The fast inference path behind one callable (:func:`predictor`): BatchNorm folded, optional
bfloat16 compute, optional data parallelism over the local devices, and optional XLA compiler
options for this model's compilation only.

Where the time goes, measured on a 2-core Xeon (Sapphire Rapids), jax 0.10.2, float32
(benchmarks/README.md): convolutions are almost all of a step. The two big costs kjax removed are
in the model itself, so a plain ``jax.jit(module.apply)`` gets them too: depthwise convolutions as
shifted sums (:mod:`kjax_core.nn.depthwise`; XLA:CPU's grouped convolution did ~1 GFLOP/s) and 1x1
convolutions as matrix products (:class:`kjax_core.nn.PointwiseConv`). Folding BatchNorm then
removes the normalisation's elementwise work and statistics (a few percent on CPU).
"""

from __future__ import annotations

from typing import Any, Sequence

# XLA:CPU options: YNNPACK only for matrix products, Eigen for the convolutions (as TensorFlow's
# XLA does). The predictor's default on CPU: on a quiet 2-core Xeon it made ResNet50 (12-15%),
# DenseNet121 (21%) and MobileNetV2 (8%) faster at batch 8 and EfficientNetB0 no slower, because
# Eigen keeps both cores busy where YNNPACK leaves one partly idle; at batch 1 it is within about
# 10% either way from run to run. On a machine whose cores other jobs take it lost up to 10%
# (benchmarks/README.md).
EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def default_xla_options(platform: str) -> dict:
    """The compiler options :func:`predictor` uses when not given any: :data:`EIGEN_CONVOLUTIONS`
    on CPU, XLA's own defaults on other platforms."""
    return dict(EIGEN_CONVOLUTIONS) if platform == "cpu" else {}


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
    images)`` is what runs), ``folds`` (the folded BatchNorms), ``devices``, ``xla_options``,
    ``compilation_cache`` (the folder of compiled programs in use, or None).
    """

    def __init__(
        self,
        module: Any,
        variables: Any,
        *,
        fold_bn: bool = True,
        dtype: Any = None,
        devices: Any = None,
        xla_options: dict | None = None,
        input_shape: Sequence[int] | None = None,
        compilation_cache: bool = True,
        scan_blocks: bool = False,
    ) -> None:
        import jax
        import jax.numpy as jnp

        from ..cache import use_compilation_cache

        from .compiler import JitWithOptions
        from .fold import DEFAULT_INPUT_SHAPE, FoldedModel, fold_batch_norm
        from ..nn.repeat import record_runs
        from .scan import scan_blocks as scan
        from .sharding import data_parallel, local_devices

        self.compilation_cache = use_compilation_cache() if compilation_cache else None
        input_shape = tuple(input_shape or DEFAULT_INPUT_SHAPE)
        self.folds: tuple = ()
        runs = None
        if fold_bn:
            with record_runs() as runs:  # folding traces the model: the runs come with it
                module, variables = fold_batch_norm(module, variables, input_shape=input_shape)
            self.folds = module.folds
        if scan_blocks:
            module, variables = scan(module, variables, input_shape, runs)
        if dtype is not None:
            if isinstance(module, FoldedModel):
                module = FoldedModel(module.module.clone(dtype=dtype), module.folds)
            else:
                module = module.clone(dtype=dtype)
            variables = cast_params(variables, dtype)
        self.module = module
        self.devices = local_devices(devices) if devices is not None else [jax.devices()[0]]
        if xla_options is None:
            xla_options = default_xla_options(self.devices[0].platform)
        if len(self.devices) > 1:
            self._run = data_parallel(module.apply, variables, self.devices, dict(xla_options))
            self.variables = self._run.variables
            self._compiled = self._run.compiled
        else:
            self.variables = jax.device_put(variables, self.devices[0])
            self._compiled = JitWithOptions(module.apply, dict(xla_options))
            self._run = lambda images: self._compiled(self.variables, images)
        self._float = jnp.float32

    @property
    def xla_options(self) -> dict:
        """The compiler options in use: those asked for, or ``{}`` once XLA refused them."""
        return dict(self._compiled.compiler_options)

    def __call__(self, images: Any) -> Any:
        import jax.numpy as jnp

        return self._run(jnp.asarray(images, self._float))


def predictor(module: Any, variables: Any, **options: Any) -> Predictor:
    """``predict(images)``: ``module`` prepared for inference and compiled once per input shape.

    ``predict(images)`` returns what ``module.apply(variables, images)`` returns, to float32
    rounding (with the default float32 compute), compiling once per input shape. Options, all
    keyword-only (an unknown one is a TypeError):

    :param fold_bn: fold each BatchNorm that follows a convolution into it
        (:func:`kjax_core.inference.fold.fold_batch_norm`); exact to float32 rounding, inference only.
    :param dtype: compute dtype, e.g. ``jnp.bfloat16`` (parameters are cast to it; BatchNorm
        statistics that are not folded stay float32). See benchmarks/README.md for its accuracy
        cost; on CPUs without fast bfloat16 convolutions it is slower than float32.
    :param devices: None for the default device; ``"all"`` or a list of devices to split each
        batch across them, variables replicated (:mod:`kjax_core.inference.sharding`); any batch size.
    :param xla_options: XLA compiler options for this model's compilation only (nothing else in
        the process changes); None for :func:`default_xla_options` (Eigen convolutions on CPU),
        ``{}`` for XLA's own defaults. Options XLA refuses when compiling (a jax release that does
        not know them) give way to XLA's defaults with one warning
        (:class:`kjax_core.inference.compiler.JitWithOptions`).
    :param input_shape: (H, W, C) used to trace the model for folding; default 224x224x3.
    :param compilation_cache: keep compiled programs on disk (JAX's persistent compilation cache,
        in :func:`kjax_core.cache.compilation_cache_dir`: ``$KJAX_COMPILATION_CACHE``, else
        ``<kjax cache>/xla``), so that the next process running this model at this shape does not
        compile it again. A folder the user gave JAX is kept; ``KJAX_COMPILATION_CACHE=off`` or
        ``False`` here turns it off. JAX's setting holds for the whole process once on.
    :param scan_blocks: compile each run of identical blocks once and scan it over the blocks'
        stacked variables (:mod:`kjax_core.inference.scan`): the same arithmetic per block, about
        half the XLA compile time of a deep model (ResNet152 2.2 -> 1.2 s, ConvNeXtBase 6.5 ->
        3.4 s on 2 cores), but on the machine measured stacking the variables cost about what it
        saved and a scanned ConvNeXt stepped ~30% slower, so it is off by default
        (benchmarks/README.md).
    """
    return Predictor(module, variables, **options)
