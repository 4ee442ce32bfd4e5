"""The command line as a user meets it: data on stdout, one-line errors, exit codes, safe output."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import kjax_core
from kjax_core.parity import relative_error, sample_images

from helpers import leaves, run_cli


def one_line_error(code, err, expected_code=2):
    assert code == expected_code
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_list(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # piped: whole rows, whatever the width
    code, out, err = run_cli(["list"], capsys)
    assert code == 0 and err == ""
    row = next(line for line in out.splitlines() if line.split()[:1] == ["resnet50"])
    assert row.split() == ["resnet50", "resnet", "25.6M", "224x224x3", "caffe", "resnet"]
    code, out, _ = run_cli(["list", "resnet1??", "--json"], capsys)
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["resnet101", "resnet152"]
    assert rows[0]["parameters"] == 44_707_176 and rows[0]["plugin"] == "resnet"
    code, out, err = run_cli(["list", "nosuchnet*"], capsys)
    assert code == 1 and "no model matches" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["translate", "resnet5", "-o", "x"], "Did you mean 'resnet50'"),
        (["translate", "resnet50", "-o", "x", "--pooling", "mx"], "pooling must be one of"),
        (["translate", "resnet50", "-o", "x", "--set", "alpha=0.5"], "has no option 'alpha'"),
        (["translate", "resnet50", "-o", "x", "--set", "alpha"], "--set takes KEY=VALUE"),
        (["translate", "resnet50", "-o", "x", "--set", "include_top=maybe"], "takes a bool"),
        (["translate", "resnet50", "-o", "x", "--classes", "many"], "Invalid value for '--classes'"),
        (["translate", "resnet50", "-o", "x", "--classes", "0"], "classes must be a positive"),
        (["translate", "resnet50", "-o", "x", "--input-shape", "10,10,3"], "at least 32x32"),
        (["translate", "resnet50", "-o", "x", "--input-shape", "64,64"], "three integers"),
        (["translate", "resnet50", "-o", "x", "--input-shape", "a,b,c"], "H,W,C"),
        (["translate", "resnet50", "-o", "x", "--format", "zip"], "--format must be one of"),
        (["translate", "resnet50", "-o", "x", "--classifier-activation", "bogus"], "classifier_activation"),
        (["translate", "resnet50"], "Missing option '--output'"),
        (["translate", "resnet50", "-o", "x", "--frobnicate"], "No such option"),
        (["transl", "resnet50"], "No such command"),
        (["verify", "resnet50", "--seed", "-1"], "--seed"),
        (["verify", "resnet50", "--tolerance", "-1"], "--tolerance"),
        (["verify", "resnet50", "--tolerance", "nan"], "--tolerance"),
        (["verify", "resnet50", "--float32-factor", "nan"], "--float32-factor"),
    ],
)
def test_bad_input_gets_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    one_line_error(code, err)
    assert message in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_bad_weights_files(tmp_path, capsys):
    (tmp_path / "text.h5").write_text("not weights")
    (tmp_path / "renamed.bin").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    (tmp_path / "truncated.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    cases = [
        (tmp_path / "missing.h5", "weights file not found"),
        (tmp_path / "text.h5", "is not a Keras weights file"),
        (tmp_path, "is not a file"),
        (tmp_path / "renamed.bin", "rename"),
        (tmp_path / "truncated.h5", "damaged or truncated HDF5 file"),
    ]
    for path, message in cases:
        code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "o", "-w", path], capsys)
        one_line_error(code, err, 1)
        assert message in err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One translated output (random Keras weights, no top), shared by the tests below."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("cli") / "resnet50"
    result = subprocess.run(
        [sys.executable, "-m", "kjax_core.cli", "translate", "resnet50", "-o", str(out),
         "--weights", "none", "--no-include-top", "--pooling", "avg"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_translate_writes_a_complete_output(written):
    out, result = written
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "variables.msgpack"]
    assert result.stdout.startswith(str(out)) and "318 arrays" in result.stdout
    # What the user typed (none), said plainly, and the next step (no predict: no classifier).
    assert result.stdout.rstrip().endswith("weights=none (random initial weights)")
    # TensorFlow's start-up notices must not reach the user: stderr holds the next step only.
    assert result.stderr == f"next: kjax_core.load({str(out)!r}) in Python\n"
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "resnet50" and config["options"]["pooling"] == "avg"
    assert config["options"]["include_top"] is False and config["weights"] is None
    assert {"kjax", "keras", "tensorflow", "jax", "flax"} <= set(config["versions"])
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_existing_output_is_never_touched_without_force(written, capsys):
    out, _ = written
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli(["translate", "resnet50", "-o", out, "-w", "none"], capsys)
    one_line_error(code, err, 1)
    assert "exists and is not empty; pass --force" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("files", [
    {"thesis.tex": "years of work"},
    {"config.json": '{"name": "my browser extension"}', "manifest.json": "{}"},
])
def test_force_never_replaces_a_folder_that_is_not_a_kjax_output(tmp_path, capsys, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for out in (tmp_path, tmp_path / "new" / ".."):
        code, _, err = run_cli(["translate", "resnet50", "-o", out, "-w", "none", "--force"], capsys)
        one_line_error(code, err, 1)
        assert "is not a kjax output; --force only replaces kjax outputs" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)


@pytest.mark.parametrize(
    "config,manifest",
    [("{}", "{}"), ("[]", '{"files": 3}'), ('{"model": "resnet50"}', '{"files": {}}'), ("{", "{}")],
)
def test_malformed_outputs_are_refused_in_one_line(tmp_path, capsys, config, manifest):
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "manifest.json").write_text(manifest)
    code, _, err = run_cli(["check", tmp_path], capsys)
    one_line_error(code, err, 1)
    with pytest.raises(kjax_core.CorruptFileError):
        kjax_core.load(tmp_path)


def test_output_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(["translate", "resnet50", "-o", tmp_path / "file" / "out", "-w", "none"], capsys)
    one_line_error(code, err, 1)
    assert "is a file" in err


def test_output_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anywhere: let the folder say no as it would to a user
        import kjax_core.storage.output

        monkeypatch.setattr(kjax_core.storage.output.os, "access", lambda path, mode: Path(path) != ro)
    code, _, err = run_cli(["translate", "resnet50", "-o", ro / "out", "-w", "none"], capsys)
    one_line_error(code, err, 1)
    assert f"cannot write to {ro}: permission denied" in err


def test_force_replaces_and_formats(written, tmp_path, capsys):
    out = tmp_path / ("copy[v2]" + "x" * 200)  # markup-like and long: printed as is, written whole
    code, stdout, err = run_cli(["translate", "resnet50", "-o", out, "-w", "none", "--no-include-top",
                                 "--format", "safetensors"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"{out}  resnet50")
    code, _, err = run_cli(["translate", "resnet50", "-o", out, "-w", "none", "--no-include-top",
                            "--pooling", "max", "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "variables.msgpack"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    module, variables = kjax_core.load(out)
    assert module.pooling == "max"


def test_safetensors_and_msgpack_hold_the_same(tmp_path):
    from flax.traverse_util import flatten_dict

    translation = kjax_core.translate("resnet50", None, include_top=False)
    original = flatten_dict(translation.variables)
    assert len(original) == 318
    for fmt in ("msgpack", "safetensors"):
        events = []
        kjax_core.save(translation, tmp_path / fmt, fmt=fmt, progress=lambda *e: events.append(e))
        # The write is shown too: one step per array, then checksums, fsync and the move.
        assert events[0] == ("write", 0, 319) and events[-1] == ("write", 319, 319)
        assert len(events) >= 319 and all(e[0] == "write" for e in events)
        _, variables = kjax_core.load(tmp_path / fmt)
        loaded = flatten_dict(variables)
        assert loaded.keys() == original.keys()
        assert all(np.array_equal(loaded[path], original[path]) for path in original)


def test_load_and_check(written, tmp_path, capsys):
    out, _ = written
    module, variables = kjax_core.load(out)
    y = module.apply(variables, sample_images((1, 64, 64, 3)))
    assert y.shape == (1, 2048)
    code, stdout, _ = run_cli(["check", out], capsys)
    assert code == 0 and "ok" in stdout
    # A changed byte is refused, by `check` and by load.
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(out, damaged)
    data = bytearray((damaged / "variables.msgpack").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "variables.msgpack").write_bytes(bytes(data))
    code, _, err = run_cli(["check", damaged], capsys)
    one_line_error(code, err, 1)
    assert "variables.msgpack was changed or damaged" in err
    with pytest.raises(kjax_core.CorruptFileError):
        kjax_core.load(damaged)
    with pytest.raises(kjax_core.CorruptFileError, match="not a kjax output"):
        kjax_core.load(tmp_path)


def test_verify(capsys):
    code, out, err = run_cli(["verify", "resnet50", "--no-include-top", "--input-shape", "67,45,3",
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["error64"] < 1e-9 and report["matches"] and report["conclusive"]
    assert report["error32"] <= 2 * report["keras_error32"] and report["keras_error32"] > 0
    assert report["input_shape"] == [67, 45, 3]
    assert report["sensitivity"] > 1e-2 and report["broken_error"] > 1e-3
    code, out, err = run_cli(["verify", "resnet50", "--no-include-top", "--input-shape", "67,45,3"], capsys)
    assert code == 0 and "resnet50" in out and "yes" in out
    assert "f64 err" in out and "f32 err" in out and "Keras f32" in out


def test_verify_on_initial_weights_matches_but_is_inconclusive(capsys):
    code, out, err = run_cli(["verify", "resnet50", "-w", "none", "--no-include-top",
                              "--input-shape", "48,48,3", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["matches"] and not report["conclusive"]
    assert "note: inconclusive" in err


def test_bare_kjax_shows_help(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 0 and "Usage: kjax" in out and err == ""


def test_verify_fails_on_nan(tmp_path, capsys):
    from kjax_core.parity import reference_model

    _, keras_model = reference_model("resnet50", include_top=False, prepare=False)
    layer = keras_model.get_layer("conv2_block1_1_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.full_like(kernel, np.nan), bias])
    keras_model.save_weights(tmp_path / "nan.weights.h5")
    code, out, err = run_cli(["verify", "resnet50", "-w", tmp_path / "nan.weights.h5",
                              "--no-include-top", "--input-shape", "64,64,3"], capsys)
    one_line_error(code, err, 1)
    assert "differs from Keras in float64: relative error nan" in err


def test_verify_fails_above_either_bound(capsys):
    code, out, err = run_cli(["verify", "resnet50", "--no-include-top", "--input-shape", "35,33,3",
                              "--tolerance", "1e-17"], capsys)
    one_line_error(code, err, 1)
    assert "differs from Keras in float64" in err
    code, out, err = run_cli(["verify", "resnet50", "--no-include-top", "--input-shape", "35,33,3",
                              "--float32-factor", "0"], capsys)
    one_line_error(code, err, 1)
    assert "in float32 is" in err and "Keras' own float32 error" in err


def test_create_model_and_apply_match_load(written):
    out, _ = written
    module, variables = kjax_core.load(out)
    fresh = kjax_core.create_model("resnet50", include_top=False, pooling="avg")
    x = sample_images((1, 40, 48, 3), 3)
    assert relative_error(fresh.apply(variables, x), module.apply(variables, x)) == 0.0


def test_info(capsys):
    code, out, err = run_cli(["info", "resnet50"], capsys)
    assert code == 0 and err == ""
    assert "keras.applications.resnet.ResNet50" in out and "25,636,712" in out and "caffe" in out
    code, out, err = run_cli(["info", "resnet50", "--json"], capsys)
    facts = json.loads(out)
    assert facts["options"]["include_top"] is True and facts["weights"] == ["imagenet", "none", "PATH"]
    code, out, err = run_cli(["info", "resnet5"], capsys)
    one_line_error(code, err)
    assert "Did you mean 'resnet50'" in err


def test_info_explains_weight_sets(capsys):
    code, out, err = run_cli(["info", "resnetrs50", "--json"], capsys)
    sets = json.loads(out)["weight_sets"]
    assert list(sets) == ["imagenet", "imagenet-i160", "none", "PATH", "SET=PATH"]
    assert "the same as imagenet-i160" in sets["imagenet"]
    assert "trained at 160x160" in sets["imagenet-i160"]
    code, out, err = run_cli(["info", "efficientnetb0", "--json"], capsys)
    assert "imagenet_rescaling=True" in json.loads(out)["weight_sets"]["imagenet"]
    code, out, err = run_cli(["info", "resnetrs50"], capsys)
    assert "imagenet-i160: ImageNet weights trained at 160x160" in " ".join(out.split())


def test_warnings_reach_the_user_as_one_line(capsys, monkeypatch):
    """Keras warns (e.g. MobileNetV2 falling back to its 224 weights) through Python warnings; the
    CLI shows each as one line."""
    import warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    run_cli(["info", "resnet50"], capsys)  # installs the CLI's warning display
    warnings.warn("Weights for input shape (224, 224)\n  will be loaded as the default.", UserWarning)
    err = capsys.readouterr().err
    assert err == "kjax: warning: Weights for input shape (224, 224) will be loaded as the default.\n"


def test_msgpack_output_is_flax_bytes(written):
    """The streamed msgpack file is byte for byte what flax.serialization writes."""
    from flax import serialization

    stored = (written[0] / "variables.msgpack").read_bytes()
    assert serialization.msgpack_serialize(serialization.msgpack_restore(stored)) == stored


def test_translate_on_the_jax_backend_gives_the_same_variables(tmp_path):
    """Without KERAS_BACKEND, `kjax translate` builds Keras 3 models on the JAX backend (no
    TensorFlow); the variables must be exactly those translated on TensorFlow from the same file."""
    import os
    import subprocess
    import sys

    import numpy as np

    import kjax_core
    from flax.traverse_util import flatten_dict

    translation = kjax_core.translate("resnet50", None, include_top=False, input_shape=(64, 64, 3))
    weights = tmp_path / "r50.weights.h5"
    translation.reference.model.save_weights(weights)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    code = ("import sys, keras; from kjax_core.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "import keras; print(keras.backend.backend(), 'tensorflow' in sys.modules)")
    result = subprocess.run(
        [sys.executable, "-c", code.replace("import sys, keras; ", "import sys; "), "translate", "resnet50",
         "-w", str(weights), "--no-include-top", "--input-shape", "64,64,3", "-o", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["jax", "False"]
    _, variables = kjax_core.load(tmp_path / "out")
    ours = flatten_dict(variables)
    for path, value in flatten_dict(translation.variables).items():
        np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(value))


def _fresh_cli(args, **env):
    """The CLI in a fresh process: (exit code, stdout, stderr, seconds, heavy modules imported)."""
    import subprocess
    import sys
    import time

    code = ("import sys\nfrom kjax_core.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('HEAVY', [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules], file=sys.stderr)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=120)
    seconds = time.perf_counter() - started
    err, _, heavy = result.stderr.rpartition("HEAVY ")
    return result.returncode, result.stdout, err, seconds, heavy.strip()


@pytest.mark.parametrize("args,message", [
    (["translate", "resnetrs50", "--weights", "imagenet-i999", "-o", "{tmp}/a"],
     "resnetrs50 has no weight set 'imagenet-i999' (its sets: imagenet, imagenet-i160)"),
    (["translate", "resnet50", "--weights", "{tmp}/missing.h5", "-o", "{tmp}/b"], "weights file not found"),
    (["translate", "resnet50", "-o", "/proc/kjax-test/out"],
     "cannot create /proc/kjax-test/out: /proc does not take new folders"),
    (["translate", "efficientnetb0", "--weights", "imagenet=", "-o", "{tmp}/c"], "names no file"),
    (["verify", "resnetrs50", "--weights", "imagenet-i999"], "has no weight set 'imagenet-i999'"),
    (["predict", "resnet50", "{tmp}/cat.jpg"], "image not found"),
])
def test_cheap_checks_come_before_keras(tmp_path, args, message):
    """Measured before: an unknown weight set failed after 11-17 s, a missing file after 4.9 s and
    -o /proc/x after 8.7 s (with "No such file or directory"), all after the Keras build."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err, seconds, heavy = _fresh_cli(args, KJAX_CACHE=str(tmp_path / "cache"))
    assert code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert heavy == "[]", f"imported {heavy} before refusing"
    print(f"{' '.join(args[:2])}: refused in {seconds:.2f} s (fresh process)")
    assert seconds < 3  # about 0.3 s on an idle machine; generous for a busy one
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_an_unreadable_output(written, tmp_path, capsys, monkeypatch):
    import shutil

    import kjax_core.storage.output as output

    copy = tmp_path / "copy"
    shutil.copytree(written[0], copy)
    (copy / "variables.msgpack").chmod(0)
    if os.geteuid() == 0:  # root reads anything: let the file refuse as it would refuse a user
        real_open = open

        def refusing_open(file, *args, **kwargs):
            if str(file).endswith("variables.msgpack"):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(output, "open", refusing_open, raising=False)
    code, out, err = run_cli(["check", copy], capsys)
    one_line_error(code, err, 1)  # was "internal error: PermissionError", exit 3
    assert f"cannot read {copy / 'variables.msgpack'}: permission denied" in err


