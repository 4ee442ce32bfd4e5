"""Test setup: TensorFlow is the Keras reference backend; keep its native logging quiet."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN allocator pools what a worker once needed and never gives it back: with it
# each pytest worker stayed at 6-12 GB after the deep models' tests, and two such workers
# overflowed CI's 24 GB. The system allocator returns what the tests free (a worker idles at
# ~1 GB after convnextxlarge's contract, whose peak also falls from 8.6 to 5.7 GB) for ~3% more
# time on the TensorFlow side.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
# Tests write no compiled programs to the user's cache (tests/test_fold.py turns it on in a
# folder of its own).
os.environ.setdefault("KJAX_COMPILATION_CACHE", "off")
# Keep XLA from using fewer bits anywhere (float32 parity is measured against Keras' own error).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# The default tier compiles every model on tiny inputs, where LLVM's optimisations cost far more
# than they save: level 0 compiles DenseNet201 in 3.3 s instead of 10.3 s. It changes code
# generation only (no HLO pass, no reassociation: the same arithmetic); `nox -s full` runs with
# XLA's defaults (KJAX_TEST_XLA_DEFAULTS=1).
# JAX only: TensorFlow's own XLA (Keras' grouped convolutions on CPU: RegNet, ConvNeXt) runs the
# reference's convolutions with it, where level 0 costs far more than it saves (RegNetX320's
# contract: 63 s at level 0, 24 s at the defaults). Each library parses XLA_FLAGS once, at its first
# compilation: JAX compiles once here with the flag, and TensorFlow later finds it gone.
if not os.environ.get("KJAX_TEST_XLA_DEFAULTS"):
    _flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [_flags, "--xla_backend_optimization_level=0"]))
    import jax  # noqa: E402

    jax.jit(lambda x: x + 1)(0.0).block_until_ready()
    os.environ["XLA_FLAGS"] = _flags


import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import gc  # noqa: E402

import pytest  # noqa: E402


def _resident_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def pytest_generate_tests(metafunc):
    from family_suite import generate

    generate(metafunc)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def _return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc keeps them otherwise)."""
    if hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


# A full collection runs once the process holds more than this many GB; after one, the mark moves to
# 1 GB above what the collection left (memory a module fixture still holds is not collected again
# and again after every test).
_COLLECT_ABOVE_GB = 3.0
_collect_above_gb = _COLLECT_ABOVE_GB


@pytest.fixture(autouse=True)
def _release_keras_models():
    """Keras keeps every model it built reachable from its global state (measured: +120 MB per
    ResNet50 built, never freed): after each test, clear both Keras sessions (models a test still
    holds keep working) and JAX's tracing caches, and return freed memory to the system.

    JAX's caches keep every traced program's jaxpr: without clearing them a worker's Python
    objects grew from 0.5 to 1 million over 22 zoo contracts, and each full collection with them
    (0.3 s -> 0.9 s; 1-2.5 s late in a run, when the 3 GB mark was passed after every test:
    1,390 s of CI's teardowns). Clearing them costs 0.02-0.1 s."""
    global _collect_above_gb
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session(free_memory=False)
    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].backend.clear_session()
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    if not os.path.exists("/proc/self/statm"):
        return
    _return_freed_memory()
    if _resident_gb() > _collect_above_gb:
        gc.collect()
        _return_freed_memory()
        _collect_above_gb = max(_COLLECT_ABOVE_GB, _resident_gb() + 1.0)


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
