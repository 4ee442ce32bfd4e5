"""The imagenet path, offline: Keras' own download function is replaced by one that serves a local
file, so the Keras constructor runs exactly as with a network (file name, loading by layer order from
a legacy HDF5 file); kjax must give what Keras gives with those weights."""

import hashlib
import json

import jax
import numpy as np
import pytest

import kjax_core
from keras.src.utils import file_utils
from kjax_core.storage.output import sha256_file
from kjax_core.parity import compare, reference_model, relative_error, sample_images
from kjax_core.preprocessing import apply_mode

from helpers import run_cli, save_legacy_h5


@pytest.mark.parametrize(
    "include_top,fname",
    [
        (True, "resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
        (False, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_resnet50_imagenet(tmp_path, serve_weights, include_top, fname, capsys):
    options = dict(include_top=include_top)
    if include_top:
        options["classifier_activation"] = None
    # A "pretrained" model: random weights and calibrated statistics, saved as Keras ships them.
    source, keras_model = reference_model("resnet50", **options)
    serve_weights[fname] = save_legacy_h5(keras_model, tmp_path / fname)

    translation = kjax_core.translate("resnet50", "imagenet", **options)
    assert serve_weights["_asked"] == [fname]
    assert translation.reference.weights_file == str(tmp_path / fname)
    size = (224, 224) if include_top else (75, 61)
    report = compare(translation, keras_model, sample_images((2, *size, 3), 11))
    assert report.ok, report.problems

    # Through the CLI and back: the written output computes the same thing.
    args = ["translate", "resnet50", "-o", tmp_path / "out", "--weights", "imagenet"]
    args += ["--classifier-activation", "none"] if include_top else ["--no-include-top"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    x = apply_mode("caffe", sample_images((2, *size, 3), 12))
    assert relative_error(jax.jit(module.apply)(variables, x), keras_model(x)) < 1e-4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source_weights"]["sha256"] == sha256_file(tmp_path / fname)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["weights"] == "imagenet" and config["preprocessing"] == "caffe"


def test_imagenet_without_network_fails_fast_with_advice(tmp_path, serve_weights, capsys):
    import os

    code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "out"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    # The exact file Keras asked for, from where, and where Keras would find it.
    fname = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    url = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{fname}"
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models", fname)
    assert err == (f"error: could not download the imagenet weights of resnet50 (offline): Keras asked for "
                   f"{fname} from {url}; download it where there is a network and put it at {cache}, or "
                   "pass --weights imagenet=PATH\n")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
    # Python callers are told about the argument instead of the flag.
    with pytest.raises(kjax_core.WeightsError, match=r"or pass weights='imagenet=PATH'$"):
        kjax_core.translate("resnet50", include_top=False)
    assert serve_weights["_asked"][-1] == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def test_a_file_of_a_named_set_given_as_set_equals_path(tmp_path, capsys):
    """resnet50: imagenet=PATH loads the file as Keras loads its own imagenet file."""
    fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _, keras_model = reference_model("resnet50", include_top=False, input_shape=(64, 64, 3))
    path = save_legacy_h5(keras_model, tmp_path / fname)
    code, out, err = run_cli(["translate", "resnet50", "-w", f"imagenet={path}", "--no-include-top",
                              "--input-shape", "64,64,3", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert out.rstrip().endswith(f"weights=imagenet (from {path})")
    module, variables = kjax_core.load(tmp_path / "out")
    x = apply_mode("caffe", sample_images((2, 64, 64, 3), 3))
    assert relative_error(jax.jit(module.apply)(variables, x), keras_model(x)) < 1e-4
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source_weights"] == {"path": str(path), "sha256": sha256_file(path)}
    # verify takes the same form: Keras (and its float64 twin) read the file as their imagenet set.
    code, out, err = run_cli(["verify", "resnet50", "-w", f"imagenet={path}", "--no-include-top",
                              "--input-shape", "64,64,3", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["matches"] and report["conclusive"], report


def test_efficientnet_imagenet_file_given_as_a_path(tmp_path, serve_weights, monkeypatch, capsys):
    """EfficientNet's graph differs for imagenet weights (one more Rescaling): its imagenet file
    given as a path is recognised by the hash Keras publishes, or named with imagenet=PATH;
    any other file is read into the graph without named weights, with a warning saying so."""
    from keras.src.applications import efficientnet

    from kjax_core import get_spec
    from kjax_core.conversion.keras_model import build_keras_model

    shape, fname = (67, 45, 3), "efficientnetb0_notop.h5"
    spec = get_spec("efficientnetb0")
    options = {**spec.default_options(), "include_top": False}
    # Keras' initial weights will do: the two graphs differ in their first layer.
    keras_plain = build_keras_model(spec, options, None, shape).model
    path = save_legacy_h5(keras_plain, tmp_path / fname)
    serve_weights[fname] = path
    keras_imagenet = build_keras_model(spec, options, "imagenet", shape).model  # Keras' own path
    x = sample_images((2, *shape), 4)
    want, plain = keras_imagenet(x), keras_plain(x)
    assert relative_error(plain, want) > 1e-3  # the two graphs compute different things

    named = kjax_core.translate("efficientnetb0", f"imagenet={path}", include_top=False, input_shape=shape)
    assert named.reference.weights == "imagenet" and named.module.imagenet_rescaling
    imagenet_apply = jax.jit(named.module.apply)
    assert relative_error(imagenet_apply(named.variables, x), want) < 1e-4

    with pytest.warns(UserWarning, match=f"is not the file Keras publishes .* name the set: imagenet={path}"):
        other = kjax_core.translate("efficientnetb0", str(path), include_top=False, input_shape=shape)
    assert relative_error(jax.jit(other.module.apply)(other.variables, x), plain) < 1e-4

    # The file Keras publishes (here: its hash made this file's) is recognised as imagenet.
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(efficientnet.WEIGHTS_HASHES, "b0", (md5, md5))
    code, out, err = run_cli(["translate", "efficientnetb0", "-w", path, "--no-include-top",
                              "--input-shape", "67,45,3", "-o", tmp_path / "out"], capsys)
    assert code == 0 and "warning" not in err, err
    assert out.rstrip().endswith(f"weights=imagenet (from {path})")
    module, variables = kjax_core.load(tmp_path / "out")
    assert module == named.module  # the imagenet graph; compiled once above
    assert relative_error(imagenet_apply(variables, x), want) < 1e-4


def test_weights_file_path(tmp_path, capsys):
    """--weights PATH: any file the Keras constructor accepts (here Keras 3's .weights.h5)."""
    _, keras_model = reference_model("resnet50", include_top=False, pooling="avg")
    path = tmp_path / "mine.weights.h5"
    keras_model.save_weights(path)
    code, out, err = run_cli(
        ["translate", "resnet50", "-o", tmp_path / "out", "-w", path, "--no-include-top",
         "--pooling", "avg"], capsys)
    assert code == 0, err
    module, variables = kjax_core.load(tmp_path / "out")
    x = apply_mode("caffe", sample_images((2, 64, 80, 3), 5))
    assert relative_error(module.apply(variables, x), keras_model(x)) < 1e-4
    # The weights of another configuration do not fit: one line, no output.
    code, out, err = run_cli(
        ["translate", "resnet101", "-o", tmp_path / "other", "-w", path, "--no-include-top"], capsys)
    assert code == 1 and "does not fit resnet101" in err and err.count("\n") == 1
    assert not (tmp_path / "other").exists()


def test_a_cached_file_that_does_not_load(tmp_path, serve_weights, capsys):
    fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _, other = reference_model("resnet101", include_top=False, prepare=False)
    serve_weights[fname] = save_legacy_h5(other, tmp_path / fname)  # the wrong model's weights
    code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "out", "--no-include-top"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"could not load the imagenet weights file {tmp_path / fname}" in err


@pytest.mark.parametrize(
    "failure",
    [
        TimeoutError("timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
        ValueError("Incomplete or corrupted file detected. The sha256 file hash does not match"),
    ],
)
def test_download_failures_are_weights_errors(tmp_path, monkeypatch, capsys, failure):
    def get_file(*args, **kwargs):
        raise failure

    monkeypatch.setattr(file_utils, "get_file", get_file)
    code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "out"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "could not download the imagenet weights of resnet50" in err and "--weights imagenet=PATH" in err
    assert list(tmp_path.iterdir()) == []
