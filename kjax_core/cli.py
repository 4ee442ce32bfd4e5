"""The ``kjax`` command line.

Data goes to stdout, diagnostics and progress to stderr. Every error is one line and a non-zero exit:
2 for a usage error (unknown model, bad option), 1 for other failures, 130 when interrupted.
Importing this module imports neither TensorFlow, Keras, JAX nor Flax; commands that need them import
them when they run.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import KjaxError, OptionError
from .conversion.options import parse_value

app = typer.Typer(
    name="kjax",
    help="Keras Applications models in Flax, with their pretrained weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# markup=False: user text (paths, patterns) is printed as is, never read as rich markup.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

def _version_callback(value: bool) -> None:
    if value:
        from .version import __version__

        out.print(f"kjax {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Keras Applications models in Flax, with their pretrained weights."""


# ----------------------------------------------------------------------------- shared option parsing

WeightsOption = typer.Option(
    "imagenet", "--weights", "-w",
    help="imagenet or another weight set of the model (Keras' download and cache), none (random "
    "initial weights), a weights file PATH, or SET=PATH: a file holding the set SET (e.g. "
    "imagenet=~/Downloads/efficientnetb0.h5), built and loaded as Keras does for SET.",
)
IncludeTop = typer.Option(True, "--include-top/--no-include-top", help="Keep the classifier.")
Pooling = typer.Option("none", "--pooling", help="Without top: none, avg or max global pooling.")
Classes = typer.Option(None, "--classes", help="Number of classes of the classifier.")
Activation = typer.Option(
    "softmax", "--classifier-activation", help="softmax, or none for logits."
)
InputShape = typer.Option(None, "--input-shape", help="H,W,C of the Keras input (default: Keras').")
SetOption = typer.Option(
    None, "--set", metavar="KEY=VALUE", help="Any other constructor option, e.g. --set alpha=0.35."
)


def _none_word(value: Optional[str]) -> Optional[str]:
    return None if value is None or value.strip().lower() in ("none", "null", "") else value


def _options(
    include_top: bool, pooling: str, classes: Optional[int], activation: str, extra: list[str] | None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "include_top": include_top,
        "pooling": _none_word(pooling),
        "classifier_activation": _none_word(activation),
    }
    if classes is not None:
        options["classes"] = classes
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--set takes KEY=VALUE; got {item!r}")
        options[key.strip()] = parse_value(value)
    return options


def _input_shape(text: Optional[str]) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise OptionError(f"--input-shape takes H,W,C (e.g. 224,224,3); got {text!r}") from None


def _request(
    model: str, include_top: bool, pooling: str, classes: Optional[int], activation: str,
    extra: list[str] | None, input_shape: Optional[str],
):
    """(spec, checked options, input shape or None) from the options translate and verify share."""
    from .conversion.options import check_input_shape, check_options
    from .plugin_system.registry import get_spec

    spec = get_spec(model)
    options = check_options(spec, _options(include_top, pooling, classes, activation, extra))
    if options["include_top"] and options["pooling"] is not None:
        err.print("note: --pooling is ignored with the top kept (as in Keras); add --no-include-top")
    shape = _input_shape(input_shape)
    return spec, options, shape if shape is None else check_input_shape(spec, shape)


def _classifier_problem(options: dict[str, Any]) -> str | None:
    """Why a model's top cannot give ImageNet class probabilities, or None when it can."""
    if not options.get("include_top", True):
        return "include_top=False"
    if options.get("classes", 1000) != 1000:
        return f"classes={options['classes']}"
    if options.get("classifier_activation", "softmax") != "softmax":
        return f"classifier_activation={options['classifier_activation']!r}"
    return None


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n else "?"


# ---------------------------------------------------------------------------------------- commands


