"""Plugin loading, isolation and the model registry."""

import json
import subprocess
import sys
from importlib import metadata

import pytest

from kjax_core import PluginError, UnknownModelError, get_spec, list_models
from kjax_core.plugin_system import registry as plugins
from kjax_core.nn import ACTIVATIONS
from kjax_core.conversion.options import CLASSIFIER_ACTIVATIONS

from helpers import run_cli


@pytest.fixture
def extra_entry_points(monkeypatch):
    """Add fake entry points of the kjax group next to the installed ones."""
    added = []
    real = metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == plugins.ENTRY_POINT_GROUP:
            found += added
        return found

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    plugins.reset()
    yield lambda name, value: added.append(
        metadata.EntryPoint(name, value, plugins.ENTRY_POINT_GROUP))
    plugins.reset()


def test_list_models_wildcards_and_natural_sort():
    assert list_models("resnet*")[:4] == ["resnet50", "resnet50v2", "resnet101", "resnet101v2"]
    assert list_models("resnet1??") == ["resnet101", "resnet152"]
    assert list_models("RESNET50V2") == ["resnet50v2"]
    assert "resnet152" in list_models("152")
    assert list_models("nothing-like-this*") == []


def test_unknown_model_suggests():
    with pytest.raises(UnknownModelError, match="Did you mean 'resnet50'"):
        get_spec("resnet5O")


def test_a_broken_plugin_is_skipped_and_reported(extra_entry_points, capsys):
    extra_entry_points("broken", "kjax_no_such_module_anywhere")
    extra_entry_points("failing", "fake_plugins:failing")
    assert "resnet50" in list_models()
    assert "halfway" not in list_models(), "a failing plugin registers nothing"
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "ModuleNotFoundError" in err
    assert "plugin 'failing' is skipped: RuntimeError: cannot register today" in err
    code, out, err = run_cli(["plugins", "--json"], capsys)
    status = {row["name"]: row["status"] for row in json.loads(out)}
    assert code == 0 and status["resnet"] == "loaded"
    assert status["broken"].startswith("failed: ModuleNotFoundError")
    assert status["failing"] == "failed: RuntimeError: cannot register today"


@pytest.mark.parametrize(
    "value,message",
    [
        ("fake_plugins:halfbad", "registered a str where a ModelSpec belongs"),
        ("fake_plugins:rulethief", "layer rule for Conv2D is already registered by 'kjax_core'"),
        ("fake_plugins:misspelled", "implements unknown hook kjax_register_model (misspelled?)"),
        ("fake_plugins:twice", "registered model 'twin' twice"),
        ("fake_plugins:wrapper", "implements kjax_match_layers as a wrapper"),
        ("fake_plugins:badmatchername",
         "model 'lucky' names matcher 'by_luck', which is neither a core matcher"),
    ],
)
def test_a_plugin_is_taken_whole_or_not_at_all(extra_entry_points, capsys, value, message):
    extra_entry_points("odd", value)
    reg = plugins.registry()
    info = next(p for p in reg.plugins if p.name == "odd")
    assert message in info.error and message in capsys.readouterr().err
    assert not {"goodname", "typo", "twin", "lucky"} & set(reg.models)
    assert "MyLayer" not in reg.rules and reg.rules["Conv2D"].plugin == "kjax_core"
    assert reg.manager.get_plugin("odd") is None, "none of its hooks may run"
    assert "resnet50" in reg.models


@pytest.mark.parametrize("value,model,message", [
    ("fake_plugins:badmatcher", "badmatch50", "(kjax_match_layers): RuntimeError: matcher bug"),
    ("fake_plugins:oddmatcher", "oddmatch50", "(kjax_match_layers): TypeError"),
    ("fake_plugins:specmatcher", "specmatch50",
     "(matcher fake_plugins:raising_matcher): ValueError: spec matcher bug"),
])
def test_a_failing_matcher_is_named(extra_entry_points, capsys, tmp_path, value, model, message):
    extra_entry_points("badmatch", value)
    code, out, err = run_cli(["translate", model, "-o", tmp_path / "o", "-w", "none"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"plugin 'badmatch' failed to match layers for {model} {message}" in err
    assert not (tmp_path / "o").exists()


def test_a_matching_hook_only_answers_for_its_own_models(extra_entry_points):
    """The core calls a plugin's kjax_match_layers for the models it registered, never for
    another plugin's, even when it does not look at the model name."""
    from kjax_core.conversion.translate import match_layers

    extra_entry_points("greedy", "fake_plugins:greedy")
    reg = plugins.registry()
    greedy = reg.manager.get_plugin("greedy")
    # pluggy's hook over all plugins would ask it about resnet50...
    assert reg.manager.hook.kjax_match_layers(model="resnet50", keras_layers=[], flax_modules=[])
    greedy.calls.clear()
    # ... the core does not: resnet50 gets its spec's matcher (nothing to match here).
    assert match_layers(get_spec("resnet50"), [], []) == {}
    assert greedy.calls == []
    assert match_layers(get_spec("greedy50"), [], []) == {"no such layer": ("nowhere",)}
    assert greedy.calls == ["greedy50"]


def test_a_model_whose_code_is_missing_names_its_plugin(extra_entry_points, capsys, tmp_path):
    extra_entry_points("ghosts", "fake_plugins:missing")
    code, out, err = run_cli(["translate", "ghost", "-o", tmp_path / "o", "-w", "none"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "plugin 'ghosts' gives no_such_module:Ghost for ghost, which cannot be imported" in err


def test_two_plugins_with_one_name(extra_entry_points, capsys, tmp_path):
    extra_entry_points("dup", "fake_plugins:duplicate")
    with pytest.raises(PluginError, match=r"registered by several plugins \(resnet, dup\)"):
        get_spec("resnet50")
    assert get_spec("resnet101").plugin == "resnet"
    code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "o", "-w", "none"], capsys)
    assert code == 1 and "KJAX_DISABLE_PLUGINS" in err
    # The list still works and shows both claimants.
    code, out, err = run_cli(["list", "--json"], capsys)
    row = next(r for r in json.loads(out) if r["name"] == "resnet50")
    assert code == 0 and row["conflict"] and row["plugin"] == "resnet, dup"


def test_environment_selects_plugins(monkeypatch):
    monkeypatch.setenv("KJAX_DISABLE_PLUGINS", "resnet")
    plugins.reset()
    try:
        assert "resnet50" not in list_models() and "resnet50v2" in list_models()
        monkeypatch.delenv("KJAX_DISABLE_PLUGINS")
        monkeypatch.setenv("KJAX_PLUGINS", "resnet")
        plugins.reset()
        assert list_models() == ["resnet50", "resnet101", "resnet152"]
    finally:
        plugins.reset()


# Frameworks, and what would make start-up slow: numpy (~50 ms), pydantic (typer >= 0.29, ~70 ms).
HEAVY = ("tensorflow", "keras", "tf_keras", "jax", "flax", "numpy", "pydantic")


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["--help"], ["plugins"], ["info", "resnet50"]])
def test_light_commands_import_no_framework(args):
    code = (
        "import sys\n"
        "from kjax_core.cli import main\n"
        "assert 'kjax_resnet' not in sys.modules, 'plugins load lazily'\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_classifier_activations_match_the_flax_head():
    assert set(CLASSIFIER_ACTIVATIONS) == set(ACTIVATIONS)
