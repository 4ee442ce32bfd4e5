"""Flax NNX: a translated model as an NNX module, through Flax's own Linen-to-NNX bridge.

``flax.nnx.bridge.ToNNX`` holds a Linen module's variables as NNX state (``nnx.Param`` for
"params", ``nnx.BatchStat`` for "batch_stats", under the Linen paths) and runs ``module.apply`` on
them. :func:`to_nnx` builds that structure abstractly (``nnx.eval_shape`` over ``lazy_init``: no
weights are initialised or computed) and puts the translated arrays in as they are, so the NNX
module computes exactly what ``module.apply(variables, ...)`` computes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import unfreeze
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from .errors import WeightsError


class KerasNNX(bridge.ToNNX):
    """A kjax model as an NNX module (made by :func:`to_nnx` or ``kjax_core.load(path, nnx=True)``).

    ``model(images)`` is ``module.apply(variables, images)``: inference, BatchNorm on its moving
    statistics, dropout off. ``model(images, train=True)`` is the training forward pass: BatchNorm
    normalises with the batch statistics and updates its moving averages in the model's
    ``nnx.BatchStat`` state, as ``nnx.BatchNorm`` does (the bridge alone would apply with
    ``mutable=False`` and refuse to update them); pass ``mutable=`` to choose the updated Linen
    collections yourself. Dropout (families with dropout in the graph: EfficientNet, ResNet-RS,
    MobileNet, ...) draws its keys from the model's ``rngs`` streams (``"dropout"``, falling back
    to ``"params"`` as Linen does); every call draws one key per stream, in train mode or not.
    Other keyword arguments go to the Linen module.

    Train with ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``nnx.value_and_grad`` (which
    differentiates the ``nnx.Param`` state only); ``nnx.state(model, nnx.Param).to_pure_dict()``
    and ``nnx.state(model, nnx.BatchStat).to_pure_dict()`` are the Linen "params" and
    "batch_stats" trees again.
    """

    def __call__(self, *args: Any, train: bool = False, mutable: Any = None, **kwargs: Any) -> Any:
        if train:  # only then passed on: False is every kjax module's default
            kwargs["train"] = True
            if mutable is None:
                mutable = ["batch_stats"]
        return super().__call__(*args, mutable=mutable, **kwargs)


def to_nnx(
    module: Any,
    variables: dict[str, Any],
    *,
    rngs: nnx.Rngs | int | jax.Array = 0,
    input_shape: Sequence[int] = (224, 224, 3),
) -> KerasNNX:
    """The Linen ``module`` and its ``variables`` ({"params", "batch_stats"}) as an NNX module
    (see :class:`KerasNNX` for what it takes), holding the given arrays without copying them.

    :param rngs: the random streams dropout draws from in train mode: an ``nnx.Rngs``, or a seed
        or key for ``nnx.Rngs(dropout=rngs)``.
    :param input_shape: (H, W, C) at which the module's variable structure is traced (no
        compute); it matters only where variable shapes depend on the image size (VGG with top).
    :raises WeightsError: ``variables`` do not fit the module (missing, unexpected or mis-shaped
        leaves, all named).
    """
    if not isinstance(rngs, nnx.Rngs):
        rngs = nnx.Rngs(dropout=rngs)
    images = jnp.zeros((1, *input_shape), jnp.float32)
    # The structure only: eval_shape traces lazy_init's Linen init without running it.
    model = nnx.eval_shape(lambda: KerasNNX(module, rngs=nnx.Rngs(0)).lazy_init(images))
    # As the bridge stores its own updates: one NNX variable per Linen leaf, collections merged by path.
    arrays = jax.tree_util.tree_map(jnp.asarray, unfreeze(variables))
    state = nnx.State(bridge_variables.linen_vars_to_nnx_attrs(arrays))
    _check_fits(module, nnx.state(model, nnx.Not(nnx.RngState)), state, input_shape)
    nnx.update(model, state)
    # The abstract init's streams are placeholders; the model gets its own fork of the caller's,
    # as ToNNX's constructor does, so it shares no state with the caller's Rngs.
    model.to_nnx__rngs = rngs.fork()
    return model


def _check_fits(module: Any, expected: nnx.State, given: nnx.State, input_shape: Sequence[int]) -> None:
    def shapes(state: nnx.State) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {"/".join(map(str, path)): (type(leaf).__name__, tuple(jnp.shape(leaf.get_value())))
                for path, leaf in nnx.to_flat_state(state)}

    want, got = shapes(expected), shapes(given)
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    wrong = sorted(path for path in want.keys() & got.keys() if want[path] != got[path])
    if missing or extra or wrong:
        raise WeightsError(
            f"the variables do not fit {type(module).__name__} (traced at input_shape="
            f"{tuple(input_shape)}): missing {missing[:5]}, unexpected {extra[:5]}, "
            f"mis-shaped or of another collection {wrong[:5]}"
        )
