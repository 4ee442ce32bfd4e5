"""Building the Keras reference model of a spec, with its weights.

TensorFlow is the reference engine: unless the user chose a Keras backend, kjax selects
``tensorflow`` before Keras is first imported. Imagenet weights come through the Keras constructor
itself, so Keras' own download, cache and hash check serve; a weights file is loaded by the model's
own ``load_weights`` (HDF5 and ``.weights.h5``/``.keras`` files; no pickle is involved).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptFileError, OptionError, WeightsError
from ..plugin_system.types import ModelSpec

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")
DOWNLOAD_TIMEOUT_S = 60  # per socket operation; Keras' urlretrieve has none of its own

# Where each Keras package fetches application weights; tests replace these to work offline.
GET_FILE_LOCATIONS = (
    ("keras.src.utils.file_utils", "get_file"),
    ("tf_keras.src.utils.data_utils", "get_file"),
)


def prepare_environment(backend: str | None = None) -> None:
    """Choose the Keras backend and quiet TensorFlow's C++ logging, before Keras is imported.

    The user's KERAS_BACKEND wins; else ``backend``; else TensorFlow, the reference engine (the
    parity harness and ``kjax verify`` compare against Keras on TensorFlow). Once Keras is
    imported its backend is fixed and ``backend`` changes nothing.
    """
    if backend is None or "keras" in sys.modules:
        backend = "tensorflow"
    os.environ.setdefault("KERAS_BACKEND", backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def translation_backend(spec: ModelSpec) -> str:
    """The Keras backend a translation builds its Keras model on: ``"jax"`` for Keras 3 models,
    ``"tensorflow"`` for tf_keras ones (ResNet-RS, RegNet), which need TensorFlow anyway.

    Keras 3 builds and reads these models on JAX without importing TensorFlow: measured for
    ResNet50 on 2 cores, Keras' import takes 1.8 s instead of 3.8 s and the process peaks at about
    300 MB less (benchmarks/README.md). The weights read are the same; only which engine holds
    them while they are translated differs.
    """
    return "tensorflow" if spec.keras_constructor.startswith("tf_keras") else "jax"


def import_keras_quietly(backend: str | None = None) -> None:
    """Import Keras (and TensorFlow, when it is Keras' backend) with the process' stderr closed for
    the duration: TensorFlow's native libraries print start-up notices to file descriptor 2 before
    any logging setting applies. Python exceptions still propagate. Used by the CLI, whose stderr
    is for the user. ``backend`` as in :func:`prepare_environment`."""
    prepare_environment(backend)
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def numpy_initializers() -> Iterator[None]:
    """While building a Keras model on the JAX backend, draw its initial weights with numpy instead
    of ``jax.random``: from the same initializers and distributions, seeded from Keras' seed state
    (so ``keras.utils.set_random_seed`` still makes them reproducible), but other random numbers.

    Keras on JAX compiles the random initializer once per weight shape, about 0.3 s each: 11 of the
    12 s ResNet50 takes to build on 2 cores; with numpy the build takes about a second. With
    imagenet or file weights the initial values are overwritten anyway; with ``weights=None`` they
    are the random weights translated. Does nothing on other backends or Keras versions without
    these functions.
    """
    try:
        import keras

        if keras.backend.backend() != "jax":
            yield
            return
        from keras.src.backend.jax import random as jax_random
    except ImportError:
        yield
        return
    import numpy as np

    def generator(seed):
        key = np.asarray(jax_random.jax_draw_seed(seed)).astype(np.uint64).ravel().tolist()
        return np.random.default_rng(key)

    def cast(sample, dtype):
        from keras.src.backend.config import floatx
        import jax.numpy as jnp

        return jnp.asarray(np.asarray(sample, dtype=dtype or floatx()))

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return cast(generator(seed).normal(mean, stddev, size=tuple(shape)), dtype)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return cast(generator(seed).uniform(minval, maxval, size=tuple(shape)), dtype)

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        rng = generator(seed)
        sample = rng.standard_normal(size=tuple(shape))
        while np.any(bad := np.abs(sample) > 2.0):  # redrawn beyond two deviations, as jax's
            sample[bad] = rng.standard_normal(int(bad.sum()))
        return cast(sample * stddev + mean, dtype)

    replaced = {"normal": normal, "uniform": uniform, "truncated_normal": truncated_normal}
    if not all(hasattr(jax_random, name) for name in (*replaced, "jax_draw_seed")):
        yield
        return
    saved = {name: getattr(jax_random, name) for name in replaced}
    try:
        for name, function in replaced.items():
            setattr(jax_random, name, function)
        yield
    finally:
        for name, function in saved.items():
            setattr(jax_random, name, function)


@contextlib.contextmanager
def placeholder_initializers() -> Iterator[None]:
    """While building a Keras model whose every weight is overwritten next (the parity harness'
    randomised references, their float64 twins), fill the weights Keras draws at random with
    zeros instead: Keras 3 on TensorFlow and tf_keras draw each kernel with TensorFlow's random
    ops, a third of the time it takes to build ResNet-RS 200 (2.4 of 7.5 s on 2 cores). Not for
    a model whose initial weights are used."""
    patched = []
    zeros = None
    if "keras" in sys.modules:
        try:
            from keras.src.backend.tensorflow import random as keras_random
        except ImportError:
            keras_random = None
        if keras_random is not None:
            import tensorflow as tf

            def zeros(shape, *args, **kwargs):  # (shape, mean|minval, stddev|maxval, dtype, seed)
                from keras.src.backend.config import floatx

                dtype = kwargs.get("dtype", args[2] if len(args) > 2 else None)
                return tf.zeros(tuple(shape), dtype or floatx())

            for name in ("normal", "uniform", "truncated_normal"):
                patched.append((keras_random, name, getattr(keras_random, name)))
    if "tf_keras" in sys.modules:
        import tensorflow as tf
        from tf_keras.src.backend import RandomGenerator, floatx as tf_keras_floatx

        def method(self, shape, *args, **kwargs):  # (shape, mean|minval, stddev|maxval, dtype, nonce)
            dtype = kwargs.get("dtype", args[2] if len(args) > 2 else None)
            return tf.zeros(tuple(shape), dtype or tf_keras_floatx())

        for name in ("random_normal", "random_uniform", "truncated_normal"):
            patched.append((RandomGenerator, name, RandomGenerator.__dict__[name]))
    try:
        for owner, name, original in patched:
            setattr(owner, name, method if isinstance(owner, type) else zeros)
        yield
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)


@dataclass
class KerasReference:
    """A built Keras model and where its weights came from."""

    model: Any
    weights: str | None  # "imagenet", a file path, or None (random initial weights)
    weights_file: str | None  # the file the weights were read from, when there is one


def check_weights_file(path: str) -> Path:
    """A readable weights file in a format Keras loads without pickle, or a clear error."""
    file = Path(path).expanduser()
    if not file.exists():
        raise WeightsError(f"weights file not found: {path}; check the path (or use --weights imagenet or none)")
    if not file.is_file():
        raise WeightsError(f"weights path is not a file: {path}")
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise CorruptFileError(f"cannot read weights file {path}: {error.strerror}") from None
    if head != HDF5_SIGNATURE and not head.startswith(ZIP_SIGNATURE):
        raise CorruptFileError(
            f"{path} is not a Keras weights file (expected HDF5 .h5/.weights.h5 or a .keras archive); "
            "pass the file Keras saved"
        )
    if file.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"Keras reads weights only from files named *.h5, *.hdf5 or *.keras; rename {path}"
        )
    if head == HDF5_SIGNATURE:
        import h5py

        try:
            with h5py.File(file, "r"):
                pass
        except OSError:
            raise CorruptFileError(f"{path} is a damaged or truncated HDF5 file; download or save it again") from None
    return file


@contextlib.contextmanager
def _record_downloads(record: list[str]) -> Iterator[None]:
    """Note the files Keras' get_file returns (the cached imagenet weights) while building."""
    import importlib

    patched = []
    for module_name, attribute in GET_FILE_LOCATIONS:
        if module_name.partition(".")[0] not in sys.modules:
            continue  # that Keras is not in use (importing tf_keras would import TensorFlow)
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(module, attribute)

        def recording(*args, _original=original, **kwargs):
            path = _original(*args, **kwargs)
            record.append(str(path))
            return path

        setattr(module, attribute, recording)
        patched.append((module, attribute, original))
    try:
        yield
    finally:
        for module, attribute, original in patched:
            setattr(module, attribute, original)


def build_keras_model(
    spec: ModelSpec,
    options: dict[str, Any],
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
) -> KerasReference:
    """Call the spec's Keras constructor. Keras' printing goes to stderr, keeping stdout for data.

    :param weights: a named weight set of the spec (``"imagenet"``), a file path, or None.
    """
    prepare_environment()
    weights_file = None
    if weights is not None and weights not in spec.weights:
        if not os.path.exists(os.path.expanduser(weights)) and os.sep not in weights and "." not in weights:
            named = ", ".join(spec.weights) or "none"
            raise WeightsError(
                f"{spec.name} has no weight set '{weights}' (named sets: {named}); "
                "pass a weights file path, or none for random weights"
            )
        weights_file = str(check_weights_file(weights))
    constructor = spec.load(spec.keras_constructor)
    kwargs = dict(options)
    kwargs["weights"] = None if weights_file else weights
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    downloads: list[str] = []
    # Keras prints (download notices, progress bars) to stdout, which is for data here; the
    # progress display says what is happening instead.
    keras_says = io.StringIO()
    with contextlib.redirect_stdout(keras_says), _record_downloads(downloads), _socket_timeout():
        try:
            model = constructor(**kwargs)
        except Exception as error:
            if downloads:  # the file arrived (or was cached) but Keras could not load it
                raise WeightsError(
                    f"Keras could not load the {weights} weights file {downloads[-1]}: "
                    f"{_first_line(error)}; delete it to download it again"
                ) from None
            if weights in spec.weights and _is_download_failure(error):
                # Keras says "URL fetch failure on URL: code -- reason"; keep the reason.
                reason = _first_line(error).rpartition(" -- ")[2]
                raise WeightsError(
                    f"could not download the {weights} weights of {spec.name} ({reason}). "
                    "Download the file where there is a network and pass it with --weights PATH, "
                    "or put it in ~/.keras/models/."
                ) from None
            raise OptionError(f"Keras refused the options for {spec.name}: {_first_line(error)}") from None
        if weights_file:
            try:
                with warnings.catch_warnings():
                    # Keras 3 warns for each of its internal "_operations_by_depth" containers,
                    # which hold no weights; other warnings still reach the user.
                    warnings.filterwarnings("ignore", message=".*_operations_by_depth.*")
                    model.load_weights(weights_file)
            except Exception as error:
                raise WeightsError(
                    f"{weights_file} does not fit {spec.name} with these options: {_keras_reason(error)}; "
                    "check the model name and options the file was saved with "
                    "(--include-top, --classes, --set)"
                ) from None
            _check_every_array_used(weights_file, model, spec)
    if downloads:
        weights_file = downloads[-1]
    return KerasReference(model, weights, weights_file)


def _file_arrays(path: str) -> dict[str, tuple[int, ...]]:
    """Every weight array a Keras weights file holds: path -> shape (read with h5py, no pickle)."""
    import zipfile

    import h5py

    def collect(handle: Any) -> dict[str, tuple[int, ...]]:
        root = handle["model_weights"] if "model_weights" in handle else handle  # whole-model .h5
        arrays = {}
        root.visititems(lambda name, item: arrays.__setitem__(name, tuple(item.shape))
                        if isinstance(item, h5py.Dataset) else None)
        return arrays

    if zipfile.is_zipfile(path):  # a .keras archive: the weights are its model.weights.h5
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as inner:
            with h5py.File(io.BytesIO(inner.read()), "r") as handle:
                return collect(handle)
    with h5py.File(path, "r") as handle:
        return collect(handle)


def _check_every_array_used(path: str, model: Any, spec: ModelSpec) -> None:
    """Keras' load_weights ignores arrays a .weights.h5 file holds beyond the model's (a with-top
    file loads silently into a model without top); kjax refuses, naming what would be left."""
    try:
        arrays = _file_arrays(path)
    except (OSError, KeyError, ValueError):
        return  # a layout this check does not know; Keras' own checks have passed
    unused = dict(arrays)
    wanted = sorted(tuple(w.shape) for w in model.weights)
    for shape in wanted:
        match = next((name for name, held in unused.items() if held == shape), None)
        if match is not None:
            del unused[match]
    if len(arrays) > len(wanted) and unused:
        shown = ", ".join(f"{name} {list(shape)}" for name, shape in list(unused.items())[:3])
        raise WeightsError(
            f"{path} holds {len(arrays)} weight arrays but {spec.name} with these options uses "
            f"{len(wanted)}; unused: {shown}; check the options the file was saved with "
            "(--include-top, --classes, --set)"
        )


def _keras_reason(error: BaseException) -> str:
    """The informative part of a Keras loading error, on one line: Keras 3 opens with a count
    ("A total of 20 objects could not be loaded. Example ...:") and gives the reason after it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("A total of") and len(lines) > 1:
        count = lines[0].split(".")[0]
        reason = lines[1].split(" Target variable:")[0]
        return f"{count} ({reason.rstrip('.')})"
    return _first_line(error).rstrip(".")


def _is_download_failure(error: BaseException) -> bool:
    """Keras' get_file wraps network errors in a bare Exception("URL fetch failure ...") and
    reports a bad download as a hash mismatch; timeouts and resets arrive as OSError."""
    text = str(error).lower()
    return isinstance(error, OSError) or any(
        marker in text for marker in ("url fetch failure", "hash", "corrupted", "timed out")
    )


@contextlib.contextmanager
def _socket_timeout() -> Iterator[None]:
    """A download that stalls fails after DOWNLOAD_TIMEOUT_S instead of hanging."""
    import socket

    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
