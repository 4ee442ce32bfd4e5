"""The Orbax output format (`kjax translate --format orbax`, save(..., fmt="orbax")): an Orbax
PyTree checkpoint folder, variables.orbax/, beside config.json and the manifest, with the
guarantees of the other formats: every file of the folder in the manifest, damage found by
`kjax check` and load() in one line, exact round trip, no partial output when killed.

Outputs here are written from small random variable trees (save() and load() need no Keras), but
for the command line, which translates a real model."""

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import kjax_core
from kjax_core.storage.output import verify

from helpers import assert_same_variables, run_cli

NAME, OPTIONS, INPUT_SHAPE = "mobilenet", {"alpha": 0.25}, (64, 64, 3)


def random_translation(seed=0):
    """What save() takes: the variables of mobilenet alpha 0.25, every leaf random."""
    import jax
    import jax.numpy as jnp

    module = kjax_core.create_model(NAME, **OPTIONS)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *INPUT_SHAPE)))
    rng = np.random.default_rng(seed)
    variables = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    return SimpleNamespace(spec=kjax_core.get_spec(NAME), options=OPTIONS, input_shape=INPUT_SHAPE,
                           variables=variables, reference=SimpleNamespace(weights=None, weights_file=None))


@pytest.fixture(scope="module")
def translation():
    return random_translation()


@pytest.fixture(scope="module")
def written(translation, tmp_path_factory):
    out = tmp_path_factory.mktemp("orbax") / "out"
    kjax_core.save(translation, out, fmt="orbax")
    return out


def checkpoint_files(out):
    return sorted(p.relative_to(out).as_posix() for p in (out / "variables.orbax").rglob("*") if p.is_file())


def test_round_trip_is_exact_and_the_manifest_covers_every_file(translation, written, tmp_path):
    assert sorted(p.name for p in written.iterdir()) == ["config.json", "manifest.json", "variables.orbax"]
    config = verify(written)
    assert (config["format"], config["variables_file"]) == ("orbax", "variables.orbax")
    manifest = json.loads((written / "manifest.json").read_text())
    files = checkpoint_files(written)
    assert len(files) > 3 and sorted(manifest["files"]) == sorted(["config.json", *files])
    module, variables = kjax_core.load(written)
    assert_same_variables(variables, translation.variables)
    assert module.alpha == 0.25
    # An Orbax output is a kjax output: force replaces it, by another format and back.
    out = tmp_path / "out"
    shutil.copytree(written, out)
    kjax_core.save(translation, out, fmt="msgpack", force=True)
    assert verify(out)["format"] == "msgpack" and not (out / "variables.orbax").exists()
    kjax_core.save(translation, out, fmt="orbax", force=True)
    assert_same_variables(kjax_core.load(out)[1], translation.variables)


