"""The predictor's scanned model: each run of identical blocks (:func:`kjax_core.nn.repeat`)
compiled once and scanned over its stacked variables, instead of once per block.

:func:`scan_blocks` traces the model once (abstractly) to learn its runs, rebuilds it with
``scan_blocks=True`` and moves each run's per-block variables into the run's module, stacked along a new
leading axis. BatchNorms folded into their convolutions (:mod:`.fold`) stay folded: a fold found in
every block of a run becomes one fold of the run's body.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

Path = tuple[str, ...]


def _pop(tree: dict, path: Path) -> Any:
    """Remove and return ``tree[path]`` (None where absent), copying the dicts on the way."""
    for key in path[:-1]:
        if key not in tree:
            return None
        tree[key] = dict(tree[key])
        tree = tree[key]
    return tree.pop(path[-1], None)


def _put(tree: dict, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree[key] = dict(tree.get(key, {}))
        tree = tree[key]
    tree[path[-1]] = value


def stack_runs(variables: dict, runs: Sequence[tuple[Path, tuple[str, ...]]], body: str) -> dict:
    """``variables`` with each run's blocks (siblings of the run's module at ``path``) replaced by
    the run's body at ``path + (body,)``, every leaf stacked over the blocks in order. Fails,
    naming the run, where its blocks do not hold the same variables of the same shapes."""
    import jax
    import numpy as np

    out = {collection: dict(tree) for collection, tree in variables.items()}
    for path, names in runs:
        parent = path[:-1]
        for collection, tree in out.items():
            blocks = [_pop(tree, (*parent, name)) for name in names]
            if all(block is None for block in blocks):
                continue
            shapes = [jax.tree.map(np.shape, block) for block in blocks]
            if any(shape != shapes[0] for shape in shapes):
                raise ValueError(f"{'/'.join(path)}: the blocks {', '.join(names)} do not hold the "
                                 f"same {collection} variables, so they cannot be scanned")
            # numpy, not jax.numpy: one stack per leaf would compile a program per shape
            _put(tree, (*path, body), jax.tree.map(lambda *leaves: np.stack(leaves), *blocks))
    return out


def scan_folds(folds: Sequence[Any], runs: Sequence[tuple[Path, tuple[str, ...]]],
               body: str) -> tuple:
    """The folds of the scanned model: a fold inside a run's blocks, the same in each block,
    becomes one fold in the run's body; folds outside runs stay."""
    blocks = {(*path[:-1], name): (path, len(names)) for path, names in runs for name in names}
    kept, inside = [], {}
    for fold in folds:
        for depth in range(1, len(fold.bn)):
            if fold.bn[:depth] in blocks:
                run, count = blocks[fold.bn[:depth]]
                if fold.conv[:depth] != fold.bn[:depth]:
                    raise ValueError(f"{'/'.join(fold.bn)} folds into a module outside its block")
                scanned = dataclasses.replace(fold, conv=(*run, body, *fold.conv[depth:]),
                                              bn=(*run, body, *fold.bn[depth:]))
                inside.setdefault(scanned, []).append(fold.bn[:depth])
                break
        else:
            kept.append(fold)
    for scanned, found in inside.items():
        run, count = blocks[found[0]]
        if len(set(found)) != count:
            raise ValueError(f"{'/'.join(scanned.bn)} is folded in {len(set(found))} of the "
                             f"{count} blocks of {'/'.join(run)}: the run cannot be scanned")
    return (*kept, *inside)


def scan_blocks(module: Any, variables: dict, input_shape: Sequence[int],
                runs: Sequence[tuple[Path, tuple[str, ...]]] | None = None) -> tuple[Any, dict]:
    """``(module, variables)`` with every run of identical blocks scanned, or both unchanged when
    the model has no runs (or is not a kjax application). ``module`` may be a folded model
    (:class:`.fold.FoldedModel`); the result then is one too, with its folds moved into the runs.
    Inference only, as the folded model. ``runs``: what :func:`kjax_core.nn.repeat.record_runs`
    recorded while the model was traced for ``input_shape`` (the predictor records them while
    folding); without, the model is traced here."""
    import jax
    import jax.numpy as jnp

    from ..nn.repeat import BODY, record_runs
    from .fold import FoldedModel

    folded = isinstance(module, FoldedModel)
    model = module.module if folded else module
    if not any(field.name == "scan_blocks" for field in dataclasses.fields(model)):
        return module, variables
    if runs is None:
        abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), v.dtype), variables)
        with record_runs() as runs:
            jax.eval_shape(module.apply, abstract,
                           jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    if not runs:
        return module, variables
    scanned = model.clone(scan_blocks=True)
    variables = stack_runs(variables, runs, BODY)
    if folded:
        return FoldedModel(scanned, scan_folds(module.folds, runs, BODY)), variables
    return scanned, variables
