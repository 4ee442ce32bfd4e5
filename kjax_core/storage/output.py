"""Writing and reading kjax output directories.

An output directory holds:
    config.json       model name, options, input shape, preprocessing, weights source, versions;
    variables.msgpack the variable tree (flax.serialization), or variables.safetensors, or
                      variables.orbax/, an Orbax PyTree checkpoint (a directory of files);
    manifest.json     sha256 and size of each file (each file inside variables.orbax/ too), the
                      sha256 of the source weights file and the package versions; checked by
                      :func:`verify` and :func:`load`.

Writing is atomic: everything goes into a temporary directory beside the destination, which is
moved into place only when complete; an existing output is replaced only with ``force``, by an
atomic exchange of the two directories, so a run killed at any moment (SIGKILL included) leaves the
old output or the new one, never a partial one. Staging directories of killed runs are removed by
the next save into the same folder. An Orbax checkpoint is written inside the staging directory like
the other formats: its atomicity at the destination is kjax's staging and rename, not Orbax's own
finalize (which only renames Orbax's temporary folder within the staging directory).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..errors import CorruptFileError, OutputError, WeightsError

FORMAT_VERSION = 1
CONFIG = "config.json"
MANIFEST = "manifest.json"
VARIABLE_FILES = {"msgpack": "variables.msgpack", "safetensors": "variables.safetensors",
                  "orbax": "variables.orbax"}
# Formats whose variables are a directory of files (each file is in the manifest, by its path).
DIRECTORY_FORMATS = {"orbax"}
CONFIG_KEYS = ("kjax_format", "model", "options", "input_shape", "format", "variables_file")


def versions() -> dict[str, str]:
    """Versions of the packages that shape an output."""
    found = {}
    for dist in ("kjax", "keras", "tf_keras", "tensorflow", "jax", "flax"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_output(path: Path) -> bool:
    """Is ``path`` a kjax output: nothing but an output's files, with a kjax config and manifest?"""
    names = {p.name for p in path.iterdir()}
    if not ({CONFIG, MANIFEST} <= names <= {CONFIG, MANIFEST, *VARIABLE_FILES.values()}):
        return False
    try:
        config = json.loads((path / CONFIG).read_text())
        manifest = json.loads((path / MANIFEST).read_text())
        return "kjax_format" in config and isinstance(manifest.get("files"), dict)
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def check_destination(out: str | os.PathLike, force: bool = False) -> Path:
    """Fail early, before any work, if ``out`` cannot receive an output: the nearest existing
    folder is tried by creating (and removing) an empty staging folder in it, so a place that
    refuses new entries (``/proc``, a read-only mount) is found now, not after the translation."""
    out = Path(os.path.abspath(os.path.expanduser(out)))  # lexically: `new/..` is the folder it names
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"output path {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            if not force:
                raise OutputError(
                    f"output directory {out} exists and is not empty; pass force=True to replace it",
                    cli=f"output directory {out} exists and is not empty; pass --force to replace it",
                )
            if not is_output(out):
                # force replaces a kjax output, never an arbitrary folder (`-o .` must not wipe it).
                raise OutputError(
                    f"{out} is not empty and is not a kjax output; force=True only replaces kjax outputs",
                    cli=f"{out} is not empty and is not a kjax output; --force only replaces kjax outputs",
                )
        for ancestor in out.parents:
            if ancestor.exists():
                if not ancestor.is_dir():
                    raise OutputError(f"cannot create {out}: {ancestor} is a file")
                if not os.access(ancestor, os.W_OK | os.X_OK):
                    raise OutputError(f"cannot write to {ancestor}: permission denied")
                _probe(ancestor, out)
                break
    except OSError as error:
        raise OutputError(f"cannot use {out} for output: {error.strerror or error}") from None
    return out


def _probe(folder: Path, out: Path) -> None:
    """Create and remove an empty folder in ``folder`` (named as staging folders are, so one left
    by a killed run is removed by the next save there)."""
    try:
        probe = tempfile.mkdtemp(prefix=_staging_prefix(), dir=folder)
    except OSError as error:
        raise OutputError(
            f"cannot create {out}: {folder} does not take new folders ({error.strerror or error})"
        ) from None
    os.rmdir(probe)


