"""Every code block of the README runs: the `kjax` command lines of its bash blocks (the ones the
Python blocks build on for real, the others up to the translation, so that every model, option and
weight set they name is checked), then its Python blocks, in order, in one working folder, with
Keras' imagenet downloads served from local files as the other tests do."""

import re
import shlex
from pathlib import Path

import kjax_core
from kjax_core import get_spec
from kjax_core.conversion.keras_model import build_keras_model

from helpers import run_cli, save_legacy_h5

README = Path(__file__).resolve().parent.parent / "README.md"
# Run whole: what the Python blocks read afterwards (out/ and the cache entry of resnet50).
RUN_FOR_REAL = {"kjax predict resnet50 cat.jpg", "kjax translate resnet50 -o out/"}


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def command_lines():
    """The `kjax ...` commands of the bash blocks (comments dropped, `a && b` split)."""
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["kjax"]:
                    yield words


class Checked(kjax_core.KjaxError):
    """Raised where the translation would start: everything before it passed."""


def _imagenet_file(folder, fname, **options):
    spec = get_spec("resnet50")
    model = build_keras_model(spec, {**spec.default_options(), **options}, None).model
    return save_legacy_h5(model, folder / fname)


def test_readme_code_blocks_run(tmp_path, serve_weights, monkeypatch, capsys):
    from PIL import Image
    import numpy as np

    import kjax_core.cache

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KJAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(tmp_path / "cat.jpg")
    weights = tmp_path / "keras-files"
    weights.mkdir()
    for fname, options in [("resnet50_weights_tf_dim_ordering_tf_kernels.h5", {}),
                           ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", {"include_top": False})]:
        serve_weights[fname] = _imagenet_file(weights, fname, **options)

    lines = list(command_lines())
    assert {" ".join(words) for words in lines} >= RUN_FOR_REAL
    translate_for_real = kjax_core.cache._translate_choice
    for words in lines:
        checked = []

        def stop(spec, options, shape, choice, *args, **kwargs):
            checked.append((spec.name, options, choice))
            raise Checked("checked")

        real = " ".join(words) in RUN_FOR_REAL
        monkeypatch.setattr(kjax_core.cache, "_translate_choice", translate_for_real if real else stop)
        code, out, err = run_cli(words[1:], capsys)
        if real:
            assert code == 0, (words, err)
        else:
            assert (code, err, len(checked)) == (1, "error: checked\n", 1), (words, err)
    monkeypatch.setattr(kjax_core.cache, "_translate_choice", translate_for_real)

    python = blocks("python")
    assert len(python) >= 3
    for number, block in enumerate(python):
        namespace = {"__name__": f"readme_block_{number}"}
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        # Plugin examples define hooks: call them as the registry would.
        for name in ("kjax_register_models", "kjax_register_layer_rules"):
            if name in namespace:
                registered = []
                namespace[name](registered.append)
                assert registered, name
    printed = capsys.readouterr().out
    assert "[[('n" in printed  # decode_predictions' answer
    assert (tmp_path / "resnet50-features" / "manifest.json").is_file()

