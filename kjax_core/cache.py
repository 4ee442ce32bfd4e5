"""Pretrained models translated once: ``pretrained(name)`` translates on the first call into a cache
and loads from it afterwards, without importing TensorFlow or Keras.

The cache is ``$KJAX_CACHE``, else ``$XDG_CACHE_HOME/kjax``, else ``~/.cache/kjax``. Each entry is
an ordinary kjax output (config, variables, manifest; written atomically by
:func:`kjax_core.storage.output.save` and checked by :func:`~kjax_core.storage.output.load`) at
``<cache>/<model>/<key>``, where the key is a digest of the model, its options and input shape,
the weights (named set; the sha256 of a weights file; for a named set downloaded by Keras, the
version of the Keras that fetches and checks it) and the kjax version. A process holds a lock on
the entry while it translates, so processes asking at once translate once and leave one complete
entry; where locks are unavailable, the atomic move into place still leaves one.

This module also holds the path every public translation takes from a ``weights`` argument to a
translation (:func:`translate_weights`): checks first, then the Keras build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from .conversion.keras_model import WeightsChoice, resolve_weights
from .conversion.options import check_drop_top, check_input_shape, check_options
from .errors import CorruptFileError, OutputError, WeightsError
from .plugin_system.registry import get_spec
from .plugin_system.types import ModelSpec
from .version import __version__

CACHE_ENV = "KJAX_CACHE"
_ENTRY = re.compile(r"^[0-9a-f]{16}$")

Progress = Callable[[str, int, "int | None"], None]


def cache_dir() -> Path:
    """Where pretrained translations are kept."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "kjax"


# ------------------------------------------------------------------------------ compiled programs

COMPILATION_CACHE_ENV = "KJAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")


def compilation_cache_dir() -> Path | None:
    """Where the predictor keeps XLA's compiled programs (JAX's persistent compilation cache), so
    that a second process running the same model at the same shape compiles nothing:
    ``$KJAX_COMPILATION_CACHE``, else ``<cache>/xla`` beside the pretrained translations; None
    when ``KJAX_COMPILATION_CACHE`` is ``0``/``off``."""
    chosen = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if chosen.lower() in _OFF:
        return None
    return Path(chosen).expanduser() if chosen else cache_dir() / "xla"


def use_compilation_cache() -> Path | None:
    """Turn JAX's persistent compilation cache on in :func:`compilation_cache_dir`, unless it is
    off or the user already gave JAX a folder (``jax_compilation_cache_dir``,
    ``JAX_COMPILATION_CACHE_DIR``), which is kept. Returns the folder in use, if any.

    JAX's setting is for the whole process: every later compilation that takes over JAX's
    threshold (``jax_persistent_cache_min_compile_time_secs``, 1 s by default) is kept there too.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = compilation_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # an unwritable cache costs compile time, never a failure
        warnings.warn(f"kjax: no compilation cache ({folder}: {error.strerror})", RuntimeWarning,
                      stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder


def _compiled_files() -> list[Path]:
    """The files JAX's persistent cache wrote in kjax's folder (``<name>-<key>-cache`` and its
    ``-atime``), nothing else."""
    folder = compilation_cache_dir()
    if folder is None or not folder.is_dir():
        return []
    return [f for f in folder.iterdir()
            if f.is_file() and re.fullmatch(r".+-[0-9a-f]{16,}-(cache|atime)", f.name)]


def compiled_programs() -> tuple[int, int]:
    """How many compiled programs kjax's folder keeps, and their bytes."""
    programs = [f for f in _compiled_files() if f.name.endswith("-cache")]
    return len(programs), sum(f.stat().st_size for f in programs)


def clear_compiled() -> int:
    """Delete the compiled programs kept in kjax's folder; returns how many."""
    files = _compiled_files()
    for file in files:
        file.unlink(missing_ok=True)
    return sum(1 for f in files if f.name.endswith("-cache"))


# ------------------------------------------------------------------------------ translating


