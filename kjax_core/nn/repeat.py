"""Runs of identical blocks: a loop of named blocks, or, in a model built with ``scan_blocks=True``
(the predictor's inference path), one block body scanned over their stacked variables.

A deep application repeats one block many times at one resolution (ResNet152's conv4 has 35
identical bottlenecks after its first). Unrolled, XLA compiles each copy; scanned
(``flax.linen.scan``), it compiles the body once, and the run's variables are stacked along a new
leading axis. The arithmetic of each block is unchanged.

The unrolled form is the model: its blocks carry the Keras names the translator fills. A family
writes a run with :func:`repeat`, which loops as before; :func:`kjax_core.inference.scan` turns a
translated model's variables into the scanned model's (:func:`record_runs` says which blocks each
scanned run holds).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Mapping, Sequence

import jax
from flax import linen as nn

from .layers import enclosing_application

# The runs scanned while a model is traced inside record_runs(): (path of the scan, block names).
_RUNS: contextvars.ContextVar[list | None] = contextvars.ContextVar("kjax_runs", default=None)
BODY = "block"  # the scanned block's name inside the run's module


@contextlib.contextmanager
def record_runs() -> Iterator[list[tuple[tuple[str, ...], tuple[str, ...]]]]:
    """Within it, every run of two or more blocks a model calls appends ``(path, names)``: the
    path of the run's module in the scanned model's variables (its body is ``path + ("block",)``)
    and the names of the blocks it replaces there, siblings of the run's module. Scanned or not,
    a model records the same runs."""
    runs: list = []
    token = _RUNS.set(runs)
    try:
        yield runs
    finally:
        _RUNS.reset(token)


def run_name(names: Sequence[str]) -> str:
    """The scanned run's module name: its first and last block, e.g. ``conv4_block2..conv4_block36``."""
    return f"{names[0]}..{names[-1]}"


class _Run(nn.Module):
    """The scan body: one block of the run, carrying ``x`` (nothing is scanned in or out)."""

    block: Any  # the block's module class
    fields: Mapping[str, Any]
    args: tuple

    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        return self.block(**self.fields, name=BODY)(x, *self.args), None


def repeat(
    parent: nn.Module,
    block: Any,
    names: Sequence[str],
    x: jax.Array,
    *args: Any,
    inference_only: Mapping[str, Sequence[Any]] | None = None,
    **fields: Any,
) -> jax.Array:
    """``x`` through ``block(**fields, name=n)(x, *args)`` for each ``n`` in ``names``, in order:
    blocks of one class, one configuration and one input shape (a run after a stage's first block).

    ``inference_only`` gives fields that differ from block to block but do nothing in inference
    (drop-connect rates): ``{field: one value per block}``. Called inside ``parent``'s compact
    method. In a model built with ``scan_blocks=True`` a run of two or more blocks is one scanned
    module named :func:`run_name`; that model is for inference (``train`` must be False), where the
    per-block fields are not used. A scanned block must not tap features itself (the family taps
    after the run: the run's output is the last block's)."""
    varying = dict(inference_only or {})
    for field, values in varying.items():
        if len(values) != len(names):
            raise ValueError(f"{field}: {len(values)} values for {len(names)} blocks")
    runs = _RUNS.get()
    if runs is not None and len(names) > 1:
        runs.append(((*parent.path, run_name(names)), tuple(names)))
    application = enclosing_application(parent)
    if len(names) < 2 or not getattr(application, "scan_blocks", False):
        for i, name in enumerate(names):
            per_block = {field: values[i] for field, values in varying.items()}
            x = block(**fields, **per_block, name=name)(x, *args)
        return x
    if any(arg is True for arg in args):
        raise ValueError("a model built with scan_blocks=True is for inference: train=True needs "
                         "the model without it")
    first = {field: values[0] for field, values in varying.items()}
    scanned = nn.scan(_Run, variable_axes={True: 0}, split_rngs={True: True}, length=len(names))
    x, _ = scanned(block, {**fields, **first}, tuple(args), name=run_name(names))(x, None)
    return x


def stage(
    parent: nn.Module,
    block: Any,
    names: Sequence[str],
    x: jax.Array,
    *args: Any,
    first: Mapping[str, Any],
    inference_only: Mapping[str, Sequence[Any]] | None = None,
    **fields: Any,
) -> jax.Array:
    """A stage as EfficientNet writes one: its first block with ``first`` over ``fields`` (the
    block that strides and changes the width), then the run of the others (:func:`repeat`).
    ``inference_only`` has one value per block, the first block's included."""
    varying = dict(inference_only or {})
    own = {field: values[0] for field, values in varying.items()}
    x = block(**{**fields, **first, **own}, name=names[0])(x, *args)
    rest = {field: list(values)[1:] for field, values in varying.items()}
    return repeat(parent, block, names[1:], x, *args, inference_only=rest, **fields)