def _output_files(directory: Path, variables_file: str) -> list[str]:
    """The names of an output's variable files relative to ``directory``: the file itself, or
    every file inside a directory format's folder (``variables.orbax/d/...``)."""
    root = directory / variables_file
    if not root.is_dir():
        return [variables_file]
    return sorted(path.relative_to(directory).as_posix() for path in root.rglob("*") if path.is_file())


def _write_variables(directory: Path, variables: dict[str, Any], fmt: str,
                     written: Callable[[], None] | None = None) -> str:
    filename = VARIABLE_FILES[fmt]
    if fmt == "orbax":
        import jax
        import numpy as np
        import orbax.checkpoint as ocp

        # Host arrays: no device sharding is recorded, so any machine restores the checkpoint.
        host = jax.tree_util.tree_map(np.asarray, variables)
        with ocp.PyTreeCheckpointer() as checkpointer:  # synchronous: complete when save returns
            checkpointer.save(directory / filename, host)
        for _ in jax.tree_util.tree_leaves(host) if written else ():
            written()
    elif fmt == "msgpack":
        from .msgpack_stream import write_msgpack

        # Flax's msgpack bytes, written one array at a time (msgpack_serialize holds the whole
        # file plus copies: +540 MB for EfficientNetB7).
        with open(directory / filename, "wb") as handle:
            write_msgpack(variables, handle, written)
    else:
        import numpy as np
        from flax import traverse_util
        from safetensors.numpy import save_file

        tensors = {name: np.ascontiguousarray(v)
                   for name, v in traverse_util.flatten_dict(variables, sep="/").items()}
        save_file(tensors, str(directory / filename), metadata={"format": "kjax"})
        for _ in tensors if written else ():
            written()
    return filename


def _read_variables(path: Path, fmt: str) -> dict[str, Any]:
    try:
        if fmt == "orbax":
            import orbax.checkpoint as ocp

            try:
                with ocp.PyTreeCheckpointer() as checkpointer:
                    return checkpointer.restore(path.absolute())  # numpy arrays, as they were saved
            except Exception:
                _quiet_reads_left_in_flight()
                raise
        if fmt == "msgpack":
            from flax import serialization

            return serialization.msgpack_restore(path.read_bytes())
        from flax import traverse_util
        from safetensors.numpy import load_file

        return traverse_util.unflatten_dict(load_file(str(path)), sep="/")
    except Exception as error:
        # Orbax and tensorstore errors run over many lines: the first says what failed.
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CorruptFileError(f"cannot read {path}: {reason}") from None