def prepare(
    name: str, weights: Any, options: dict[str, Any], input_shape: Any = None
) -> tuple[ModelSpec, dict[str, Any], tuple[int, int, int] | None, WeightsChoice]:
    """The cheap checks of a translation, none importing Keras: the model, its options, the input
    shape and the weights (an unknown set or a missing file fails here, within a second)."""
    spec = get_spec(name)
    options = check_options(spec, options)
    shape = None if input_shape is None else check_input_shape(spec, input_shape)
    return spec, options, shape, resolve_weights(spec, weights)


def translate_weights(
    name: str, weights: Any = "imagenet", *, input_shape: Any = None,
    progress: Progress | None = None, keras_model: Any = None, drop_top: bool = False,
    **options: Any,
):
    """:func:`kjax_core.conversion.translate.translate` for any ``weights`` argument: None or
    ``"none"``, a named set, a file path, or ``"SET=PATH"`` (the file holding the set SET: built
    and loaded as Keras does for SET). A plain file given to a model whose graph depends on the
    set is recognised by Keras' published hash (:func:`recognise_weights_file`)."""
    spec, checked, shape, choice = prepare(name, weights, options, input_shape)
    if drop_top:
        check_drop_top(checked, choice.argument is not None or keras_model is not None)
    return _translate_choice(spec, checked, shape, choice, progress, keras_model, drop_top)


def _translate_choice(spec, options, shape, choice, progress=None, keras_model=None,
                      drop_top=False):
    from .conversion.keras_model import recognise_weights_file, weights_served
    from .conversion.translate import translate

    if keras_model is None:
        if progress:
            progress("build", 0, None)
        built_with = check_drop_top(options, True) if drop_top else options
        choice = recognise_weights_file(spec, built_with, choice, shape)
    with weights_served(choice):
        return translate(spec.name, choice.argument, input_shape=shape, progress=progress,
                         keras_model=keras_model, drop_top=drop_top, **options)


# ---------------------------------------------------------------------------------- the cache


def cache_key(
    spec: ModelSpec, options: dict[str, Any], input_shape: tuple[int, int, int] | None,
    choice: WeightsChoice,
) -> tuple[str, dict[str, Any]]:
    """(entry name, what it is derived from) for one request."""
    from .storage.output import sha256_file

    engine = "tf_keras" if spec.keras_constructor.startswith("tf_keras") else "keras"
    try:
        engine_version = metadata.version(engine)
    except metadata.PackageNotFoundError:
        engine_version = None
    facts = {
        "model": spec.name,
        "options": options,
        "input_shape": list(input_shape) if input_shape else None,
        "weights": choice.set,
        # A file is known by its content. A named set downloaded by Keras is the file Keras
        # publishes and checks by hash, which can only change with the Keras version.
        "source_sha256": sha256_file(choice.file) if choice.file else None,
        "keras": engine_version if choice.set and not choice.file else None,
        "kjax": __version__,
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:16], facts


def cache_entry(
    spec: ModelSpec, options: dict[str, Any], input_shape: tuple[int, int, int] | None,
    choice: WeightsChoice,
) -> Path:
    """The folder of the cache entry for a checked request (which may not exist yet)."""
    if choice.set is None and choice.file is None:
        raise WeightsError(
            f"pretrained() keeps translations of pretrained weights; for {spec.name} with random "
            f"initial weights use kjax_core.translate('{spec.name}', None) or create_model(...).init",
            cli="kjax predict needs trained weights; pass --weights with a weight set or a file",
        )
    return cache_dir() / spec.name / cache_key(spec, options, input_shape, choice)[0]


def cached_entry(spec, options, input_shape, choice) -> Path | None:
    """The entry's folder when it is complete (not checked further), else None."""
    entry = cache_entry(spec, options, input_shape, choice)
    return entry if (entry / "manifest.json").is_file() else None


