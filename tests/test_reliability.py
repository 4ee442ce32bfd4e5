"""Nothing lost, nothing half-written: runs killed at any moment, weights that do not fit, Keras
files opened without running their code."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kjax_core.storage.output import verify

from helpers import run_cli

# A child process that saves an output and SIGKILLs itself at the STEP-th file-system event of the
# save (before/after each fsync, rename, exchange and delete), so every moment of the write is hit.
KILL_AT_STEP = textwrap.dedent("""
    import os, shutil, signal, sys
    from types import SimpleNamespace
    from flax import serialization
    import kjax_core.storage.output as kio
    from kjax_core import get_spec

    source, out, step, force, fmt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
    events = 0

    def event():
        global events
        events += 1
        if events == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def watched(function):
        def wrapper(*args, **kwargs):
            event()
            result = function(*args, **kwargs)
            event()
            return result
        return wrapper

    os.fsync = watched(os.fsync)
    os.replace = watched(os.replace)
    shutil.rmtree = watched(shutil.rmtree)
    kio._exchange = watched(kio._exchange)
    kio._write_variables = watched(kio._write_variables)

    config = kio.verify(source)
    variables = serialization.msgpack_restore(open(os.path.join(source, config["variables_file"]), "rb").read())
    translation = SimpleNamespace(
        spec=get_spec(config["model"]), options=config["options"], input_shape=config["input_shape"],
        variables=variables, reference=SimpleNamespace(weights=None, weights_file=None))
    kio.save(translation, out, force=force, fmt=fmt)
    print("EVENTS", events)
""")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A real output (resnet50 without top at a small size) to write again and again."""
    from kjax_core.conversion import translate as api
    from kjax_core.storage import output as io

    path = tmp_path_factory.mktemp("source") / "resnet50"
    io.save(api.translate("resnet50", None, include_top=False, input_shape=(64, 64, 3)), path)
    return path


def _save_and_kill(source, out, step, force, fmt="msgpack"):
    script = Path(source).parent / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    return subprocess.run(
        [sys.executable, str(script), str(source), str(out), str(step), "1" if force else "0", fmt],
        capture_output=True, text=True, timeout=120,
    )


def _staging_left(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".kjax-"))


@pytest.mark.parametrize("force", [False, True], ids=["new", "replace"])
def test_killed_at_every_step_of_the_write(tmp_path, source, force):
    """SIGKILL at each step of the save: the destination holds nothing (new output) or the old
    output (replacing one), or the complete new one; never a partial directory."""
    # The old output is a safetensors one, the new one msgpack, so each is recognisable.
    old = tmp_path / "old"
    probe = _save_and_kill(source, old, 0, False, "safetensors")
    assert probe.returncode == 0, probe.stderr
    steps = int(probe.stdout.split()[-1])
    assert steps >= 10  # write, fsync x3, rename or exchange, delete: each with a before and an after
    out, seen = tmp_path / "out", set()
    for step in range(1, steps + 3):
        if force:
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(old, out)
        result = _save_and_kill(source, out, step, force)
        assert result.returncode in (0, -signal.SIGKILL), result.stderr
        if not out.exists():
            assert not force, f"step {step}: the old output is gone"
            seen.add("nothing")
        else:
            # Complete: every file present and matching the manifest; old or new, never a mix.
            files = verify(out)["variables_file"]
            seen.add("old" if files.endswith("safetensors") else "new")
    assert seen == ({"old", "new"} if force else {"nothing", "new"})
    # What the killed runs left beside the output is removed by the next save there.
    assert _save_and_kill(source, tmp_path / "last", 0, False).returncode == 0
    assert _staging_left(tmp_path) == []


