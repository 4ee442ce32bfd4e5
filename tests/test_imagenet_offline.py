"""The imagenet path, offline: Keras' own download function is replaced by one that serves a local
file, so the Keras constructor runs exactly as with a network (file name, loading by layer order from
a legacy HDF5 file); kjax must give what Keras gives with those weights."""

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
    code, out, err = run_cli(["translate", "resnet50", "-o", tmp_path / "out"], capsys)
    assert code == 1
    assert err.count("\n") == 1 and "--weights PATH" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


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
    assert "could not download the imagenet weights of resnet50" in err and "--weights PATH" in err
    assert list(tmp_path.iterdir()) == []
