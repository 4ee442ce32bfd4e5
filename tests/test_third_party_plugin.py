"""A third-party plugin, installed as a user would install one, is served like a built-in family:
listed, translated, loaded, with parity, and its layer rule and name matching are used."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kjax_core
from kjax_core.plugin_system import registry as plugins
from kjax_core.parity import assert_parity, reference_model, relative_error, sample_images

from helpers import run_cli

PACKAGE = Path(__file__).parent / "plugin_example"


def _pip(*args):
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="module")
def tinynet(tmp_path_factory):
    build = tmp_path_factory.mktemp("build")
    _pip("install", "--no-deps", "--no-build-isolation", "--no-cache-dir", str(PACKAGE),
         "--target", str(build))
    # Installed into a directory of its own that joins the path, as site-packages does: the
    # entry point is found through its dist-info, exactly as for any installed distribution.
    sys.path.insert(0, str(build))
    plugins.reset()
    yield build
    sys.path.remove(str(build))
    for name in [m for m in sys.modules if m.startswith("kjax_tinynet")]:
        del sys.modules[name]
    plugins.reset()


def test_listed_by_the_cli(tinynet, capsys):
    code, out, err = run_cli(["list", "tiny*"], capsys)
    assert code == 0 and "tinynet" in out and err == ""
    code, out, err = run_cli(["plugins"], capsys)
    assert "tinynet" in out and "kjax-tinynet" in out and "register_layer_rules" in out


def test_listed_in_a_fresh_process(tinynet):
    env_path = f"{tinynet}"
    result = subprocess.run(
        [sys.executable, "-c", "from kjax_core.cli import main; main(['list', '--json'])"],
        capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": env_path},
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "tinynet"' in result.stdout and '"plugin": "tinynet"' in result.stdout


def test_parity(tinynet):
    assert_parity("tinynet", classifier_activation=None, input_shape=(37, 29, 3))
    assert_parity("tinynet", include_top=False, sizes=[(33, 21), (64, 64)])
    assert_parity("tinynet", include_top=False, pooling="max", width=5, sizes=[(17, 30)])


def test_auto_names_are_matched_by_order_whatever_the_counter(tinynet):
    """Keras' automatic names change with the per-process layer counter; matching must not care."""
    import keras

    for _ in range(3):  # advance the counters of every layer class TinyNet uses
        for make in (lambda: keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization,
                     lambda: keras.layers.DepthwiseConv2D(3), lambda: keras.layers.Dense(1)):
            make()
    (report,) = assert_parity("tinynet", input_shape=(32, 32, 3), classifier_activation=None)
    translation, _ = reference_model("tinynet", input_shape=(32, 32, 3), prepare=False)
    assert set(translation.variables["params"]) == {
        "stem", "stem_bn", "spatial", "spatial_bn", "gain", "expand", "classifier"}


def test_translate_and_load(tinynet, tmp_path, capsys):
    _, keras_model = reference_model("tinynet", include_top=True, classifier_activation=None)
    weights = tmp_path / "tiny.weights.h5"
    keras_model.save_weights(weights)
    code, out, err = run_cli(
        ["translate", "tinynet", "-o", tmp_path / "out", "-w", weights,
         "--classifier-activation", "none"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    x = sample_images((3, 40, 52, 3), 9)
    assert relative_error(module.apply(variables, x), keras_model(x)) < 1e-5
    # This model has no named weight set: the default --weights imagenet says so.
    code, out, err = run_cli(["translate", "tinynet", "-o", tmp_path / "o2"], capsys)
    assert code == 1 and "no weight set 'imagenet'" in err


def test_convert_runs_the_plugins_layer_op(tinynet, tmp_path, capsys):
    """`kjax convert` of a saved TinyNet runs its custom ChannelScale with the op the plugin
    registers (kjax_register_layer_ops) and translates its weights with the plugin's rule."""
    from kjax_core.parity import compare

    _, keras_model = reference_model("tinynet", input_shape=(37, 29, 3), classifier_activation=None)
    keras_model.save(tmp_path / "tiny.keras")
    code, out, err = run_cli(["convert", tmp_path / "tiny.keras", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    assert any("channel_scale" in name for name in variables["params"])
    converted = kjax_core.convert(tmp_path / "tiny.keras").with_variables(variables, "loaded")
    report = compare(converted, keras_model, sample_images((2, 37, 29, 3), 4))
    assert report.ok, report.problems