def _quiet_reads_left_in_flight() -> None:
    """After a failed Orbax restore, the reads still in flight finish later, on the event loop
    Orbax has closed, and tensorstore reports each as an unraisable RuntimeError: tracebacks on
    stderr, from other threads, after the one-line error. Drop exactly those; anything else
    still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "kjax_orbax_filter", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (unraisable.object is None and isinstance(error, RuntimeError)
                and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.kjax_orbax_filter = True
    sys.unraisablehook = hook


def save(
    translation, out: str | os.PathLike, *, fmt: str = "msgpack", force: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Path:
    """Write ``translation`` (a :class:`kjax_core.conversion.translate.Translation`) to the directory ``out``.

    :param progress: ``progress("write", done, total)``, called as arrays are written (the last
        step: checksums, flushing to disk and the move into place).
    """
    if fmt not in VARIABLE_FILES:
        raise OutputError(f"unknown format {fmt!r}; choose one of {', '.join(VARIABLE_FILES)}")
    out = check_destination(out, force)
    spec, reference = translation.spec, translation.reference
    weights_file = reference.weights_file
    config = {
        "kjax_format": FORMAT_VERSION,
        "model": spec.name,
        "family": spec.family,
        "plugin": spec.plugin,
        "options": translation.options,
        "input_shape": list(translation.input_shape),
        "preprocessing": spec.preprocessing,
        "weights": reference.weights,
        # What the variables are: translated from the weights, or (after fine-tuning) what
        # Translation.with_variables said; the top layers drop_top left out of the weights.
        # (getattr: a translation-like object of a caller, as the tests build, may lack both)
        "variables": getattr(translation, "variables_note", None) or "translated",
        "dropped": {name: {k: list(v) for k, v in shapes.items()}
                    for name, shapes in getattr(translation, "dropped", {}).items()},
        "format": fmt,
        # a converted model's graph (kjax convert): load() rebuilds its module from it
        **({"graph": translation.graph} if getattr(translation, "graph", None) else {}),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    umask = os.umask(0)
    os.umask(umask)
    staging = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Beside the destination (same file system, so the final move is atomic), with a short
        # name: the destination's own name may already be as long as names can be.
        _remove_stale_staging(out.parent)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(), dir=out.parent))
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the output should not be
        total, done = _count_leaves(translation.variables) + 1, 0

        def written() -> None:
            nonlocal done
            done += 1
            if progress:
                progress("write", done, total)

        if progress:
            progress("write", 0, total)
        variables_file = _write_variables(staging, translation.variables, fmt, written)
        config["variables_file"] = variables_file
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        files = [CONFIG, *_output_files(staging, variables_file)]
        manifest = {
            "files": {
                name: {"sha256": sha256_file(staging / name), "size": (staging / name).stat().st_size}
                for name in files
            },
            "versions": config["versions"],
            "source_weights": (
                {"path": weights_file, "sha256": sha256_file(weights_file)} if weights_file else None
            ),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in (*files, MANIFEST):
            os.chmod(staging / name, 0o666 & ~umask)
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        _move_into_place(staging, out)
        if progress:
            progress("write", total, total)
    except OSError as error:
        raise OutputError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _count_leaves(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_count_leaves(value) for value in tree.values())
    return 1


def _move_into_place(staging: Path, out: Path) -> None:
    """Put the complete staging directory at ``out`` in one atomic step: a rename when ``out`` is
    free, an atomic exchange of the two directories when it holds a previous output (the previous
    output then sits in ``staging`` and is deleted by the caller). A process killed at any moment
    leaves either the old output or the new one at ``out``, never a mix or nothing."""
    if not out.exists():
        os.replace(staging, out)
        return
    if _exchange(staging, out):
        return
    # No atomic exchange on this system (not Linux, or a file system without it): set the old
    # output aside, move the new one in, put the old one back if that fails.
    old = Path(tempfile.mkdtemp(prefix=_staging_prefix("old"), dir=out.parent))
    try:
        os.replace(out, old / "previous")
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old / "previous", out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# Staging names carry the writer's pid, so a later save can tell (and remove) what a killed run left.
_STAGING = re.compile(r"^\.kjax-(partial|old)-(\d+)-")


def _staging_prefix(kind: str = "partial") -> str:
    return f".kjax-{kind}-{os.getpid()}-"


def _remove_stale_staging(parent: Path) -> None:
    """Delete staging directories in ``parent`` left by kjax runs that were killed."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _STAGING.match(entry.name)
        # A ".kjax-old-*" folder may hold the only copy of a replaced output (a kill between the
        # fallback's two renames); it is left for the user, never deleted.
        if not match or match.group(1) != "partial" or not entry.is_dir() or int(match.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:  # its writer is gone
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check an output directory against its manifest; return its config."""
    path = Path(path).expanduser()
    if not path.is_dir() or not (path / CONFIG).is_file():
        raise CorruptFileError(
            f"{path} is not a kjax output directory (no {CONFIG}); pass a folder written by `kjax translate`"
        )
    if not (path / MANIFEST).is_file():
        raise CorruptFileError(f"{path} has no {MANIFEST}; translate it again")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        config = json.loads((path / CONFIG).read_text())
    except PermissionError as error:
        raise CorruptFileError(f"cannot read {error.filename}: permission denied; check its permissions") from None
    except (OSError, ValueError) as error:
        raise CorruptFileError(f"cannot read {path}: {MANIFEST} or {CONFIG} is malformed ({error!r})") from None
    try:
        files = manifest["files"]
        listed = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
        missing_keys = [key for key in CONFIG_KEYS if key not in config]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CorruptFileError(f"cannot read {path}: {MANIFEST} or {CONFIG} is malformed ({error!r})") from None
    if missing_keys:
        raise CorruptFileError(f"{path / CONFIG} lacks {', '.join(missing_keys)}; translate again")
    shape = config["input_shape"]
    if not (isinstance(config["model"], str) and isinstance(config["options"], dict)
            and isinstance(shape, list) and (len(shape) == 3 or "graph" in config)
            and all(isinstance(d, int) for d in shape)
            and isinstance(config["format"], str)
            and VARIABLE_FILES.get(config["format"]) == config["variables_file"]
            and (config.get("weights") is None or isinstance(config["weights"], str))):
        raise CorruptFileError(f"{path / CONFIG} is malformed; translate again")
    variables_file = config["variables_file"]
    if config["format"] in DIRECTORY_FORMATS:
        # Every file of the folder is listed, and nothing else is in it (an added file could
        # change what the reader finds as much as a changed one).
        folder = path / variables_file
        inside = {name for name in listed if name.startswith(variables_file + "/")}
        if not folder.is_dir():
            raise CorruptFileError(f"{folder} is missing; translate the model again")
        unlisted = sorted(set(_output_files(path, variables_file)) - inside)
        if unlisted:
            raise CorruptFileError(
                f"{path / unlisted[0]} is not in {MANIFEST} (added or left over); translate again")
        covered = CONFIG in listed and bool(inside)
    else:
        covered = CONFIG in listed and variables_file in listed
    if not covered:
        raise CorruptFileError(f"{path / MANIFEST} does not cover the output's files; translate again")
    for name, (size, digest) in listed.items():
        file = path / name
        if not file.is_file():
            raise CorruptFileError(f"{file} is missing; translate the model again")
        try:
            changed = file.stat().st_size != size or sha256_file(file) != digest
        except OSError as error:
            raise CorruptFileError(
                f"cannot read {file}: {(error.strerror or str(error)).lower()}; check its permissions"
            ) from None
        if changed:
            raise CorruptFileError(f"{file} was changed or damaged (checksum mismatch); translate again")
    return config


def load(path: str | os.PathLike, *, nnx: bool = False, rngs: Any = 0):
    """``(module, variables)`` from an output directory, checked against its manifest and against
    the module's own variable shapes. ``module.apply(variables, images)`` gives the Keras output.

    With ``nnx=True``: one Flax NNX module holding the variables instead (see
    :func:`kjax_core.nnx.to_nnx`; ``rngs`` are its dropout streams)."""
    import jax
    import jax.numpy as jnp

    from flax import traverse_util

    from ..conversion.flax_side import flax_target
    from ..conversion.translate import create_model

    path = Path(path).expanduser()
    config = verify(path)
    if config.get("kjax_format") != FORMAT_VERSION:
        raise CorruptFileError(f"{path} has kjax format {config.get('kjax_format')}, expected {FORMAT_VERSION}")
    if "graph" in config:  # kjax convert: the module runs the recorded Keras graph
        from ..graph.module import KerasGraph

        module = KerasGraph(json.dumps(config["graph"]), **config["options"])
    else:
        module = create_model(config["model"], weights=config.get("weights"), **config["options"])
    stored = _read_variables(path / config["variables_file"], config["format"])
    target = flax_target(module, config["input_shape"])
    expected = traverse_util.flatten_dict(target)
    got = traverse_util.flatten_dict(stored)
    missing = sorted("/".join(p) for p in expected.keys() - got.keys())
    extra = sorted("/".join(p) for p in got.keys() - expected.keys())
    shapes = sorted(
        "/".join(p) for p in expected.keys() & got.keys() if tuple(expected[p].shape) != tuple(got[p].shape)
    )
    if missing or extra or shapes:
        raise WeightsError(
            f"{path} does not fit {config['model']}: missing {missing[:5]}, unexpected {extra[:5]}, "
            f"mis-shaped {shapes[:5]}"
        )
    variables = jax.tree_util.tree_map(jnp.asarray, stored)
    if nnx:
        from ..nnx import to_nnx

        return to_nnx(module, variables, rngs=rngs, input_shape=config["input_shape"])
    return module, variables

