"""The input preprocessing each model expects outside its graph, as Keras' preprocess_input.

Modes (``ModelSpec.preprocessing``), for images with values in [0, 255], RGB, channels last:
    caffe: RGB -> BGR, then subtract the ImageNet mean per channel (no scaling);
    tf:    scale to [-1, 1];
    torch: scale to [0, 1], then normalise with the ImageNet mean and std per channel;
    none:  the model preprocesses inside its graph; images are passed through.
"""

from __future__ import annotations

import numpy as np

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "none")


def apply_mode(mode: str, images):
    """Preprocess float images (numpy or jax arrays, NHWC or HWC) with one of :data:`MODES`."""
    xp = np if isinstance(images, np.ndarray) or np.isscalar(images) else _jnp()
    x = xp.asarray(images, dtype=xp.float32)
    if mode == "caffe":
        return x[..., ::-1] - xp.asarray(CAFFE_MEAN_BGR, xp.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - xp.asarray(TORCH_MEAN, xp.float32)) / xp.asarray(TORCH_STD, xp.float32)
    if mode == "none":
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}; known: {', '.join(MODES)}")


def preprocess_input(name: str, images):
    """What ``keras.applications.<family>.preprocess_input`` does for model ``name``."""
    from .plugin_system.registry import get_spec

    return apply_mode(get_spec(name).preprocessing, images)


def _jnp():
    import jax.numpy as jnp

    return jnp