def test_list_at_60_columns_keeps_whole_names(tmp_path):
    code, out, err, _, heavy = _fresh_cli(["list"], COLUMNS="60")
    assert code == 0 and heavy == "[]"
    lines = out.splitlines()
    assert max(map(len, lines)) <= 60
    names = [line.split()[0] for line in lines[1:]]
    assert set(kjax_core.list_models()) <= set(names)  # efficientnetb0 whole, not "efficie…"


def test_every_option_has_help(capsys):
    for command in ("translate", "verify", "predict", "info", "list", "check"):
        code, out, err = run_cli([command, "--help"], capsys)
        assert code == 0
        lines = out.splitlines()
        bare = []
        for i, line in enumerate(lines):
            if not line.strip().startswith("-") or "--help" in line:
                continue
            parts = re.split(r"\s{2,}", line.strip())
            text = parts[1] if len(parts) > 1 else lines[i + 1].strip()
            if not text or text.startswith("["):  # only "[default: ...]": no help of its own
                bare.append(parts[0])
        assert not bare, f"{command}: options without help: {bare}"
    code, out, err = run_cli(["verify", "--help"], capsys)
    assert "Seed of the random weights" in " ".join(out.split())


def test_python_errors_speak_python(written, tmp_path):
    """A library caller is told about arguments (force=True, weights=None), the CLI about flags."""
    with pytest.raises(kjax_core.OutputError) as error:
        kjax_core.save(None, written[0])
    assert "pass force=True to replace it" in str(error.value) and "--" not in str(error.value)
    assert "pass --force" in error.value.cli_message
    with pytest.raises(kjax_core.WeightsError) as error:
        kjax_core.translate("resnet50", str(tmp_path / "missing.h5"))
    assert "weights='imagenet' or None" in str(error.value) and "--" not in str(error.value)
    with pytest.raises(kjax_core.WeightsError) as error:
        kjax_core.translate("mobilenetv2", "imagenet-i999")
    assert str(error.value) == (
        "mobilenetv2 has no weight set 'imagenet-i999' (its sets: imagenet); pass one of them, a "
        "weights file path, 'SET=PATH' for a file holding a named set, or None for random weights")