def pretrained(
    name: str, weights: Any = "imagenet", *, input_shape: Any = None,
    progress: Progress | None = None, **options: Any,
):
    """``(module, variables)`` of ``name`` with ``weights``, translated on the first call into the
    cache (:func:`cache_dir`) and loaded from it afterwards (no TensorFlow or Keras import then).

    :param weights: a named weight set (``"imagenet"``), a weights file path, or ``"SET=PATH"``.
    :param options: Keras' option names (``include_top``, ``pooling``, family options...).
    :param progress: ``progress(event, done, total)`` while translating ("build", "layer", "write").
    """
    spec, checked, shape, choice = prepare(name, weights, options, input_shape)
    entry = cache_entry(spec, checked, shape, choice)
    found = _load_entry(entry)
    if found is not None:
        return found
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the kjax cache {entry.parent}: {(error.strerror or str(error)).lower()}; "
            f"set {CACHE_ENV} to a writable folder"
        ) from None
    with _locked(entry):
        found = _load_entry(entry)  # another process may have written it while this one waited
        if found is not None:
            return found
        translation = _translate_choice(spec, checked, shape, choice, progress)
        from .storage.output import save

        try:
            save(translation, entry, progress=progress)
        except OutputError:
            # Without a lock (file systems without flock) another process may have won the move.
            found = _load_entry(entry)
            if found is None:
                raise
            return found
    import jax
    import jax.numpy as jnp

    return translation.module, jax.tree_util.tree_map(jnp.asarray, translation.variables)


def _load_entry(entry: Path):
    """The entry's (module, variables), None when there is none; a damaged entry is removed (with
    a warning) so that it is translated again."""
    if not (entry / "manifest.json").is_file():
        return None
    from .storage.output import load

    try:
        return load(entry)
    except (CorruptFileError, WeightsError) as error:
        warnings.warn(f"the cached translation {entry} is damaged ({error}); translating again",
                      UserWarning, stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None


@contextlib.contextmanager
def _locked(entry: Path) -> Iterator[None]:
    """An exclusive lock on one cache entry (flock on a file beside it); a no-op where flock
    is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic move alone keeps the entry whole
        yield
        return
    with open(entry.parent / f".{entry.name}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cache_entries(model: str | None = None) -> list[dict[str, Any]]:
    """The cached translations (optionally of one model): model, weights, options that differ
    from the defaults, input shape, size, source sha256, creation time and path. Reads JSON only."""
    root = cache_dir()
    rows = []
    folders = [root / model] if model else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if not (_ENTRY.match(entry.name) and entry.is_dir()):
                continue
            try:
                config = json.loads((entry / "config.json").read_text())
                manifest = json.loads((entry / "manifest.json").read_text())
                size = sum(f.stat().st_size for f in entry.iterdir())
            except (OSError, ValueError):
                continue
            source = manifest.get("source_weights") or {}
            rows.append({
                "model": config.get("model", folder.name),
                "weights": config.get("weights"),
                "options": _changed_options(config),
                "input_shape": config.get("input_shape"),
                "size": size,
                "source_sha256": source.get("sha256"),
                "created": config.get("created"),
                "path": str(entry),
            })
    return rows


def _changed_options(config: dict[str, Any]) -> dict[str, Any]:
    options = dict(config.get("options") or {})
    try:
        defaults = get_spec(config["model"]).default_options()
    except Exception:  # a model no installed plugin provides any more: show every option
        return options
    return {k: v for k, v in options.items() if defaults.get(k, object()) != v}


def clear_cache(model: str | None = None) -> list[str]:
    """Delete the cached translations (of one model, or all); returns the entries removed. Only
    what the cache writes is deleted (entries, their locks, staging folders of killed writes), so
    a ``KJAX_CACHE`` pointing at a folder with other things in it loses nothing else."""
    root = cache_dir()
    if not root.is_dir():
        return []
    removed = []
    folders = [root / model] if model else [p for p in root.iterdir() if p.is_dir()]
    for folder in folders:
        if not folder.is_dir():
            continue
        for item in list(folder.iterdir()):
            if _ENTRY.match(item.name) and item.is_dir():
                shutil.rmtree(item)
                removed.append(str(item))
            elif item.name.startswith(".kjax-partial-") and item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            elif item.name.startswith(".") and item.name.endswith(".lock") and _ENTRY.match(item.name[1:-5]):
                item.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it
    return removed