def test_kill_the_cli_at_several_moments(tmp_path, source):
    """The real command, killed at moments spread over its run, while replacing an output."""
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from kjax_core.cli import main; main()", "translate", "resnet50", "-w", "none",
               "--no-include-top", "--input-shape", "64,64,3", "-o", str(out), "--force"]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    first = verify(out)["created"]
    outcomes = []
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.97):
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * fraction)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        config = verify(out)  # the old output or the complete new one, whatever the moment
        outcomes.append("old" if config["created"] == first and child.returncode else "new-or-done")
    assert "old" in outcomes
    shutil.rmtree(out)
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert _staging_left(tmp_path) == []


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Keras weights files of resnet50 (with top), of resnet50 without top, of resnet50 with 10
    classes and of resnet101, to hand to the wrong model or variant."""
    from kjax_core import get_spec
    from kjax_core.conversion.keras_model import build_keras_model

    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for key, name, options in [
        ("resnet101", "resnet101", {}),
        ("withtop", "resnet50", {}),
        ("notop", "resnet50", {"include_top": False}),
        ("classes10", "resnet50", {"classes": 10}),
    ]:
        spec = get_spec(name)
        model = build_keras_model(spec, {**spec.default_options(), **options}, None, (64, 64, 3)).model
        files[key] = folder / f"{key}.weights.h5"
        model.save_weights(files[key])
    return files


@pytest.mark.parametrize("key,args,message", [
    ("resnet101", [], "does not fit resnet50"),
    ("notop", [], "does not fit resnet50"),
    ("classes10", [], "does not fit resnet50"),
    ("classes10", ["--classes", "7"], "does not fit resnet50"),
    # Keras itself loads a with-top .weights.h5 into a model without top, dropping the classifier.
    ("withtop", ["--no-include-top"], "unused: layers/dense/vars/0 [2048, 1000]"),
])
def test_weights_of_another_model_or_variant(weight_files, tmp_path, capsys, key, args, message):
    code, out, err = run_cli(
        ["translate", "resnet50", "-w", weight_files[key], "--input-shape", "64,64,3",
         "-o", tmp_path / "out", *args], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_keras_files_are_read_for_weights_only(tmp_path, monkeypatch, capsys):
    """A whole-model .keras archive given as weights is read by load_weights (weights only, no
    deserialisation of its config, so no code in it runs); Keras' model loaders are never called."""
    import keras

    from kjax_core import get_spec
    from kjax_core.conversion.keras_model import build_keras_model

    spec = get_spec("resnet50")
    model = build_keras_model(spec, {**spec.default_options(), "include_top": False}, None, (64, 64, 3)).model
    model.save(tmp_path / "whole.keras")

    def refuse(*args, **kwargs):
        raise AssertionError("kjax must not deserialise Keras model files")

    monkeypatch.setattr(keras.saving, "load_model", refuse)
    monkeypatch.setattr(keras.models, "load_model", refuse)
    code, out, err = run_cli(["translate", "resnet50", "-w", tmp_path / "whole.keras", "--no-include-top",
                              "--input-shape", "64,64,3", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    verify(tmp_path / "out")


def test_no_pickle_anywhere():
    """Outputs are JSON + msgpack/safetensors; nothing in kjax unpickles."""
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("kjax_core/**/*.py"), *root.glob("plugins/*/*.py")]:
        text = path.read_text()
        for marker in ("import pickle", "allow_pickle=True", "safe_mode=False", "cloudpickle", "dill"):
            assert marker not in text, f"{path.name} uses {marker}"


def test_module_apply_names_the_expected_image_shape():
    """Plain module.apply (not only kjax predict) says what shape it takes."""
    import jax
    import jax.numpy as jnp

    import kjax_core
    from kjax_core.errors import InputError

    module = kjax_core.create_model("mobilenet", include_top=False)
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(InputError, match=r"add a batch axis \(images\[None\]\)"):
        jax.eval_shape(module.apply, variables, jnp.zeros((32, 32, 3)))
    with pytest.raises(InputError, match="transpose with images.transpose"):
        jax.eval_shape(module.apply, variables, jnp.zeros((1, 3, 32, 32)))
