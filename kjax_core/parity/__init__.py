"""The parity harness: is the Flax model what the Keras model is, on weights that expose errors?

Shared by ``kjax verify``, the test suite, and plugin authors' own tests.

The judge is float64. A deep net on random weights amplifies float32 rounding by 10^3-10^4, so a
float32 tolerance is both too strict (exact twins of deep nets fail it) and too loose (a wrong
epsilon or a constant rounded to float32 hides under it). So the Keras reference (on TensorFlow)
is built a second time in float64 with the same weights (:func:`keras_float64`), and

- kjax in float64 must equal it within :data:`FLOAT64_TOLERANCE` (a correct twin lands near 1e-14);
- kjax in float32 must be no further from it than :data:`FLOAT32_FACTOR` times Keras' own float32
  model (float32 rounding, yes; anything more, no).

Default Keras weights (BatchNorm at mean 0, variance 1, gamma 1, beta 0; zero biases) hide dropped or
swapped weights, and arbitrary BatchNorm statistics make a deep net forget its input or amplify any
difference into chaos (in float64 too: measured on EfficientNetB7 and ResNet-RS 152, below). So the
reference is prepared in three steps:

1. :func:`randomize` every weight (kernels scaled by fan-in, gamma, beta, biases, Normalization
   mean and variance);
2. :func:`calibrate` statistics on data: each Normalization layer gets the mean/variance of what it
   really receives; each BatchNorm, in model order, the statistics of what it really receives once
   the earlier ones are set ("in_order"; or all at once from one training-mode pass, "batch");
3. perturb those statistics, so that a swapped mean/variance or an ignored statistic still shows.

:func:`compare` then proves that the comparison can fail: the outputs for different images, and a
deliberately broken translation (the first BatchNorm's statistics reset, the layer a deep net forgets
first), must differ from the reference by more than :data:`MIN_SENSITIVITY`.
"""

from .features import keras_feature_layers, keras_features
from .judge import (
    FLOAT32_FACTOR, FLOAT64_TOLERANCE, MIN_SENSITIVITY, ParityReport, assert_parity,
    assert_train_step, break_translation, check, compare, reference_model, relative_error,
)
from .reference import (
    CALIBRATIONS, PARITY_DEFAULTS, calibrate, calibrate_normalization, float64_module,
    float64_variables, keras_float64, parity_settings, prepare_reference, randomize, sample_images,
)

__all__ = [
    "CALIBRATIONS", "FLOAT32_FACTOR", "FLOAT64_TOLERANCE", "MIN_SENSITIVITY", "PARITY_DEFAULTS",
    "ParityReport", "assert_parity", "assert_train_step", "break_translation", "calibrate",
    "calibrate_normalization", "check", "compare", "float64_module", "float64_variables",
    "keras_feature_layers", "keras_features", "keras_float64", "parity_settings",
    "prepare_reference", "randomize", "reference_model", "relative_error", "sample_images",
]