def damage(out, how):
    """Change an Orbax output the way a disk, a copy or a hand might."""
    files = [out / name for name in checkpoint_files(out)]
    largest = max(files, key=lambda p: p.stat().st_size)
    if how == "flipped byte":
        data = bytearray(largest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        largest.write_bytes(bytes(data))
    elif how == "truncated":
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    elif how == "missing file":
        largest.unlink()
    elif how == "added file":
        (out / "variables.orbax" / "d" / "extra").write_bytes(b"\0" * 16)
    elif how == "missing folder":
        shutil.rmtree(out / "variables.orbax")
    return largest


@pytest.mark.parametrize("how,message", [
    ("flipped byte", "was changed or damaged"),
    ("truncated", "was changed or damaged"),
    ("missing file", "is missing"),
    ("added file", "is not in manifest.json"),
    ("missing folder", "variables.orbax is missing"),
])
def test_damage_is_one_line_from_check_and_load(written, tmp_path, capsys, how, message):
    out = tmp_path / "out"
    shutil.copytree(written, out)
    damage(out, how)
    code, stdout, err = run_cli(["check", out], capsys)
    assert code == 1 and stdout == "" and err.count("\n") == 1 and message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    with pytest.raises(kjax_core.CorruptFileError, match=message) as error:
        kjax_core.load(out)
    assert "\n" not in str(error.value)


def test_an_unreadable_checkpoint_that_matches_its_manifest_is_one_line(written, tmp_path):
    """Past the checksums (a manifest rewritten to fit the damage): Orbax's own error, in one
    line, and nothing after it (the reads it left in flight end on a closed event loop, which
    tensorstore would report as tracebacks from other threads). In a process of its own, as a
    user meets it: pytest would catch those reports itself."""
    from PIL import Image

    out = tmp_path / "out"
    shutil.copytree(written, out)
    damaged = damage(out, "truncated")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["files"][damaged.relative_to(out).as_posix()]
    entry["size"], entry["sha256"] = damaged.stat().st_size, kjax_core.storage.output.sha256_file(damaged)
    (out / "manifest.json").write_text(json.dumps(manifest))
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    result = subprocess.run(
        [sys.executable, "-c", "from kjax_core.cli import main; main()", "predict", out, tmp_path / "image.png"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == "", result
    assert re.fullmatch(r"error: cannot read \S*variables.orbax: [^\n]+\n", result.stderr), result.stderr


def test_cli_format_orbax(tmp_path, capsys, monkeypatch):
    """`kjax translate --format orbax` of a real translation: what load() returns is exactly what
    was translated; a wrong --format is one line and writes nothing."""
    import kjax_core.storage.output as storage

    translated = {}
    real_save = storage.save

    def spy(translation, out, **options):
        translated["variables"] = translation.variables
        return real_save(translation, out, **options)

    monkeypatch.setattr(storage, "save", spy)
    out = tmp_path / "out"
    base = ["translate", NAME, "-w", "none", "--set", "alpha=0.25", "--input-shape", "64,64,3", "-o", out]
    code, stdout, err = run_cli([*base, "--format", "orbax"], capsys)
    assert code == 0, err
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert stdout.startswith(f"{out}  {NAME}  137 arrays  {size / 1e6:.1f} MB")  # the folder's files counted
    code, stdout, _ = run_cli(["check", out], capsys)
    assert code == 0 and stdout.strip() == f"{out}: ok ({NAME}, orbax, weights=none)"
    assert_same_variables(kjax_core.load(out)[1], translated["variables"])

    code, _, err = run_cli([*base[:-1], tmp_path / "other", "--format", "orbax2"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--format must be one of msgpack, safetensors, orbax; got 'orbax2'" in err
    assert not (tmp_path / "other").exists()


# The way tests/test_reliability.py kills a save at each of its file-system events (before and
# after each fsync, rename, exchange and delete), here with Orbax's own finalize (its rename of
# its temporary folder) as events too. The child makes its own small tree: no Keras, no plugin.
KILL_AT_STEP = textwrap.dedent("""
    import asyncio, os, shutil, signal, sys
    from types import SimpleNamespace
    import numpy as np
    import kjax_core.storage.output as kio
    from orbax.checkpoint._src.path import async_path

    # The kill: at the STEP-th event, or at the K-th event called NAME ("NAME#K"; the events
    # before it vary: a save first deletes what killed runs left).
    out, at, force, fmt = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    events = []

    def event(name):
        events.append(name)
        if at == str(len(events)) or at == f"{name}#{events.count(name)}":
            os.kill(os.getpid(), signal.SIGKILL)

    def watched(name, function):
        def wrapper(*args, **kwargs):
            event(name + " before")
            result = function(*args, **kwargs)
            event(name + " after")
            return result
        return wrapper

    def watched_async(name, function):
        async def wrapper(*args, **kwargs):
            event(name + " before")
            result = await function(*args, **kwargs)
            event(name + " after")
            return result
        return wrapper

    os.fsync = watched("fsync", os.fsync)
    os.replace = watched("replace", os.replace)
    shutil.rmtree = watched("rmtree", shutil.rmtree)
    kio._exchange = watched("exchange", kio._exchange)
    kio._write_variables = watched("write", kio._write_variables)
    async_path.rename = watched_async("orbax finalize", async_path.rename)

    rng = np.random.default_rng(0)
    variables = {"params": {f"layer{i}": {"kernel": rng.standard_normal((8, 8)).astype(np.float32),
                                          "bias": rng.standard_normal(8).astype(np.float32)} for i in range(3)},
                 "batch_stats": {"bn": {"mean": np.zeros(8, np.float32), "var": np.ones(8, np.float32)}}}
    spec = SimpleNamespace(name="mobilenet", family="mobilenet", plugin="mobilenet", preprocessing="tf")
    translation = SimpleNamespace(spec=spec, options={}, input_shape=[64, 64, 3], variables=variables,
                                  reference=SimpleNamespace(weights=None, weights_file=None))
    kio.save(translation, out, force=force, fmt=fmt)
    print("EVENTS", "|".join(events))
""")


def save_and_kill(folder, out, at, force, fmt="orbax"):
    script = Path(folder) / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    return subprocess.run([sys.executable, str(script), str(out), str(at), "1" if force else "0", fmt],
                          capture_output=True, text=True, timeout=120)


def kill_and_look(tmp_path, force, moments=None):
    """Kill an Orbax save at ``moments(events)`` (every step when None): the destination holds nothing or
    the old (msgpack) output, or the complete new one; never a partial one. Returns what was seen
    and the events of a whole save."""
    out, seen = tmp_path / "out", set()

    def run(at):
        if out.exists():
            shutil.rmtree(out)
        if force:
            shutil.copytree(tmp_path / "old", out)
        return save_and_kill(tmp_path, out, at, force)

    if force:
        old = save_and_kill(tmp_path, tmp_path / "old", 0, False, "msgpack")
        assert old.returncode == 0, old.stderr
    probe = run(0)
    assert probe.returncode == 0, probe.stderr
    events = probe.stdout.split("EVENTS ")[-1].strip().split("|")
    for at in moments(events) if moments else range(1, len(events) + 3):
        result = run(at)
        assert result.returncode in (0, -signal.SIGKILL), result.stderr
        if not out.exists():
            assert not force, f"killed at {at}: the old output is gone"
            seen.add("nothing")
        else:
            seen.add("old" if verify(out)["format"] == "msgpack" else "new")  # verify: complete
    # What the killed runs left beside the output is removed by the next save there.
    assert save_and_kill(tmp_path, tmp_path / "last", 0, False).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".kjax-")) == []
    return seen, events


def test_killed_while_replacing_an_output(tmp_path):
    """Cheap: kill inside Orbax's save (before its finalize), after the last fsync and on either
    side of the exchange that puts the new output in place of the old one."""
    def chosen(events):
        return ["orbax finalize before#1", f"fsync after#{events.count('fsync after')}",
                "exchange before#1", "exchange after#1"]

    seen, events = kill_and_look(tmp_path, True, chosen)
    assert events.count("fsync before") > 5  # each file of the checkpoint is flushed
    assert seen == {"old", "new"}


@pytest.mark.slow
@pytest.mark.parametrize("force", [False, True], ids=["new", "replace"])
def test_killed_at_every_step_of_the_write(tmp_path, force):
    seen, _ = kill_and_look(tmp_path, force)
    assert seen == ({"old", "new"} if force else {"nothing", "new"})
