"""ImageNet class names for the 1000-class classifiers: ``decode_predictions`` as Keras', offline.

Keras downloads ``imagenet_class_index.json`` on first use; kjax ships the same file (its md5 is
the one Keras checks, c2c37ea517e94d9795004a39431a14cb) as package data, so decoding needs no
network. Imports numpy only.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from .errors import InputError, OptionError

CLASSES = 1000


@functools.lru_cache(maxsize=1)
def class_index() -> dict[str, list[str]]:
    """``{"0": ["n01440764", "tench"], ...}``: Keras' class index (WordNet id, label) by class."""
    text = resources.files("kjax_core").joinpath("data", "imagenet_class_index.json").read_text()
    return json.loads(text)


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[str, str, Any]]]:
    """What ``keras.applications.imagenet_utils.decode_predictions`` returns: for each row of a
    (batch, 1000) array of scores, the ``top`` classes as ``(wordnet_id, label, score)``, highest
    score first."""
    import numpy as np

    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != CLASSES:
        raise InputError(
            f"decode_predictions takes a batch of ImageNet scores of shape (N, {CLASSES}); got shape "
            f"{tuple(preds.shape)}" + (" (add a batch axis: preds[None])" if preds.shape == (CLASSES,) else "")
        )
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= CLASSES:
        raise OptionError(f"top must be an integer from 1 to {CLASSES}; got {top!r}")
    index = class_index()
    results = []
    for pred in preds:
        # The same steps as Keras, so that ties come out in the same order.
        best = pred.argsort()[-top:][::-1]
        result = [tuple(index[str(i)]) + (pred[i],) for i in best]
        result.sort(key=lambda entry: entry[2], reverse=True)
        results.append(result)
    return results
