"""BatchNorm folding: inference with each BatchNorm merged into the convolution that feeds it.

In inference a BatchNorm is a per-channel affine map, ``y = (x - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. When ``x`` is the output of a convolution (or Dense) with kernel
``W`` and bias ``b`` (``nn.Conv``, ``nn.Dense``, or kjax's pointwise and depthwise convolutions)
and nothing else reads ``x``, the pair equals one convolution with kernel
``W * s`` (scaled per output channel) and bias ``(b - mean) * s + beta``. The BatchNorm's
elementwise work goes, its statistics are no longer inputs of the computation, and XLA can merge
the remaining bias addition with what follows (ReLU, the residual addition).

Which pairs fold is decided by tracing the model, not by names: :func:`find_folds` traces
``module.apply`` once with every Conv/Dense output and every normalisation input marked, and folds
a normalisation only where its input *is* the output of one Conv/Dense call that nothing else
reads, each module called once, normalising the last axis with its running statistics. Every other
BatchNorm (after a concatenation, a ReLU, an addition) is left as it is.

What counts as a BatchNorm: ``flax.linen.BatchNorm``, and any module without submodules whose
variables are ``batch_stats`` ``mean``/``var`` and ``params`` among ``scale``/``bias``, with an
``epsilon`` attribute, *and* whose output, checked numerically on its own variables, is that affine
map (a family's own BatchNorm, such as ResNet-RS', qualifies; anything else is left alone).

The model is never edited: :class:`FoldedModel` applies the original module with the folded
BatchNorms reduced to adding their folded bias (or to nothing, where the convolution has a bias of
its own to carry it). The arithmetic is done in float64 and stored in the parameter dtype, so the
folded model is as close to exact as the unfolded one (tests/test_fold.py measures both against a
float64 evaluation). Folding is for inference only: a folded model refuses ``train=True``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

Path = tuple[str, ...]
DEFAULT_INPUT_SHAPE = (224, 224, 3)
_NORM_PARAMS = {"scale", "bias"}


@dataclass(frozen=True)
class Fold:
    """One folded pair: the BatchNorm at ``bn`` merged into the Conv/Dense at ``conv``."""

    conv: Path
    bn: Path
    conv_has_bias: bool  # True: the conv's bias carries the folded bias; the BatchNorm does nothing
    epsilon: float
    call: str  # how the BatchNorm was called when folded (its train flag); other calls are refused


@dataclass(frozen=True, eq=False)
class FoldedModel:
    """A Flax module whose folded BatchNorms add their folded bias instead of normalising.

    Use it as the module: ``folded.apply(variables, images)``, ``jax.jit(folded.apply)``, with the
    folded variables :func:`fold_batch_norm` returned. Attributes other than ``module``, ``folds``
    and ``apply`` are the wrapped module's.
    """

    module: Any
    folds: tuple[Fold, ...]

    def __getattr__(self, name: str) -> Any:  # only asked for names that are not fields
        return getattr(self.module, name)

    def apply(self, variables: Any, *args: Any, **kwargs: Any) -> Any:
        """``module.apply`` with the folded BatchNorms replaced by their bias."""
        from flax import linen as nn

        folded = {fold.bn: fold for fold in self.folds}

        def folded_norm(next_fun, call_args, call_kwargs, context):
            module = context.module
            fold = folded.get(tuple(module.path)) if context.method_name == "__call__" else None
            if fold is None:
                return next_fun(*call_args, **call_kwargs)
            if _call_signature(module, call_args, call_kwargs) != fold.call:
                raise ValueError(
                    f"BatchNorm {'/'.join(fold.bn)} is folded into {'/'.join(fold.conv)}: a folded "
                    "model is for inference only (train=False); train the unfolded model"
                )
            x = call_args[0]
            dtype = getattr(module, "dtype", None)
            if fold.conv_has_bias:
                return x if dtype is None else x.astype(dtype)
            bias = module.get_variable("params", "bias")
            y = x + bias.astype(x.dtype)
            return y.astype(dtype or np.result_type(x.dtype, bias.dtype))

        with nn.intercept_methods(folded_norm):
            return self.module.apply(variables, *args, **kwargs)


def _call_signature(module: Any, args: Sequence[Any], kwargs: dict) -> str:
    """The call's static part (everything but the input) and the module's train flag."""
    flags = [repr(a) for a in args[1:]] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())]
    running = getattr(module, "use_running_average", None)
    return f"({', '.join(flags)}) use_running_average={running!r}"


def _subtree(tree: Any, path: Path) -> Any:
    for key in path:
        if not hasattr(tree, "get") or key not in tree:
            return None
        tree = tree[key]
    return tree


def _norm_variables(variables: Any, path: Path) -> dict | None:
    """``{"params": {...}, "batch_stats": {"mean", "var"}}`` of a BatchNorm-shaped module at
    ``path`` (arrays only, no submodules), else None."""
    stats = _subtree(variables.get("batch_stats", {}), path)
    params = _subtree(variables.get("params", {}), path) or {}
    if stats is None or set(stats) != {"mean", "var"} or not set(params) <= _NORM_PARAMS:
        return None
    if any(hasattr(v, "items") for v in (*stats.values(), *params.values())):
        return None
    others = [c for c in variables if c not in ("params", "batch_stats") and _subtree(variables[c], path)]
    return None if others else {"params": dict(params), "batch_stats": dict(stats)}


def _affine_check(module: Any, variables: dict, call: tuple, channels: int) -> bool:
    """Is ``module``'s inference output (called as when traced) the BatchNorm affine map of its
    variables? Checked on random inputs, in float32, to 1e-5 relative."""
    import jax.numpy as jnp

    args, kwargs = call
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, channels)).astype(np.float32)
    try:
        y = np.asarray(module.clone(parent=None).apply(variables, jnp.asarray(x), *args, **kwargs))
    except Exception:
        return False
    mean = np.asarray(variables["batch_stats"]["mean"], np.float64)
    var = np.asarray(variables["batch_stats"]["var"], np.float64)
    scale = np.asarray(variables["params"].get("scale", 1.0), np.float64)
    bias = np.asarray(variables["params"].get("bias", 0.0), np.float64)
    expected = (x - mean) / np.sqrt(var + float(module.epsilon)) * scale + bias
    if y.shape != expected.shape:
        return False
    return bool(np.linalg.norm(y - expected) <= 1e-5 * max(np.linalg.norm(expected), 1e-30))


def find_folds(
    module: Any, variables: Any, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE
) -> list[Fold]:
    """The Conv/Dense -> BatchNorm pairs of ``module`` that fold exactly (see the module doc).

    Traces ``module.apply(variables, x)`` abstractly (nothing is computed) for one image of
    ``input_shape`` (H, W, C), in inference mode.
    """
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from jax.extend.core import Literal

    from ..nn import DepthwiseConv, GroupedConv, PointwiseConv

    # kernels whose last axis is the output channel
    linear = (nn.Conv, nn.Dense, DepthwiseConv, GroupedConv, PointwiseConv)
    marks: list[tuple[str, Path, Any, Any]] = []  # (kind, path, module, call) in call order

    def is_norm(module: Any) -> bool:
        if isinstance(module, nn.BatchNorm):
            return True
        return isinstance(getattr(module, "epsilon", None), float) and (
            _norm_variables(variables, tuple(module.path)) is not None
        )

    def mark(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, linear):
            out = next_fun(*args, **kwargs)
            marks.append(("conv", tuple(module.path), module, None))
            return jax.lax.optimization_barrier(out)
        if args and is_norm(module):
            marks.append(("norm", tuple(module.path), module, (tuple(args[1:]), dict(kwargs))))
            args = (jax.lax.optimization_barrier(args[0]), *args[1:])
        return next_fun(*args, **kwargs)

    def traced(variables, x):
        with nn.intercept_methods(mark):
            return module.apply(variables, x)

    abstract = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype), variables)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(traced)(abstract, x).jaxpr

    barriers = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "optimization_barrier"]
    if len(barriers) != len(marks):  # marks inside nested computations: do not guess
        return []
    uses: dict[Any, int] = {}
    for var in [v for eqn in jaxpr.eqns for v in eqn.invars] + list(jaxpr.outvars):
        if not isinstance(var, Literal):
            uses[var] = uses.get(var, 0) + 1
    calls: dict[Path, int] = {}
    for _, path, _, _ in marks:
        calls[path] = calls.get(path, 0) + 1
    producer = {
        barrier.outvars[0]: (path, module)
        for (kind, path, module, _), barrier in zip(marks, barriers) if kind == "conv"
    }

    folds, checked = [], {}
    for (kind, path, norm, call), barrier in zip(marks, barriers):
        if kind != "norm":
            continue
        source = barrier.invars[0]
        if source not in producer or uses.get(source) != 1:
            continue
        conv_path, conv = producer[source]
        if calls[conv_path] != 1 or calls[path] != 1:
            continue
        ndim = len(source.aval.shape)
        if isinstance(norm, nn.BatchNorm):
            axes = norm.axis if isinstance(norm.axis, tuple) else (norm.axis,)
            running = nn.merge_param(
                "use_running_average", norm.use_running_average,
                call[1].get("use_running_average", call[0][0] if call[0] else None),
            )
            if tuple(a % ndim for a in axes) != (ndim - 1,) or not running:
                continue
        else:  # a family's own BatchNorm: its arithmetic is checked, once per class and setting
            settings = tuple((f.name, repr(getattr(norm, f.name))) for f in dataclasses.fields(norm)
                             if f.name not in ("name", "parent"))
            key = (type(norm), _call_signature(norm, (None, *call[0]), call[1]), settings)
            if key not in checked:
                own = _norm_variables(variables, path)
                checked[key] = _affine_check(norm, own, call, source.aval.shape[-1])
            if not checked[key]:
                continue
        signature = _call_signature(norm, (None, *call[0]), call[1])
        folds.append(Fold(conv_path, path, bool(conv.use_bias), float(norm.epsilon), signature))
    return folds


def _copy_tree(tree: Any) -> Any:
    """A copy of the nested dicts (the arrays themselves are shared, never copied)."""
    if hasattr(tree, "items"):
        return {key: _copy_tree(value) for key, value in tree.items()}
    return tree


def fold_batch_norm(
    module: Any, variables: Any, *, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE
) -> tuple[FoldedModel, dict]:
    """Fold every BatchNorm that directly follows a Conv/Dense into it, for inference.

    :param module: a kjax Flax module (or any ``flax.linen`` module built from ``nn.Conv``,
        ``nn.Dense`` and ``nn.BatchNorm``).
    :param variables: its variables, ``{"params": ..., "batch_stats": ...}``.
    :param input_shape: (H, W, C) of one image, for tracing; any size the model accepts.
    :returns: ``(folded_model, folded_variables)``: ``folded_model.apply(folded_variables, x)``
        equals ``module.apply(variables, x)`` to float32 rounding. ``variables`` is not modified
        and untouched arrays are shared, not copied. A folded BatchNorm keeps only ``params/bias``
        (or nothing, when its convolution has a bias) and no statistics, so the folded variables
        do not fit the unfolded module: a mix-up fails instead of computing something else.
    """
    import jax.numpy as jnp

    folds = find_folds(module, variables, input_shape)
    out = _copy_tree(variables)
    params = out.setdefault("params", {})
    stats = out.get("batch_stats", {})
    for fold in folds:
        norm = _subtree(params, fold.bn) or {}
        moments = _subtree(stats, fold.bn)
        conv = _subtree(params, fold.conv)
        mean = np.asarray(moments["mean"], np.float64)
        scale = 1.0 / np.sqrt(np.asarray(moments["var"], np.float64) + fold.epsilon)
        if "scale" in norm:
            scale = scale * np.asarray(norm["scale"], np.float64)
        beta = np.asarray(norm["bias"], np.float64) if "bias" in norm else 0.0
        kernel = conv["kernel"]
        conv_bias = np.asarray(conv["bias"], np.float64) if fold.conv_has_bias else 0.0
        bias = (conv_bias - mean) * scale + beta
        conv["kernel"] = jnp.asarray(np.asarray(kernel, np.float64) * scale, kernel.dtype)
        if fold.conv_has_bias:
            conv["bias"] = jnp.asarray(bias, conv["bias"].dtype)
            _remove(params, fold.bn)
        else:
            _set(params, fold.bn, {"bias": jnp.asarray(bias, kernel.dtype)})
        _remove(stats, fold.bn)
    if "batch_stats" in out and not out["batch_stats"]:
        del out["batch_stats"]
    return FoldedModel(module, tuple(folds)), out


def _set(tree: dict, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _remove(tree: dict, path: Path) -> None:
    """Delete ``path`` and the parents it leaves empty."""
    if _subtree(tree, path) is None:
        return
    parents = [tree]
    for key in path[:-1]:
        parents.append(parents[-1][key])
    del parents[-1][path[-1]]
    for parent, key in zip(reversed(parents[:-1]), reversed(path[:-1])):
        if parent[key]:
            break
        del parent[key]