@app.command("list")
def list_command(
    pattern: Optional[str] = typer.Argument(None, help="Shell wildcard, e.g. 'resnet*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the available models."""
    from .plugin_system.registry import list_models, registry

    reg = registry()
    specs = [reg.models[name] for name in list_models(pattern)]
    # A name two plugins claim is listed once, with every claimant, so the list still helps.
    owners = {s.name: ", ".join(reg.conflicts.get(s.name, [s.plugin])) for s in specs}
    if as_json:
        rows = [
            {
                "name": s.name, "family": s.family, "parameters": s.parameters,
                "input_size": list(s.input_size), "preprocessing": s.preprocessing,
                "options": s.default_options(), "weights": list(s.weights), "plugin": owners[s.name],
                "conflict": s.name in reg.conflicts,
            }
            for s in specs
        ]
        out.print_json(json.dumps(rows))
        return
    if not specs:
        err.print(f"error: no model matches {pattern!r}; run `kjax list` to see all")
        raise typer.Exit(1)
    rows = [
        {"name": s.name, "family": s.family, "params": _count(s.parameters),
         "input": "x".join(map(str, s.input_size)), "preprocessing": s.preprocessing,
         "plugin": owners[s.name] + (" (conflict)" if s.name in reg.conflicts else "")}
        for s in specs
    ]
    # On a narrow terminal (or COLUMNS) whole columns are left out, least useful first, rather
    # than cutting or folding values: the name is what users type next. Piped, rows stay whole.
    columns = ["name", "family", "params", "input", "preprocessing", "plugin"]
    width = {c: max(len(c), *(len(row[c]) for row in rows)) + 2 for c in columns}
    fit = out.is_terminal or bool(os.environ.get("COLUMNS"))
    for dropped in ("plugin", "preprocessing", "input", "family"):
        if not fit or sum(width[c] for c in columns) <= out.width:
            break
        columns.remove(dropped)
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column == "params" else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(row[c]) for c in columns))
    if fit:
        out.print(table)
    else:
        Console(highlight=False, markup=False, width=sum(width[c] for c in columns)).print(table)


