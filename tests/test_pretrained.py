"""kjax_core.pretrained: translated once into the cache, loaded from it afterwards without
TensorFlow or Keras; processes asking at once leave one complete entry; `kjax cache`."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import kjax_core
from kjax_core.cache import cache_entries, clear_cache
from kjax_core.storage.output import verify

from helpers import assert_same_variables, run_cli

OPTIONS = dict(alpha=0.35, include_top=False, input_shape=(96, 96, 3))

# A fresh process asks for the pretrained model and says what it imported and how long it took.
CHILD = textwrap.dedent("""
    import json, sys, time
    started = time.time()
    import kjax_core
    module, variables = kjax_core.pretrained(
        "mobilenetv2", sys.argv[1], alpha=0.35, include_top=False, input_shape=(96, 96, 3))
    import jax, numpy as np
    total = float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(variables)))
    print(json.dumps({
        "heavy": sorted(m for m in ("keras", "tensorflow", "tf_keras") if m in sys.modules),
        "started": started, "ended": time.time(), "seconds": time.time() - started, "total": total,
    }))
""")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Keras weights of mobilenetv2 (alpha 0.35, no top, 96x96), saved as a user would."""
    from kjax_core import get_spec
    from kjax_core.conversion.keras_model import build_keras_model

    spec = get_spec("mobilenetv2")
    options = {**spec.default_options(), "alpha": 0.35, "include_top": False}
    model = build_keras_model(spec, options, None, (96, 96, 3)).model
    path = tmp_path_factory.mktemp("weights") / "mnv2.weights.h5"
    model.save_weights(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("KJAX_CACHE", str(folder))
    return folder


def _child(weights, cache):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KJAX_CACHE"] = str(cache)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(weights)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(child):
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    return json.loads(out.splitlines()[-1])


def test_translated_once_then_loaded_without_keras(weights_file, cache):
    first = _result(_child(weights_file, cache))
    assert "keras" in first["heavy"]  # the first call translates
    [entry] = cache_entries()
    assert entry["model"] == "mobilenetv2" and entry["weights"] == str(weights_file)
    assert entry["options"] == {"alpha": 0.35, "include_top": False}
    config = verify(entry["path"])
    assert config["input_shape"] == [96, 96, 3]
    manifest = json.loads(open(os.path.join(entry["path"], "manifest.json")).read())
    assert manifest["source_weights"]["sha256"] == entry["source_sha256"]

    again = _result(_child(weights_file, cache))
    assert again["heavy"] == [], "a cache hit must not import TensorFlow or Keras"
    assert again["total"] == first["total"]
    print(f"cache hit in a fresh process (imports included): {again['seconds']:.2f} s; "
          f"first call {first['seconds']:.2f} s")

    # In this process: the same variables as a translation of the same file.
    module, variables = kjax_core.pretrained("mobilenetv2", str(weights_file), **OPTIONS)
    translation = kjax_core.translate("mobilenetv2", str(weights_file), **OPTIONS)
    assert_same_variables(variables, translation.variables)
    assert module.alpha == 0.35 and module.include_top is False


def test_two_processes_at_once_leave_one_complete_entry(weights_file, cache):
    children = [_child(weights_file, cache) for _ in range(2)]
    results = [_result(child) for child in children]
    # They ran at the same time, one translated, the other waited and loaded its entry.
    assert max(r["started"] for r in results) < min(r["ended"] for r in results)
    assert sorted(bool(r["heavy"]) for r in results) == [False, True]
    assert results[0]["total"] == results[1]["total"]
    [entry] = cache_entries()
    verify(entry["path"])
    model_folder = cache / "mobilenetv2"
    assert sorted(p.name for p in model_folder.iterdir() if not p.name.endswith(".lock")) == [
        os.path.basename(entry["path"])]


def test_key_options_and_weights_content(weights_file, cache, tmp_path):
    kjax_core.pretrained("mobilenetv2", str(weights_file), **OPTIONS)
    kjax_core.pretrained("mobilenetv2", str(weights_file), **{**OPTIONS, "pooling": "avg"})
    assert len(cache_entries()) == 2
    # The same path with other content is another entry (keyed by the file's sha256).
    copy = tmp_path / "copy.weights.h5"
    copy.write_bytes(weights_file.read_bytes())
    kjax_core.pretrained("mobilenetv2", str(copy), **OPTIONS)
    assert len(cache_entries()) == 2
    import h5py

    with h5py.File(copy, "r+") as handle:
        names = []
        handle.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        handle[names[0]][...] = handle[names[0]][...] + 1
    kjax_core.pretrained("mobilenetv2", str(copy), **OPTIONS)
    assert len(cache_entries()) == 3


def test_a_damaged_entry_is_translated_again(weights_file, cache):
    kjax_core.pretrained("mobilenetv2", str(weights_file), **OPTIONS)
    [entry] = cache_entries()
    variables_file = os.path.join(entry["path"], "variables.msgpack")
    data = bytearray(open(variables_file, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(variables_file, "wb").write(bytes(data))
    with pytest.warns(UserWarning, match="is damaged"):
        kjax_core.pretrained("mobilenetv2", str(weights_file), **OPTIONS)
    [entry] = cache_entries()
    verify(entry["path"])


def test_refusals_are_cheap_and_worded_for_python(cache):
    with pytest.raises(kjax_core.WeightsError, match="translate\\('mobilenetv2', None\\)"):
        kjax_core.pretrained("mobilenetv2", None)
    with pytest.raises(kjax_core.WeightsError, match="no weight set 'imagenet-i999'"):
        kjax_core.pretrained("mobilenetv2", "imagenet-i999")
    with pytest.raises(kjax_core.UnknownModelError):
        kjax_core.pretrained("mobilenetv9")
    assert not cache.exists()


def test_cache_commands(weights_file, cache, capsys, monkeypatch):
    code, out, err = run_cli(["cache", "list"], capsys)
    assert code == 0 and "holds no translation" in err and "compiled" not in err
    kjax_core.pretrained("mobilenetv2", str(weights_file), **OPTIONS)
    code, out, err = run_cli(["cache", "list"], capsys)
    assert code == 0 and "mobilenetv2" in out and "alpha=0.35" in out
    code, out, _ = run_cli(["cache", "list", "--json"], capsys)
    [row] = json.loads(out)
    assert row["model"] == "mobilenetv2" and row["size"] > 1e6
    # As light as `kjax list`: JSON only, no framework.
    script = ("import sys\nfrom kjax_core.cli import main\ntry:\n    main(['cache', 'list'])\nfinally:\n"
              "    print(sorted(m for m in ('jax', 'keras', 'numpy', 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "KJAX_CACHE": str(cache)}, timeout=60)
    assert "mobilenetv2" in result.stdout and result.stdout.splitlines()[-1] == "[]", result.stderr
    # The predictor's compiled programs (JAX's file names) are counted, and cleared with all.
    monkeypatch.delenv("KJAX_COMPILATION_CACHE")
    (cache / "xla").mkdir()
    program = cache / "xla" / f"jit_apply-{'ab' * 32}-cache"
    program.write_bytes(b"x" * 1000)
    (cache / "xla" / f"jit_apply-{'ab' * 32}-atime").write_bytes(b"t")
    code, out, err = run_cli(["cache", "list"], capsys)
    assert code == 0 and f"compiled programs: 1 (0.0 MB) in {cache / 'xla'}" in err
    # Something else in the cache folder is never deleted.
    (cache / "notes.txt").write_text("mine")
    (cache / "xla" / "notes.txt").write_text("mine")
    (cache / "mobilenetv2" / "mine").mkdir()
    code, out, err = run_cli(["cache", "clear", "resnet50"], capsys)
    assert code == 0 and "removed 0 cached translations of resnet50" in err and program.exists()
    code, out, err = run_cli(["cache", "clear"], capsys)
    assert code == 0 and "removed 1 cached translation and 1 compiled program from" in err
    assert cache_entries() == [] and (cache / "notes.txt").exists() and (cache / "mobilenetv2" / "mine").exists()
    assert [f.name for f in (cache / "xla").iterdir()] == ["notes.txt"]
    assert clear_cache() == []
