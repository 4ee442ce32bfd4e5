"""Building the Keras reference model of a spec, with its weights.

TensorFlow is the reference engine: unless the user chose a Keras backend, kjax selects
``tensorflow`` before Keras is first imported. Imagenet weights come through the Keras constructor
itself, so Keras' own download, cache and hash check serve; a weights file is loaded by the model's
own ``load_weights`` (HDF5 and ``.weights.h5``/``.keras`` files; no pickle is involved).

Weights are named in one of four ways (:func:`resolve_weights`, which checks them before anything
heavy is imported): a named set of the spec (``"imagenet"``), ``None`` (or ``"none"``: Keras' random
initial weights), a file ``PATH``, or ``"SET=PATH"``: a file that holds the named set SET. The last
builds exactly what Keras builds for SET (EfficientNet's graph differs for imagenet weights) and
hands PATH to Keras in place of its download.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import CorruptFileError, OptionError, WeightsError
from ..plugin_system.types import KJAX_OPTIONS, ModelSpec

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


def import_keras_quietly(backend: str | None = None, *, tf_keras: bool = False) -> None:
    """Import Keras (and TensorFlow, when it is Keras' backend; and tf_keras when asked) with the
    process' stderr closed for the duration: TensorFlow's native libraries print start-up notices
    to file descriptor 2 before any logging setting applies. Python exceptions still propagate.
    Used by the CLI, whose stderr is for the user. ``backend`` as in :func:`prepare_environment`."""
    prepare_environment(backend)
    if "keras" in sys.modules and (not tf_keras or "tf_keras" in sys.modules):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
            if tf_keras:
                import tf_keras as _  # noqa: F401
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
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() == "tensorflow":
        try:  # (on another backend, importing this would import TensorFlow for nothing)
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
    # The named set whose graph and loading Keras performed ("imagenet", also for SET=PATH), else
    # the weights file, else None (random initial weights).
    weights: str | None
    weights_file: str | None  # the file the weights were read from, when there is one


def check_weights_file(path: str) -> Path:
    """A readable weights file in a format Keras loads without pickle, or a clear error."""
    file = Path(path).expanduser()
    if not file.exists():
        raise WeightsError(
            f"weights file not found: {path}; check the path, or pass weights='imagenet' or None",
            cli=f"weights file not found: {path}; check the path, or pass --weights imagenet or none",
        )
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


@dataclass(frozen=True)
class WeightsChoice:
    """A ``weights`` argument, checked (:func:`resolve_weights`).

    ``set`` is the named weight set whose graph and loading Keras performs (None: the graph Keras
    builds without named weights); ``file`` a checked weights file (for ``SET=PATH``: the file
    handed to Keras in place of its download); ``recognised`` says that a plain PATH turned out
    to be the file Keras publishes for ``set`` (:func:`recognise_weights_file`).
    """

    set: str | None
    file: str | None = None
    recognised: bool = False

    @property
    def argument(self) -> str | None:
        """What the translation is asked for: the set (its file served, if any), else the file."""
        return self.set or self.file


def _looks_like_set_name(text: str) -> bool:
    return os.sep not in text and "." not in text and "/" not in text


def _unknown_set(spec: ModelSpec, name: str) -> WeightsError:
    named = f"its sets: {', '.join(spec.weights)}" if spec.weights else "it has no named sets"
    return WeightsError(
        f"{spec.name} has no weight set '{name}' ({named}); pass one of them, a weights file path, "
        "'SET=PATH' for a file holding a named set, or None for random weights",
        cli=f"{spec.name} has no weight set '{name}' ({named}); pass --weights with one of them, "
        "a file PATH, SET=PATH, or none",
    )


def resolve_weights(spec: ModelSpec, weights: Any) -> WeightsChoice:
    """Check a ``weights`` argument without importing Keras: a named set of ``spec``, None or
    ``"none"``, an existing weights file, or ``"SET=PATH"``. Unknown set names and missing or
    unreadable files fail here, before any expensive work."""
    if isinstance(weights, WeightsChoice):
        return weights
    if weights is None:
        return WeightsChoice(None)
    if not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(
            f"weights must be a weight set name, a file path or None; got {type(weights).__name__}"
        )
    text = os.fspath(weights)
    if text.strip().lower() == "none":
        return WeightsChoice(None)
    if text in spec.weights:
        return WeightsChoice(text)
    if os.path.exists(os.path.expanduser(text)):  # a file whose name holds '=' is still a file
        return WeightsChoice(None, str(check_weights_file(text)))
    name, sep, path = text.partition("=")
    if sep and name and _looks_like_set_name(name):
        if name not in spec.weights:
            raise _unknown_set(spec, name)
        if not path.strip():
            raise WeightsError(
                f"'{text}' names no file; pass '{name}=PATH' with the file holding the {name} weights",
                cli=f"--weights {text} names no file; pass --weights {name}=PATH",
            )
        return WeightsChoice(name, str(check_weights_file(path)))
    if _looks_like_set_name(text):
        raise _unknown_set(spec, text)
    return WeightsChoice(None, str(check_weights_file(text)))


# The file served to Keras' get_file in place of a named set's download, for the duration of a
# `weights_served` block (what the public API does for "SET=PATH").
_SERVED: contextvars.ContextVar[WeightsChoice | None] = contextvars.ContextVar(
    "kjax_served_weights", default=None)


@contextlib.contextmanager
def weights_served(choice: WeightsChoice) -> Iterator[None]:
    """While active, a build of ``choice.set`` hands ``choice.file`` to Keras instead of
    downloading: lets a caller translate with ``weights=choice.set`` (so that the Flax graph is
    the set's) from the user's file."""
    token = _SERVED.set(choice if choice.set and choice.file else None)
    try:
        yield
    finally:
        _SERVED.reset(token)


class _Probe(Exception):
    """Raised by the intercepted get_file to stop a build once Keras has named its file."""


@contextlib.contextmanager
def _intercept_get_file(record: list[dict[str, Any]], serve: str | None = None,
                        probe: bool = False) -> Iterator[None]:
    """Note each file Keras' get_file is asked for (name, URL, expected hash, cache folder) and the
    path it returned; with ``serve``, return that file instead of downloading; with ``probe``,
    stop the build at the first request (:class:`_Probe`)."""
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

        def intercepted(fname=None, origin=None, *args, _original=original, _module=module_name, **kwargs):
            request = {"fname": fname, "origin": origin, "module": _module, "path": None,
                       "file_hash": kwargs.get("file_hash") or kwargs.get("md5_hash"),
                       "cache_subdir": kwargs.get("cache_subdir", "datasets"),
                       "cache_dir": kwargs.get("cache_dir")}
            record.append(request)
            if probe:
                raise _Probe()
            path = serve if serve is not None else _original(fname, origin, *args, **kwargs)
            request["path"] = str(path)
            return path

        setattr(module, attribute, intercepted)
        patched.append((module, attribute, original))
    try:
        yield
    finally:
        for module, attribute, original in patched:
            setattr(module, attribute, original)


def keras_cache_path(request: dict[str, Any]) -> str:
    """Where Keras' get_file looks for (and stores) the file of ``request``: Keras 3 under
    KERAS_HOME or ~/.keras, tf_keras under ~/.keras, each falling back to /tmp/.keras when that
    is not writable, then ``cache_subdir``."""
    base = request.get("cache_dir")
    if base is None:
        if request["module"].startswith("keras."):
            base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        else:
            base = os.path.join(os.path.expanduser("~"), ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):  # as get_file decides
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, request.get("cache_subdir") or "datasets", request["fname"])


def file_matches_hash(path: str, expected: str) -> bool:
    """Keras' rule for its published hashes: 64 hex digits are a sha256, anything else an md5."""
    digest = hashlib.sha256() if len(expected) == 64 else hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected.lower()


def keras_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options the Keras constructor takes: all but kjax's own (``features_only``)."""
    return {key: value for key, value in options.items() if key not in KJAX_OPTIONS}


def published_file(
    spec: ModelSpec, options: dict[str, Any], weight_set: str,
    input_shape: tuple[int, int, int] | None = None,
) -> dict[str, Any] | None:
    """The file Keras fetches for ``weight_set`` with these options (name, URL, expected hash),
    found by building the Keras model up to its download request; None where Keras refuses the
    options or asks for nothing."""
    prepare_environment(translation_backend(spec))
    constructor = spec.load(spec.keras_constructor)
    kwargs = {**keras_options(options), "weights": weight_set}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    record: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()), numpy_initializers(), \
            _intercept_get_file(record, probe=True):
        try:
            constructor(**kwargs)
        except _Probe:
            return record[-1]
        except Exception:
            return None
    return None


def recognise_weights_file(
    spec: ModelSpec, options: dict[str, Any], choice: WeightsChoice,
    input_shape: tuple[int, int, int] | None = None,
) -> WeightsChoice:
    """A plain file given for a model whose graph depends on the named set (EfficientNet rescales
    its input once more for imagenet weights): when it is the file Keras publishes for such a
    set (its hash is Keras' own), it is that set; otherwise a warning says which graph is built
    and how to name the set. Imports Keras; other models and choices pass through untouched."""
    if choice.set or not choice.file or not spec.weights_options:
        return choice
    dependent = [name for name in spec.weights_options if name in spec.weights]
    for name in dependent:
        published = published_file(spec, options, name, input_shape)
        if published and published.get("file_hash") and file_matches_hash(choice.file, published["file_hash"]):
            return WeightsChoice(name, choice.file, recognised=True)
    if dependent:
        name = dependent[0]
        differs = ", ".join(f"{k}={v!r}" for k, v in spec.weights_options[name].items())
        warnings.warn(
            f"{choice.file} is not the file Keras publishes for the {name} weights of {spec.name} "
            f"with these options, so it is read into the graph Keras builds without named weights "
            f"(unlike the {name} graph: {differs}); if it holds {name} weights, name the set: "
            f"{name}={choice.file}",
            UserWarning, stacklevel=2,
        )
    return choice


def build_keras_model(
    spec: ModelSpec,
    options: dict[str, Any],
    weights: Any = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
) -> KerasReference:
    """Call the spec's Keras constructor. Keras' printing goes to stderr, keeping stdout for data.

    :param weights: a named weight set of the spec (``"imagenet"``), a file path, ``"SET=PATH"``,
        None, or a :class:`WeightsChoice` (see :func:`resolve_weights`).
    """
    prepare_environment()
    choice = resolve_weights(spec, weights)
    served = _SERVED.get()
    if choice.set and not choice.file and served is not None and served.set == choice.set:
        choice = served
    constructor = spec.load(spec.keras_constructor)
    kwargs = keras_options(options)
    kwargs["weights"] = choice.set
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    serve = choice.file if choice.set else None
    requests: list[dict[str, Any]] = []
    # Keras prints (download notices, progress bars) to stdout, which is for data here; the
    # progress display says what is happening instead.
    keras_says = io.StringIO()
    with contextlib.redirect_stdout(keras_says), _intercept_get_file(requests, serve), _socket_timeout():
        try:
            model = constructor(**kwargs)
        except Exception as error:
            fetched = [r for r in requests if r["path"]]
            if fetched and serve:
                raise WeightsError(
                    f"Keras could not load {serve} as the {choice.set} weights of {spec.name}: "
                    f"{_first_line(error)}; check that the file holds them, for these options"
                ) from None
            if fetched:  # the file arrived (or was cached) but Keras could not load it
                raise WeightsError(
                    f"Keras could not load the {choice.set} weights file {fetched[-1]['path']}: "
                    f"{_first_line(error)}; delete it to download it again"
                ) from None
            if choice.set and (requests or _is_download_failure(error)):
                raise _download_error(spec, choice.set, requests, error) from None
            raise OptionError(f"Keras refused the options for {spec.name}: {_first_line(error)}") from None
        if choice.file and not choice.set:
            try:
                with warnings.catch_warnings():
                    # Keras 3 warns for each of its internal "_operations_by_depth" containers,
                    # which hold no weights; other warnings still reach the user.
                    warnings.filterwarnings("ignore", message=".*_operations_by_depth.*")
                    model.load_weights(choice.file)
            except Exception as error:
                raise WeightsError(
                    f"{choice.file} does not fit {spec.name} with these options: {_keras_reason(error)}; "
                    "check the model name and options the file was saved with "
                    "(include_top, classes, family options)",
                    cli=f"{choice.file} does not fit {spec.name} with these options: "
                    f"{_keras_reason(error)}; check the model name and options the file was saved "
                    "with (--include-top, --classes, --set)",
                ) from None
            _check_every_array_used(choice.file, model, spec)
    fetched = [r["path"] for r in requests if r["path"]]
    return KerasReference(model, choice.set or choice.file, fetched[-1] if fetched else choice.file)


def _download_error(spec: ModelSpec, weight_set: str, requests: list[dict[str, Any]],
                    error: BaseException) -> WeightsError:
    """Keras could not fetch a named set: say which file, from where, and where to put it."""
    # Keras says "URL fetch failure on URL: code -- reason"; keep the reason.
    reason = _first_line(error).rpartition(" -- ")[2]
    head = f"could not download the {weight_set} weights of {spec.name} ({reason})"
    if not requests:
        return WeightsError(
            f"{head}; download the file where there is a network and pass weights='{weight_set}=PATH'",
            cli=f"{head}; download the file where there is a network and pass --weights {weight_set}=PATH",
        )
    request = requests[-1]
    where = (f": Keras asked for {request['fname']} from {request['origin']}; download it where "
             f"there is a network and put it at {keras_cache_path(request)}")
    return WeightsError(
        f"{head}{where}, or pass weights='{weight_set}=PATH'",
        cli=f"{head}{where}, or pass --weights {weight_set}=PATH",
    )


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
        message = (f"{path} holds {len(arrays)} weight arrays but {spec.name} with these options "
                   f"uses {len(wanted)}; unused: {shown}; check the options the file was saved with")
        raise WeightsError(f"{message} (include_top, classes, family options), or drop_top=True "
                           f"to leave out a with-top file's top",
                           cli=f"{message} (--include-top, --classes, --set), or --drop-top to "
                           f"leave out a with-top file's top")


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