@app.command()
def info(
    model: str = typer.Argument(..., help="Model name (see `kjax list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show one model: its Keras reference, options and defaults, weight sets, preprocessing."""
    from .plugin_system.registry import get_spec

    spec = get_spec(model)
    sets = _weight_sets(spec)
    facts = {
        "name": spec.name, "family": spec.family, "plugin": spec.plugin,
        "keras": spec.keras_constructor.replace(":", "."), "parameters": spec.parameters,
        "input_size": list(spec.input_size), "min_input_size": spec.min_input_size,
        "preprocessing": spec.preprocessing, "options": spec.default_options(),
        "weights": [*spec.weights, "none", "PATH"], "weight_sets": sets,
    }
    if as_json:
        out.print_json(json.dumps(facts))
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    shown = {
        **facts,
        "parameters": f"{spec.parameters:,}",
        "input_size": "x".join(map(str, spec.input_size))
        + f" (default; at least {spec.min_input_size}x{spec.min_input_size})",
        "preprocessing": f"{spec.preprocessing} (kjax_core.preprocess_input('{spec.name}', images))",
        "options": ", ".join(f"{k}={v!r}" for k, v in facts["options"].items()),
        "weights": "\n".join(f"{name}: {text}" for name, text in sets.items()),
    }
    del shown["min_input_size"], shown["weight_sets"]
    for key, value in shown.items():
        table.add_row(Text(key.replace("_", " ")), Text(str(value)))
    out.print(table)


def _weight_sets(spec) -> dict[str, str]:
    """What each value of --weights means for ``spec``, named sets first."""
    import re

    sized = {w: int(m.group(1)) for w in spec.weights if (m := re.fullmatch(r".+-i(\d+)", w))}
    sets = {}
    for name in spec.weights:
        if name in sized:
            text = f"ImageNet weights trained at {sized[name]}x{sized[name]}"
        elif name == "imagenet" and sized:
            # tf_keras' ResNet-RS rule (the only family with sized sets): bare imagenet is the
            # set trained at the largest size.
            largest = max(sized, key=sized.get)
            text = f"the same as {largest} (the largest training size, as Keras picks it)"
        elif name == "imagenet" and name in spec.weights_notes:
            text = (f"Keras' ImageNet weights, downloaded once into ~/.keras/models/, for "
                    f"{spec.weights_notes[name]}")
        elif name == "imagenet":
            text = ("Keras' ImageNet weights, downloaded once into ~/.keras/models/; Keras has them "
                    "for some option values only and says which when asked for others")
        else:
            text = "a weight set Keras downloads"
        graph = spec.weights_options.get(name)
        if graph:
            changes = ", ".join(f"{k}={v!r}" for k, v in graph.items())
            text += f"; Keras builds another graph for it ({changes}), so a file of it is given as {name}=PATH"
        sets[name] = text
    sets["none"] = "Keras' random initial weights (no download)"
    sets["PATH"] = "a Keras weights file for this model and options (.h5, .weights.h5, .keras)"
    if spec.weights:
        sets["SET=PATH"] = (f"a file holding a named set, built and loaded as Keras does for that set "
                            f"(e.g. {spec.weights[0]}=~/Downloads/weights.h5)")
    return sets


@app.command()
def translate(
    model: str = typer.Argument(..., help="Model name (see `kjax list`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory."),
    weights: str = WeightsOption,
    include_top: bool = IncludeTop,
    pooling: str = Pooling,
    classes: Optional[int] = Classes,
    classifier_activation: str = Activation,
    input_shape: Optional[str] = InputShape,
    set_: Optional[list[str]] = SetOption,
    fmt: str = typer.Option("msgpack", "--format", help="msgpack (flax.serialization), safetensors, or "
                            "orbax (an Orbax checkpoint folder)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    drop_top: bool = typer.Option(
        False, "--drop-top", help="With --no-include-top: the weights are a model's with top "
        "(a with-top file, or imagenet taken with top); leave its top layers out, named in the "
        "output (e.g. a backbone for a new head)."),
) -> None:
    """Translate a model's Keras weights into a Flax variable tree in OUTPUT."""
    from .conversion.keras_model import resolve_weights
    from .conversion.options import check_drop_top
    from .storage.output import VARIABLE_FILES, check_destination

    # Everything that can be checked without Keras is checked first (each within a second).
    spec, options, shape = _request(
        model, include_top, pooling, classes, classifier_activation, set_, input_shape
    )
    choice = resolve_weights(spec, weights)
    if drop_top:
        try:
            check_drop_top(options, choice.argument is not None)
        except OptionError as error:
            raise OptionError(str(error).replace("include_top=False", "--no-include-top")
                              .replace("pass the weights", "pass --weights")) from None
    if fmt not in VARIABLE_FILES:
        raise OptionError(f"--format must be one of {', '.join(VARIABLE_FILES)}; got {fmt!r}")
    check_destination(output, force)

    from .conversion.keras_model import import_keras_quietly, translation_backend
    from .cache import _translate_choice
    from .storage.output import save

    # Keras 3 models are built on Keras' JAX backend unless KERAS_BACKEND says otherwise: no
    # TensorFlow import, less time and memory, the same weights (kjax verify stays on TensorFlow).
    import_keras_quietly(translation_backend(spec))

    with _progress() as progress:
        translation = _translate_choice(spec, options, shape, choice, progress, drop_top=drop_top)
        path = save(translation, output, fmt=fmt, force=force, progress=progress)
    leaves = sum(1 for _ in _leaves(translation.variables))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # an Orbax folder's files too
    reference = translation.reference
    if reference.weights is None:
        label = "none (random initial weights)"
    elif reference.weights in spec.weights and choice.file:
        label = f"{reference.weights} (from {choice.file})"
    else:
        label = reference.weights
    out.print(f"{path}  {spec.name}  {leaves} arrays  {size / 1e6:.1f} MB  weights={label}")
    for name, shapes in translation.dropped.items():
        described = ", ".join(f"{k.split('/')[-1]} {'x'.join(map(str, v))}" for k, v in shapes.items())
        err.print(f"dropped (--drop-top): {name} ({described})")
    shown = _shell_word(str(path))
    step = f"kjax predict {shown} IMAGE, or " if _classifier_problem(options) is None else ""
    err.print(f"next: {step}kjax_core.load({str(path)!r}) in Python")


@app.command()
def convert(
    model_file: Path = typer.Argument(..., help="A Keras model saved whole by Keras 3 or tf_keras: "
                                      "a .keras archive (model.save('m.keras')) or a full-model "
                                      ".h5 file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory."),
    fmt: str = typer.Option("msgpack", "--format", help="msgpack (flax.serialization), safetensors, or "
                            "orbax (an Orbax checkpoint folder)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
) -> None:
    """Convert any Keras model (Sequential or functional, nested models, shared layers) into a Flax
    module running its graph, with its weights, in OUTPUT (load it with kjax_core.load)."""
    from .graph.converter import check_model_file, convert as convert_file
    from .storage.output import VARIABLE_FILES, check_destination, save

    if fmt not in VARIABLE_FILES:
        raise OptionError(f"--format must be one of {', '.join(VARIABLE_FILES)}; got {fmt!r}")
    check_model_file(model_file)
    check_destination(output, force)
    with _progress() as progress:
        progress("read", 0, None)
        translation = convert_file(model_file)
        path = save(translation, output, fmt=fmt, force=force, progress=progress)
    leaves = sum(1 for _ in _leaves(translation.variables))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    layers = len(translation.graph["layers"])
    out.print(f"{path}  {translation.spec.name}  {layers} layers  {leaves} arrays  "
              f"{size / 1e6:.1f} MB  from {model_file}")
    err.print(f"next: kjax_core.load({str(path)!r}) in Python")


@app.command()
def verify(
    model: str = typer.Argument(..., help="Model name (see `kjax list`)."),
    weights: str = typer.Option(
        "random", "--weights", "-w",
        help="random (randomised, BatchNorm statistics calibrated), imagenet, none or a PATH.",
    ),
    include_top: bool = IncludeTop,
    pooling: str = Pooling,
    classes: Optional[int] = Classes,
    classifier_activation: str = typer.Option(
        "none", "--classifier-activation", help="none (compare logits, default) or softmax."
    ),
    input_shape: Optional[str] = InputShape,
    set_: Optional[list[str]] = SetOption,
    batch: int = typer.Option(2, "--batch", min=2, help="Images in the random batch."),
    tolerance: float = typer.Option(
        1e-9, "--tolerance", min=0.0,
        help="Largest relative L2 error accepted for kjax in float64 against Keras in float64.",
    ),
    float32_factor: float = typer.Option(
        2.0, "--float32-factor", min=0.0,
        help="kjax in float32 may be this many times as far from Keras float64 as Keras float32.",
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Seed of the random weights (with --weights random) and of the random batch."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Run Keras and the translated Flax model on one random batch and judge them in float64.

    Keras (TensorFlow) is built a second time in float64 with the same weights: kjax in float64
    must equal it within --tolerance, and kjax in float32 must be no further from it than
    --float32-factor times Keras' own float32 model."""
    for name, value in (("--tolerance", tolerance), ("--float32-factor", float32_factor)):
        if value != value:
            raise OptionError(f"{name} must be a number, not nan")
    spec, options, shape = _request(
        model, include_top, pooling, classes, classifier_activation, set_, input_shape
    )
    import contextlib

    from .conversion.keras_model import resolve_weights, weights_served

    randomised = weights.strip().lower() == "random"
    # An unknown set or a missing file fails here, before Keras loads.
    choice = None if randomised else resolve_weights(spec, weights)
    from . import parity
    from .conversion.keras_model import import_keras_quietly

    import_keras_quietly()
    # SET=PATH: both Keras builds (and the Flax graph) are those of SET, reading PATH.
    served = weights_served(choice) if choice else contextlib.nullcontext()
    with _progress() as progress, served:
        progress("build", 0, None)
        translation, keras_model = parity.reference_model(
            spec.name, input_shape=shape, seed=seed, prepare=randomised,
            weights=None if randomised else choice.argument, **options,
        )
        images = parity.sample_images((batch, *translation.input_shape), seed + 7)
        report = parity.compare(translation, keras_model, images, tolerance=tolerance,
                                float32_factor=float32_factor)
    # Parity decides the exit code; a test too weak to prove itself (e.g. on Keras' initial
    # weights, where BatchNorm is the identity) is reported, since it is the weights' doing.
    matches64 = report.error64 <= tolerance
    matches32 = report.error32 <= report.float32_limit
    if as_json:
        fields = ("model", "input_shape", "error64", "max_abs_error64", "error32", "keras_error32",
                  "sensitivity", "broken", "broken_error", "tolerance", "float32_factor")
        out.print_json(json.dumps({
            "weights": weights, "matches": report.matches, "conclusive": report.conclusive,
            **{f: getattr(report, f) for f in fields}, "problems": report.problems,
        }))
    else:
        table = Table(box=None, header_style="bold")
        for column in ("model", "input", "f64 err", "f32 err", "Keras f32", "img diff", "broken", "ok"):
            table.add_column(column, no_wrap=True)
        table.add_row(*map(Text, (
            spec.name, "x".join(map(str, report.input_shape)),
            f"{report.error64:.2e}", f"{report.error32:.2e}", f"{report.keras_error32:.2e}",
            f"{report.sensitivity:.2e}", f"{report.broken_error:.2e}",
            "yes" if report.matches else "NO",
        )))
        out.print(table)
    if not matches64:  # NaN fails too
        raise KjaxError(f"{spec.name} differs from Keras in float64: relative error "
                        f"{report.error64:.2e} > {tolerance:g}")
    if not matches32:
        raise KjaxError(f"{spec.name} in float32 is {report.error32:.2e} from Keras float64, more "
                        f"than {float32_factor:g} x Keras' own float32 error {report.keras_error32:.2e}")
    for problem in report.weaknesses:
        err.print(f"note: inconclusive: {problem}")


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Show which plugins loaded, from where, with which hooks; and which failed and why."""
    from .plugin_system.registry import registry

    reg = registry()
    models: dict[str, int] = {}
    for spec in reg.models.values():
        models[spec.plugin] = models.get(spec.plugin, 0) + 1
    rows = [
        {
            "name": p.name, "distribution": f"{p.distribution} {p.version}", "module": p.module,
            "models": models.get(p.name, 0), "hooks": p.hooks,
            "status": "failed: " + p.error if p.error else "loaded",
        }
        for p in reg.plugins
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(box=None, header_style="bold")
    for column in ("plugin", "distribution", "models", "hooks", "status"):
        table.add_column(column)
    for row in rows:
        hooks = ", ".join(h.removeprefix("kjax_") for h in row["hooks"]) or "-"
        table.add_row(*map(Text, (row["name"], row["distribution"], str(row["models"]), hooks,
                                  row["status"])))
    out.print(table)


@app.command()
def check(path: Path = typer.Argument(..., help="An output directory of `kjax translate`.")) -> None:
    """Check an output directory's integrity against its manifest."""
    from .storage.output import verify as verify_output

    config = verify_output(path)
    out.print(f"{path}: ok ({config['model']}, {config['format']}, weights={config.get('weights') or 'none'})")


@app.command()
def predict(
    model: str = typer.Argument(
        ..., metavar="MODEL_OR_OUT",
        help="A model name (its weights are translated once into the kjax cache, see `kjax cache`) "
        "or an output directory of `kjax translate`.",
    ),
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files (JPEG, PNG, ...)."),
    top: int = typer.Option(5, "--top", "-k", min=1, max=1000, help="Classes shown per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    weights: str = typer.Option(
        "imagenet", "--weights", "-w",
        help="With a model name: imagenet or another weight set, a weights file PATH, or SET=PATH.",
    ),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", metavar="KEY=VALUE",
        help="With a model name: a family option, e.g. --set alpha=0.35.",
    ),
) -> None:
    """Classify images with an ImageNet model: the top classes and their probabilities.

    Images are read and resized as keras.utils.load_img(target_size=...) does and preprocessed
    as the model expects."""
    from .preprocessing import apply_mode

    source = Path(model).expanduser()
    if source.is_dir() or os.sep in model:
        from .storage.output import verify as verify_output

        config = verify_output(source)
        name, options = config["model"], config["options"]
        size, preprocessing = config["input_shape"], config.get("preprocessing")
        if preprocessing is None:  # outputs of older kjax: the registry knows
            from .plugin_system.registry import get_spec

            preprocessing = get_spec(name).preprocessing
        cached = True
    else:
        from .cache import cached_entry, prepare

        spec, options, _, choice = prepare(model, weights, _options(True, "none", None, "softmax", set_))
        name, size, preprocessing = spec.name, spec.input_size, spec.preprocessing
        cached = cached_entry(spec, options, None, choice) is not None
    problem = _classifier_problem(options)
    if problem:
        raise OptionError(
            f"{name} has no ImageNet classifier to predict with ({problem}); kjax predict needs "
            "the 1000-class softmax top (include_top=True, classes=1000, classifier_activation=softmax)"
        )
    from .images import load_image

    # The images are read before the model, so that a wrong path fails at once.
    pixels = [load_image(path, target_size=size[:2]) for path in images]

    if source.is_dir() or os.sep in model:
        from .storage.output import load

        module, variables = load(source)
    else:
        from .conversion.keras_model import import_keras_quietly, translation_backend
        from .cache import cache_dir, pretrained

        if not cached:
            err.print(f"translating {name} ({weights}) once into the kjax cache, {cache_dir()}")
            import_keras_quietly(translation_backend(spec))
        with _progress() as progress:
            module, variables = pretrained(name, choice, progress=progress, **options)

    import jax
    import numpy as np

    from .imagenet import decode_predictions

    apply = jax.jit(module.apply)
    results = []
    for start in range(0, len(pixels), 16):  # bounded memory for many images
        batch = apply_mode(preprocessing, np.stack(pixels[start:start + 16]))
        results += decode_predictions(np.asarray(apply(variables, batch)), top=top)
    if as_json:
        out.print_json(json.dumps([
            {"image": str(path), "predictions": [
                {"class": wnid, "label": label, "probability": float(score)}
                for wnid, label, score in found]}
            for path, found in zip(images, results)
        ]))
        return
    table = Table(box=None, header_style="bold")
    for column in ("image", "#", "label", "probability", "class"):
        table.add_column(column, justify="right" if column in ("#", "probability") else "left",
                         no_wrap=column != "image", overflow="fold")
    for path, found in zip(images, results):
        for rank, (wnid, label, score) in enumerate(found, 1):
            table.add_row(*map(Text, (str(path) if rank == 1 else "", str(rank), label,
                                      f"{float(score):.4f}", wnid)))
    out.print(table)


cache_app = typer.Typer(
    help="The kjax cache of pretrained translations ($KJAX_CACHE, default ~/.cache/kjax).",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the cached translations (and how many compiled programs the predictor keeps)."""
    from .cache import cache_dir, cache_entries, compilation_cache_dir, compiled_programs

    rows = cache_entries()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    programs, size = compiled_programs()
    if programs:
        err.print(f"compiled programs: {programs} ({size / 1e6:.1f} MB) in {compilation_cache_dir()}")
    if not rows:
        err.print(f"the kjax cache ({cache_dir()}) holds no translation; `kjax predict MODEL IMAGE` "
                  "fills it")
        return
    table = Table(box=None, header_style="bold")
    for column in ("model", "weights", "options", "size", "created", "path"):
        table.add_column(column, justify="right" if column == "size" else "left",
                         no_wrap=column in ("model", "size"), overflow="fold")
    for row in rows:
        options = ", ".join(f"{k}={v!r}" for k, v in row["options"].items()) or "-"
        table.add_row(*map(Text, (row["model"], str(row["weights"] or "none"), options,
                                  f"{row['size'] / 1e6:.1f} MB", row["created"] or "?", row["path"])))
    out.print(table)


@cache_app.command("clear")
def cache_clear(
    model: Optional[str] = typer.Argument(None, help="Only this model's translations."),
) -> None:
    """Delete cached translations (all, or one model's); all: the compiled programs too."""
    from .cache import cache_dir, clear_cache, clear_compiled

    removed = clear_cache(model)
    what = f" of {model}" if model else ""
    count = None if model else clear_compiled()
    programs = "" if count is None else f" and {count} compiled program{'s' * (count != 1)}"
    err.print(f"removed {len(removed)} cached translation{'s' * (len(removed) != 1)}{what}"
              f"{programs} from {cache_dir()}")


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


# ------------------------------------------------------------------------------------------ helpers


def _leaves(tree: Any):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree).items()


class _progress:
    """A rich progress display on stderr fed by kjax's progress(event, done, total) callback."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=err, transient=True, redirect_stdout=False, disable=not err.is_terminal,
        )
        self._progress.__enter__()
        self._tasks: dict[str, Any] = {}
        return self.update

    def update(self, event: str, done: int, total: int | None) -> None:
        if event not in self._tasks:
            label = {"build": "Building the Keras model (fetching weights if needed)",
                     "read": "Reading the Keras model",
                     "layer": "Translating layers", "write": "Writing"}.get(event, event)
            for task in self._tasks.values():
                self._progress.update(task, completed=1, total=1)
            self._tasks[event] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[event], completed=done, total=total)

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)


def _redeliver_interrupt(unraisable: Any, _default=sys.unraisablehook) -> None:
    """Ctrl-C landing in a finaliser or GC callback (JAX has one) is "ignored" by Python with a
    traceback; deliver it to the main thread again instead, so it stops the command cleanly."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread

        _thread.interrupt_main()
    else:
        _default(unraisable)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (Keras': "weights for input shape (224, 224) will be loaded as the default") reach
    the user as one line, not as a source location and a code excerpt."""
    text = " ".join(str(message).split())
    err.print(f"kjax: warning: {text}", markup=False)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app, turning every failure into one line and an exit code."""
    sys.unraisablehook = _redeliver_interrupt
    warnings.showwarning = _one_line_warning
    try:
        code = app(args=argv, prog_name="kjax", standalone_mode=False)
    except KjaxError as error:
        err.print(f"error: {error.cli_message}", markup=False)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    except typer.TyperException as error:  # usage errors of the (vendored) click parser
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `kjax`: help, not an error
            out.print(error.format_message())
            sys.exit(0)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        ctx = getattr(error, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"error: {message}{hint}", markup=False)
        sys.exit(getattr(error, "exit_code", 2))
    except Exception as error:  # a bug: still one line, with a way to see more
        if os.environ.get("KJAX_DEBUG"):
            raise
        err.print(
            f"internal error: {type(error).__name__}: {error} (set KJAX_DEBUG=1 for a traceback)",
            markup=False,
        )
        sys.exit(3)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
