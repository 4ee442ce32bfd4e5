"""Test setup: TensorFlow is the Keras reference backend; keep its native logging quiet."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Parity is measured in float32 on the CPU; keep XLA from using fewer bits anywhere.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
