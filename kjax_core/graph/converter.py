"""``kjax convert``: any Keras model file (a ``.keras`` archive or a full-model HDF5 file, saved by
Keras 3 or by tf_keras) to a Flax module running its graph (:class:`kjax_core.graph.KerasGraph`)
with its weights translated by the layer rules, strictly (every Keras weight used once, every Flax
leaf filled once)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

from ..errors import CorruptFileError, UnsupportedModelError
from .describe import describe

HOW_TO_ADD = "a plugin adds one with the kjax_register_layer_ops hook (README: 'Converting any Keras model')"
# Image models whose input size Keras leaves open are traced at this size to find the variables'
# shapes (they do not depend on it).
TRACE_SIZE = 224


def application_layers() -> dict[str, Any]:
    """The helper layer classes of Keras Applications, which Keras' loader does not find by
    itself in a saved model (they are not registered as serializable): Keras' own code."""
    from keras.src.applications import convnext, inception_resnet_v2

    return {"LayerScale": convnext.LayerScale, "StochasticDepth": convnext.StochasticDepth,
            "CustomScaleLayer": inception_resnet_v2.CustomScaleLayer}


def check_model_file(path: str | Path) -> Path:
    """A readable file that can hold a whole Keras model, or one line saying what it is instead."""
    file = Path(path).expanduser()
    if not file.exists():
        raise CorruptFileError(f"model file not found: {path}")
    if not file.is_file():
        raise CorruptFileError(f"not a file: {path}")
    name = file.name.lower()
    if name.endswith(".weights.h5") or name.endswith(".weights.json"):
        raise CorruptFileError(
            f"{path} is a weights file (no model in it): convert needs a whole model saved with "
            "model.save('m.keras'); for a Keras Applications model's weights use "
            "kjax translate MODEL --weights FILE")
    if name.endswith(".keras"):
        if not zipfile.is_zipfile(file):
            raise CorruptFileError(f"{path} is not a Keras archive (not a zip file: damaged or "
                                   "truncated?)")
    elif name.endswith((".h5", ".hdf5")):
        with open(file, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                raise CorruptFileError(f"{path} is not an HDF5 file (damaged or truncated?)")
    else:
        raise CorruptFileError(f"{path}: expected a .keras archive or a full-model .h5 file")
    return file


def saved_model_config(file: Path) -> tuple[dict[str, Any], int]:
    """The serialized model in a checked model file and the major version of the Keras that saved
    it (2: tf_keras, 3: Keras 3), read without building anything, or one line saying why not."""
    import h5py

    try:
        if file.name.lower().endswith(".keras"):
            with zipfile.ZipFile(file) as archive:
                config = json.loads(archive.read("config.json"))
                version = json.loads(archive.read("metadata.json")).get("keras_version", "")
        else:
            with h5py.File(file, "r") as h5:
                text = h5.attrs.get("model_config")
                version = h5.attrs.get("keras_version", "")
                if text is None:
                    raise CorruptFileError(
                        f"{file} holds weights only (no model in it): convert needs a whole model "
                        "saved with model.save('m.keras'); for a Keras Applications model's "
                        "weights use kjax translate MODEL --weights FILE")
                config = json.loads(text)
    except CorruptFileError:
        raise
    except Exception as error:  # a damaged archive or HDF5 file, missing members, bad JSON
        raise CorruptFileError(f"cannot read the Keras model in {file}: "
                               f"{' '.join(str(error).split())[:200]}") from None
    version = version.decode() if isinstance(version, bytes) else str(version)
    return config, (2 if version.startswith("2.") else 3)


def _refuse_code(file: Path, config: Any) -> None:
    """Refuse a model whose config holds Python code (a Lambda layer) before anything is built:
    Keras' safe mode covers .keras archives, but tf_keras runs a legacy HDF5 file's Lambda code
    whatever ``safe_mode`` says."""
    found = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("class_name") == "Lambda":
                found.append((value.get("config") or {}).get("name", "?"))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(config)
    if found:
        raise UnsupportedModelError(
            f"{file} holds a Lambda layer ('{found[0]}': Python code in the file): kjax reads "
            "models with Keras' safe mode and never runs code from a file; rewrite the Lambda as "
            f"a layer class, for which {HOW_TO_ADD}")


def load_keras_model(path: str | Path) -> Any:
    """The Keras model in ``path``, read with Keras' safe mode (no code from the file runs: a
    Lambda layer is refused), by tf_keras when tf_keras (Keras 2) saved it, or one line saying
    why not."""
    file = check_model_file(path)
    config, major = saved_model_config(file)
    _refuse_code(file, config)
    from ..conversion.keras_model import (
        import_keras_quietly, numpy_initializers, placeholder_initializers,
    )

    import_keras_quietly("jax", tf_keras=major == 2)
    try:
        # Keras builds the model, drawing initial weights the file then replaces: drawn by numpy
        # on JAX (Keras compiles a random initializer per weight shape: 15 of MobileNetV3Small's
        # 20 s), zeros on TensorFlow.
        with numpy_initializers(), placeholder_initializers():
            if major == 2:
                import tf_keras

                model = tf_keras.models.load_model(file, compile=False, safe_mode=True)
            else:
                import keras

                model = keras.saving.load_model(file, compile=False, safe_mode=True,
                                                custom_objects=application_layers())
    except Exception as error:  # Keras raises many kinds; each becomes one line
        raise _load_error(file, error) from None
    if not hasattr(model, "layers"):
        raise UnsupportedModelError(f"{path} holds a {type(model).__name__}, not a Keras model")
    return model


def _load_error(file: Path, error: Exception) -> Exception:
    text = " ".join(str(error).split())
    if "safe_mode" in text:
        return UnsupportedModelError(
            f"{file} holds a Lambda layer (Python code in the file): kjax reads models with "
            "Keras' safe mode and never runs code from a file; rewrite the Lambda as a layer "
            f"class, for which {HOW_TO_ADD}")
    if "Could not locate" in text or "Unknown layer" in text or "custom" in text.lower():
        import re

        found = (re.search(r"Could not locate class '([^']+)'", text)
                 or re.search(r"Unknown layer:? '?([\w>.]+)", text))
        name = found.group(1) if found else None
        what = f"the custom class {name}" if name else "a custom class"
        return UnsupportedModelError(
            f"{file} uses {what}, which Keras cannot build without its code; import it (or pass "
            "it to keras.saving.load_model as a custom object) and convert the loaded model with "
            f"kjax_core.convert_keras_model, and a Flax op for it: {HOW_TO_ADD}")
    return CorruptFileError(f"cannot read the Keras model in {file}: {text[:300]}")


def convert(path: str | Path) -> Any:
    """:func:`convert_keras_model` of the model saved in ``path`` (see :func:`load_keras_model`)."""
    model = load_keras_model(path)
    return convert_keras_model(model, source=str(Path(path).expanduser()))


def graph_paths(description: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """``{Keras layer name: Flax module path}``: a layer's submodule is named as the layer, a
    nested model's layers sit under the nested model's name."""
    paths = {}
    for name, entry in description["layers"].items():
        if "graph" in entry:
            paths.update(graph_paths(entry["graph"], (*prefix, name)))
        else:
            paths[name] = (*prefix, name)
    return paths


def convert_keras_model(model: Any, *, source: str | None = None,
                        progress: Callable[[str], None] | None = None) -> Any:
    """A :class:`kjax_core.conversion.translate.Translation` of any Keras 3 or tf_keras
    Sequential or functional model: its module a :class:`~kjax_core.graph.KerasGraph` of the
    model's graph, its variables the model's weights through the layer rules. Fails with one line naming the first
    layers without an op or a rule, or the weights that do not fit."""
    from ..conversion.assembly import assemble
    from ..conversion.flax_side import trace_flax
    from ..conversion.keras_layers import convert_keras_layers
    from ..conversion.keras_model import KerasReference
    from ..conversion.translate import Translation
    from ..plugin_system.registry import registry
    from ..plugin_system.types import ModelSpec
    from .module import KerasGraph, missing_ops

    description = describe(model)
    reg = registry()
    missing = missing_ops(description, reg.ops)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UnsupportedModelError(f"no Flax op for layer {', '.join(missing[:3])}{more}: "
                                    f"{HOW_TO_ADD}")
    if len(description["inputs"]) != 1:
        raise UnsupportedModelError(f"model '{model.name}' has {len(description['inputs'])} "
                                    "inputs; kjax convert takes models with one input for now")
    shape = description["inputs"][0]["shape"][1:]
    if len(shape) == 3:
        shape = [TRACE_SIZE if d is None else d for d in shape[:2]] + shape[2:]
    if any(d is None for d in shape):
        raise UnsupportedModelError(f"model '{model.name}' leaves its input shape {shape} open "
                                    "beyond height and width")
    module = KerasGraph(json.dumps(description))
    layers = convert_keras_layers(model, reg.rules, progress)
    target, _ = trace_flax(module, shape)
    variables = assemble(model.name, layers, target, graph_paths(description))
    spec = ModelSpec(name=model.name, family="converted", keras_constructor="",
                     flax_module="kjax_core.graph:KerasGraph", input_size=tuple(shape),
                     weights=(), plugin="kjax")
    reference = KerasReference(model, source, source)
    return Translation(spec, {}, tuple(shape), module, variables, reference, graph=description)


__all__ = ["check_model_file", "convert", "convert_keras_model", "graph_paths", "load_keras_model",
           "saved_model_config"]
