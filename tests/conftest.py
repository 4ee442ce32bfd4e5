"""Test setup: TensorFlow is the Keras reference backend; keep its native logging quiet."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Parity is measured in float32 on the CPU; keep XLA from using fewer bits anywhere.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


import pytest  # noqa: E402


@pytest.fixture
def serve_weights(monkeypatch):
    """serve[fname] = local path: Keras' (and tf_keras') get_file return that file, so a Keras
    constructor with weights="imagenet" runs exactly as with a network; any other file fails as it
    would offline. serve["_asked"] lists the file names asked for."""
    from keras.src.utils import file_utils
    from tf_keras.src.utils import data_utils

    served, asked = {}, []

    def get_file(fname=None, origin=None, **kwargs):
        asked.append(fname)
        if fname not in served:
            raise Exception(f"URL fetch failure on {origin}: None -- offline")
        return str(served[fname])

    monkeypatch.setattr(file_utils, "get_file", get_file)
    monkeypatch.setattr(data_utils, "get_file", get_file)
    served["_asked"] = asked
    return served
