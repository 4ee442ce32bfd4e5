"""What every family's test file checks beyond the contract of tests/test_zoo.py, written once.

A family's test file subclasses :class:`FamilySuite` as ``class TestResNet(FamilySuite)`` and sets
the class attributes below; pytest collects the inherited tests for it (this base class's name does
not start with ``Test``, so it is not collected on its own). Parametrized tests take their values
from the class (``variant``, ``pooling``, ``imagenet``: :func:`generate`, called by conftest.py).
A test that does not apply to a family is set to None in its class (``test_x = None``), never
skipped; one the family checks otherwise is overridden. Family specifics stay in the family's file.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import kjax_core
from kjax_core.parity import assert_parity, assert_train_step, compare, reference_model, sample_images
from kjax_core.preprocessing import apply_mode

from helpers import assert_same_variables, random_translation, save_legacy_h5, show


class FamilySuite:
    #: the model checked at its default size in the default tier
    representative: str = ""
    #: every variant; all but the first are checked at their default size in the slow tier
    variants: tuple[str, ...] = ()
    #: odd, non-square (height, width) at which one Keras model built for any size is checked
    #: (slow tier), and the output shapes it gives there (batch 2; None: not asserted)
    small_sizes: tuple[tuple[int, int], ...] = ((67, 45), (33, 97))
    feature_shapes: tuple[tuple[int, ...], ...] | None = None
    #: (height, width) of the pooling test and the channels of its pooled output
    pooling_size: tuple[int, int] = (75, 61)
    channels: int = 0
    #: the Keras BatchNorm whose training-mode step is compared and its Flax batch_stats path
    #: (None: the family tests training mode in its own file)
    train_batch_norm: tuple[str, tuple[str, ...]] | None = None
    train_size: tuple[int, int] = (64, 48)
    #: Keras' imagenet file names of the representative with and without top (the imagenet path
    #: offline), and the size checked without top; None: the family's file tests it itself
    imagenet_files: dict[bool, str] | None = None
    #: the ``keras.applications`` module whose ``preprocess_input`` kjax must equal
    keras_preprocessing: str = ""
    #: False where Keras built for any size, ``(None, None, 3)``, is another graph than Keras built
    #: for the size (NASNet, MobileNet's correct-pad paddings): then each size gets its own model
    keras_any_size: bool = True

    def _parity(self, name, sizes, **options):
        """assert_parity at each size: one Keras model for all, or one per size."""
        if self.keras_any_size:
            return show(assert_parity(name, sizes=list(sizes), **options))
        channels = kjax_core.get_spec(name).input_size[2]
        return [report for h, w in sizes
                for report in show(assert_parity(name, input_shape=(h, w, channels), **options))]

    def _keras_shape(self, size, channels=3):
        return (None, None, channels) if self.keras_any_size else (*size, channels)

    def test_logits_default_size(self):
        (report,) = show(assert_parity(self.representative, classifier_activation=None))
        assert report.output_shape == (2, 1000)

    @pytest.mark.slow
    def test_logits_default_size_of_every_variant(self, variant):
        show(assert_parity(variant, classifier_activation=None))

    @pytest.mark.slow
    def test_feature_maps_one_keras_model_for_any_size(self, variant_or_representative):
        reports = self._parity(variant_or_representative, self.small_sizes, include_top=False)
        if self.feature_shapes is not None:
            assert [r.output_shape for r in reports] == list(self.feature_shapes)

    def test_pooling(self, pooling):
        (report,) = self._parity(self.representative, [self.pooling_size], include_top=False,
                                 pooling=pooling, float32=False)
        assert report.output_shape == (2, self.channels)

    def test_train_mode_matches_keras_training(self):
        """train=True uses batch statistics and updates the moving ones as Keras' training=True."""
        if self.train_batch_norm is None:
            pytest.fail("set train_batch_norm, or override this test in the family's file")
        spec = kjax_core.get_spec(self.representative)
        translation, keras_model = reference_model(
            self.representative, include_top=False,
            input_shape=self._keras_shape(self.train_size, spec.input_size[2]),
            calibration_shape=self.train_size)
        x = apply_mode(spec.preprocessing, sample_images((4, *self.train_size, 3), 21))
        assert_train_step(translation, keras_model, x, *self.train_batch_norm)

    def test_imagenet_offline(self, tmp_path, serve_weights, imagenet):
        """The imagenet path with the file name Keras asks for, served locally (see conftest):
        kjax's translation of that file holds exactly the numbers of the translation of the Keras
        model that wrote it (random, so that no two weights are alike), which the contract holds
        to Keras. Where the set changes the graph (EfficientNet's imagenet rescaling) the
        translation of the file is judged against that Keras model in float64 instead."""
        include_top, fname = imagenet
        options = dict(include_top=include_top)
        if include_top:
            options["classifier_activation"] = None
        spec = kjax_core.get_spec(self.representative)
        size = spec.input_size[:2] if include_top else self.pooling_size
        changes_graph = "imagenet" in spec.weights_options
        shape = None if include_top else self._keras_shape(size)
        if changes_graph:
            _, keras_model = reference_model(self.representative, input_shape=shape,
                                             calibration_shape=size, **options)
        else:
            direct, keras_model = random_translation(self.representative, shape, **options)
        serve_weights[fname] = save_legacy_h5(keras_model, tmp_path / fname)

        translation = kjax_core.translate(self.representative, "imagenet", **options)
        assert serve_weights["_asked"] == [fname]
        assert translation.reference.weights_file == str(tmp_path / fname)
        if changes_graph:
            (report,) = show([compare(translation, keras_model, sample_images((2, *size, 3), 11),
                                      float32=False)])
            assert report.ok, report.problems
            return
        assert_same_variables(translation.variables, direct.variables)

    def test_preprocess_input_is_keras(self):
        module = importlib.import_module(self.keras_preprocessing)
        images = sample_images((2, 9, 7, 3), 1)
        expected = module.preprocess_input(images.copy())
        for name in self.variants:
            np.testing.assert_allclose(kjax_core.preprocess_input(name, images), expected,
                                       rtol=1e-6)


def generate(metafunc) -> None:
    """Parametrize a :class:`FamilySuite` test from its class (called by conftest.py)."""
    cls = metafunc.cls
    if cls is None or not issubclass(cls, FamilySuite):
        return
    files = sorted((cls.imagenet_files or {}).items(), reverse=True)
    values = {
        "variant": (list(cls.variants[1:]), None),
        "variant_or_representative": (list(cls.variants) or [cls.representative], None),
        "pooling": (["avg", "max"], None),
        "imagenet": (files, [f"top={top}" for top, _ in files]),
    }
    for name, (params, ids) in values.items():
        if name not in metafunc.fixturenames:
            continue
        # An empty parameter set would be a silent skip: a family without it opts out instead.
        assert params, (f"{cls.__name__}.{metafunc.function.__name__} has no '{name}' to run "
                        f"for; set it on the class, or set {metafunc.function.__name__} = None")
        metafunc.parametrize(name, params, ids=ids)
