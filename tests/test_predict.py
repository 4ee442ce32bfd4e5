"""From a model name to a label: images read as Keras reads them, decode_predictions as Keras' (with
the class index shipped), and `kjax predict` against Keras' own pipeline on the same weights."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import kjax_core
from kjax_core.imagenet import class_index
from kjax_core.parity import reference_model

from helpers import run_cli, save_legacy_h5

MNV2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224.h5"


@pytest.fixture
def keras_class_index(monkeypatch):
    """Keras' decode_predictions reading kjax's shipped file through its own get_file, which
    checks the file against the md5 Keras publishes for imagenet_class_index.json."""
    from keras.src.applications import imagenet_utils
    from keras.src.utils import file_utils

    shipped = Path(kjax_core.__file__).parent / "data" / "imagenet_class_index.json"
    other = file_utils.get_file  # e.g. serve_weights' own

    def get_file(fname=None, origin=None, file_hash=None, **kwargs):
        if fname != "imagenet_class_index.json":
            return other(fname, origin, file_hash=file_hash, **kwargs)
        assert file_utils.validate_file(str(shipped), file_hash), "not the file Keras publishes"
        return str(shipped)

    monkeypatch.setattr(file_utils, "get_file", get_file)
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    return imagenet_utils.decode_predictions


def test_shipped_class_index():
    index = class_index()
    assert len(index) == 1000 and index["0"] == ["n01440764", "tench"]
    assert index["999"] == ["n15075141", "toilet_tissue"]
    wnids = [index[str(i)][0] for i in range(1000)]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # Keras' classes are in WordNet order
    data = (Path(kjax_core.__file__).parent / "data" / "imagenet_class_index.json").read_bytes()
    assert hashlib.md5(data).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"  # Keras' file_hash


def test_decode_predictions_equals_keras(keras_class_index):
    rng = np.random.default_rng(0)
    preds = rng.dirichlet(np.ones(1000) * 0.1, size=3).astype(np.float32)
    preds[2, :10] = preds[2, 0]  # ties come out in Keras' order too
    for top in (1, 5, 1000):
        ours, theirs = kjax_core.decode_predictions(preds, top=top), keras_class_index(preds, top=top)
        assert ours == theirs
    assert kjax_core.decode_predictions(preds)[0][0][:2] == tuple(class_index()[str(preds[0].argmax())])
    with pytest.raises(kjax_core.InputError, match=r"add a batch axis"):
        kjax_core.decode_predictions(preds[0])
    with pytest.raises(kjax_core.InputError, match=r"\(N, 1000\); got shape \(3, 10\)"):
        kjax_core.decode_predictions(preds[:, :10])


def _write_images(folder):
    """Images of several modes and sizes, with structure (gradients, blocks) and noise."""
    from PIL import Image

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:200, 0:300]
    rgb = np.stack([x * 255 // 300, y * 255 // 200, (x + y) % 256], -1).astype(np.uint8)
    rgb = np.clip(rgb + rng.integers(-40, 40, rgb.shape), 0, 255).astype(np.uint8)
    paths = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 255, (200, 300), np.uint8)])),
        "gray.jpg": Image.fromarray(rgb[:150, :90, 1]),
        "palette.png": Image.fromarray(rgb[::-1]).convert("P"),
        "small.jpg": Image.fromarray(rgb[:37, :53]),
    }
    for name, image in paths.items():
        image.save(folder / name)
    return [folder / name for name in paths]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("images"))


def test_images_are_read_as_keras_reads_them(images):
    import keras

    for path in images:
        for size in (None, (224, 224), (61, 97)):
            ours = kjax_core.load_image(path, target_size=size)
            theirs = keras.utils.img_to_array(keras.utils.load_img(path, target_size=size))
            assert ours.dtype == np.float32 and np.array_equal(ours, theirs), (path.name, size)
        ours = kjax_core.load_image(path, target_size=(50, 70), interpolation="bilinear")
        theirs = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(50, 70), interpolation="bilinear"))
        assert np.array_equal(ours, theirs)


@pytest.fixture(scope="module")
def mnv2(tmp_path_factory):
    """A "pretrained" mobilenetv2 (alpha 0.35, with its softmax top): random weights, calibrated
    statistics, saved as Keras ships its imagenet file."""
    _, keras_model = reference_model("mobilenetv2", alpha=0.35)
    path = save_legacy_h5(keras_model, tmp_path_factory.mktemp("mnv2") / MNV2_FILE)
    return keras_model, path


def test_predict_equals_keras(mnv2, images, serve_weights, keras_class_index, tmp_path, monkeypatch,
                              capsys):
    import keras
    from keras.applications import mobilenet_v2

    keras_model, path = mnv2
    serve_weights[MNV2_FILE] = path
    monkeypatch.setenv("KJAX_CACHE", str(tmp_path / "cache"))

    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224)))
                      for p in images])
    probabilities = np.asarray(keras_model(mobilenet_v2.preprocess_input(batch)))
    expected = keras_class_index(probabilities, top=3)

    args = ["predict", "mobilenetv2", "--set", "alpha=0.35", *images, "--top", "3", "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "translating mobilenetv2 (imagenet) once into the kjax cache" in err
    got = json.loads(out)
    assert [row["image"] for row in got] == [str(p) for p in images]
    for row, want in zip(got, expected):
        assert [(p["class"], p["label"]) for p in row["predictions"]] == [w[:2] for w in want]
        np.testing.assert_allclose([p["probability"] for p in row["predictions"]],
                                   [float(w[2]) for w in want], rtol=1e-4, atol=1e-6)
    # The top classes differ between images: the comparison means something.
    assert len({row["predictions"][0]["class"] for row in got}) > 1

    # Again: from the cache, without asking Keras for anything; the table for people.
    asked = len(serve_weights["_asked"])
    code, out, err = run_cli(["predict", "mobilenetv2", "--set", "alpha=0.35", images[0], "-k", "2"], capsys)
    assert code == 0 and err == "" and len(serve_weights["_asked"]) == asked
    assert expected[0][0][1] in out and "probability" in out
    # The cache entry is an ordinary output directory: predict takes it as well.
    [entry] = kjax_core.cache.cache_entries()
    code, out, err = run_cli(["predict", entry["path"], images[0], "--top", "3", "--json"], capsys)
    assert code == 0, err
    assert [p["class"] for p in json.loads(out)[0]["predictions"]] == [w[0] for w in expected[0]]


@pytest.mark.parametrize("args,code,message", [
    (["--set", "include_top=false"], 2, "has no ImageNet classifier to predict with (include_top=False)"),
    (["--set", "classes=10"], 2, "(classes=10)"),
    (["--set", "classifier_activation=none"], 2, "(classifier_activation=None)"),
    (["--weights", "none"], 1, "kjax predict needs trained weights"),
    (["--weights", "imagenet-i160"], 1, "has no weight set 'imagenet-i160'"),
])
def test_predict_refusals_are_one_line_and_cheap(args, code, message, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KJAX_CACHE", str(tmp_path / "cache"))
    got, out, err = run_cli(["predict", "mobilenetv2", images[0], *args], capsys)
    assert got == code and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "cache").exists()


def test_predict_bad_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KJAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "notes.jpg").write_text("not an image")
    for path, message in [(tmp_path / "missing.jpg", "image not found"),
                          (tmp_path / "notes.jpg", "is not an image Pillow can read"),
                          (tmp_path, "is a folder, not an image file")]:
        code, out, err = run_cli(["predict", "mobilenetv2", path], capsys)
        assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "cache").exists()  # refused before any translation


def test_predict_an_output_without_top(tmp_path, capsys):
    translation = kjax_core.translate("mobilenetv2", "none", alpha=0.35, include_top=False,
                                      input_shape=(32, 32, 3))
    kjax_core.save(translation, tmp_path / "features")
    code, out, err = run_cli(["predict", tmp_path / "features", tmp_path / "any.jpg"], capsys)
    assert code == 2 and "mobilenetv2 has no ImageNet classifier to predict with (include_top=False)" in err


def test_image_batch_shape_errors():
    image = np.zeros((224, 224, 3), np.float32)
    with pytest.raises(kjax_core.InputError, match=r"got one image of shape \(224, 224, 3\): add a batch axis"):
        kjax_core.check_images(image, "resnet50")
    with pytest.raises(kjax_core.InputError, match=r"channels come last in Keras, transpose"):
        kjax_core.check_images(np.zeros((2, 3, 224, 224)), "resnet50")
    kjax_core.check_images(image[None], "resnet50")


def test_the_class_index_ships_with_the_package():
    """pyproject.toml's package data covers the file (a wheel built from it holds it)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["kjax_core"]
    assert any(fnmatch.fnmatch("data/imagenet_class_index.json", p) for p in patterns)
    assert any(d.lower().startswith("pillow") for d in config["project"]["dependencies"])
