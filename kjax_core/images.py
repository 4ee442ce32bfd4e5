"""Reading images as Keras does, and checking that a batch has the shape a model takes.

:func:`load_image` gives what ``keras.utils.img_to_array(keras.utils.load_img(path,
target_size=...))`` gives: RGB, resized by Pillow with Keras' default interpolation (nearest),
float32, height x width x 3, values in [0, 255]. Imports numpy and Pillow only.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

from .errors import CorruptFileError, InputError, OptionError

# Keras' names for Pillow's resampling filters (keras.src.utils.image_utils).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")


def load_image(
    path: str | os.PathLike, target_size: Sequence[int] | None = None, interpolation: str = "nearest"
):
    """One image file (JPEG, PNG, anything Pillow reads) as a float32 (height, width, 3) RGB array
    in [0, 255], resized to ``target_size`` = (height, width) when given."""
    import numpy as np

    image = open_image(path)
    if target_size is not None:
        height, width = (int(v) for v in target_size)
        if interpolation not in INTERPOLATIONS:
            raise OptionError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        if image.size != (width, height):
            from PIL import Image

            image = image.resize((width, height), getattr(Image.Resampling, interpolation.upper()))
    return np.asarray(image, dtype=np.float32)


def open_image(path: str | os.PathLike):
    """The decoded image as an RGB Pillow image (read whole first, as Keras does), or one line
    saying why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(os.path.expanduser(path), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CorruptFileError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path} is a folder, not an image file") from None
    except OSError as error:
        raise CorruptFileError(f"cannot read image {path}: {(error.strerror or str(error)).lower()}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise CorruptFileError(f"{path} is not an image Pillow can read (JPEG, PNG, ...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptFileError(f"{path} is a damaged image: {error}") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def check_images(images: Any, input_shape: Sequence[int], model: str = "the model") -> None:
    """Fail with one clear line unless ``images`` is a batch (N, H, W, C) with the model's C channels
    last: a single image (no batch axis) and a channels-first batch are named as such.
    ``input_shape`` is the model's (H, W, C); H and W (None where any size goes) appear in the
    message only. Cheap (shapes only), so a module can call it on every trace."""
    shape = tuple(int(d) for d in getattr(images, "shape", ()))
    height, width, channels = input_shape
    expected = f"(N, {height or 'H'}, {width or 'W'}, {channels})"
    if len(shape) == 3 and shape[-1] == channels:
        raise InputError(
            f"{model} takes a batch of images {expected}; got one image of shape {shape}: add a batch "
            "axis (images[None])"
        )
    if len(shape) != 4:
        raise InputError(f"{model} takes a batch of images {expected} (channels last); got shape {shape}")
    if shape[-1] != channels:
        hint = (": channels come last in Keras, transpose with images.transpose(0, 2, 3, 1)"
                if shape[1] == channels else "")
        raise InputError(
            f"{model} takes images with {channels} channels last {expected}; got shape {shape}{hint}"
        )
