"""One benchmark engine in its own process, answering the driver (benchmarks/run.py) one request at
a time: JSON lines on stdin, JSON lines on the file descriptor that was stdout at start (Keras'
printing is sent to stderr).

Engines (KERAS_BACKEND is fixed per process, so each needs its own):

    kjax       the Flax model of kjax, translated from a Keras model with random weights, saved and
               loaded again (kjax_core.load); variants: ``kjax`` (``jax.jit(module.apply)``),
               ``kjax-fast`` (kjax_core.predictor as it comes: BatchNorm folded, on CPU Eigen
               convolutions), ``kjax-bf16`` (the same with bfloat16 compute), ``kjax-ynn`` (the
               predictor with XLA's default options, ``xla_options={}``: YNNPACK convolutions),
               ``kjax-scan`` (the predictor with ``scan_blocks=True``: runs of blocks scanned)
               and ``kjax-fold`` (kjax_core.fold_batch_norm, then a plain jax.jit);
    keras-jax  Keras 3 on the JAX backend: ``model.stateless_call`` under jax.jit (for a family
               only tf_keras has, RegNet, the same graph written with Keras 3 layers:
               :data:`KERAS3_TWINS`);
    keras-tf   Keras 3 on TensorFlow: ``tf.function(model, jit_compile=True)`` (tf_keras' model
               for ResNet-RS and RegNet).

Requests: {"op": "info"}, {"op": "matmul"}, {"op": "load", "model": M, "batch": B,
"variants": [...]}, {"op": "step", "variant": V}, {"op": "quit"}.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import traceback

ENGINE = sys.argv[1]
os.environ["KERAS_BACKEND"] = "jax" if ENGINE == "keras-jax" else "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Keep the protocol channel clean: whatever prints goes to stderr.
_protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy as np  # noqa: E402

MATMUL_N = 2048


def _images(batch: int, size: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(batch)
    return rng.uniform(-1.0, 1.0, size=(batch, *size)).astype(np.float32)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class Engine:
    """A loaded model: ``steps[variant]()`` runs one batch to completion."""

    def __init__(self) -> None:
        self.steps: dict = {}

    def info(self) -> dict:
        import importlib.metadata as md

        found = {}
        for dist in ("jax", "jaxlib", "flax", "keras", "tensorflow", "numpy"):
            try:
                found[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
        return {"versions": found, "pid": os.getpid()}

    def step(self, variant: str) -> dict:
        """Wall time and this process' CPU time (all threads) of one step. CPU time is what a
        loaded machine disturbs least: time spent waiting for a core is not counted."""
        fn = self.steps[variant]
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        return {"s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}

    def load_keras(self, model: str) -> tuple:
        """(the Keras model of ``model`` with random weights, its input size, seconds to build)."""
        import kjax_core

        self.steps = {}
        spec = kjax_core.get_spec(model)
        start = time.perf_counter()
        if ENGINE == "keras-jax" and spec.keras_constructor.startswith("tf_keras"):
            keras_model = keras3_twin(spec)
        else:
            keras_model = spec.load(spec.keras_constructor)(weights=None)
        # Some Keras models take any image size (MobileNetV3 builds its input as (None, None, 3)
        # when no input_shape is given): run them at the spec's default size, as
        # kjax_core.translate does for the kjax engine.
        size = tuple(int(d) if d is not None else s
                     for d, s in zip(keras_model.inputs[0].shape[1:], spec.input_size))
        return keras_model, size, time.perf_counter() - start

    def first_call(self, name: str, step) -> dict:
        """Run ``step`` once (compiling it), keep it as variant ``name``; its first-call seconds."""
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        self.steps[name] = step
        return {name: first}


# Families that exist only in tf_keras, which Keras on JAX cannot run: the same graph written with
# Keras 3 layers, built by ``module:function(model name)`` (a module of benchmarks/).
KERAS3_TWINS = {"regnet": "keras3_regnet:build"}


def keras3_twin(spec):
    """The Keras 3 model standing in for a tf_keras one on the keras-jax engine."""
    import importlib

    ref = KERAS3_TWINS.get(spec.family)
    if ref is None:
        raise RuntimeError(f"{spec.name} is a tf_keras model, which Keras on JAX cannot build, and "
                           "benchmarks/ has no Keras 3 version of it")
    module, _, function = ref.partition(":")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return getattr(importlib.import_module(module), function)(spec.name)


class JaxMixin:
    def matmul(self) -> dict:
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(np.random.default_rng(0).standard_normal((MATMUL_N, MATMUL_N), np.float32))
        f = jax.jit(lambda a, b: a @ b)
        f(a, a).block_until_ready()
        seconds = _median_time(lambda: f(a, a).block_until_ready(), 7)
        return {"gflops": 2 * MATMUL_N**3 / seconds / 1e9, "framework": "jax"}


class Kjax(JaxMixin, Engine):
    def load(self, model: str, batch: int, variants: list[str]) -> dict:
        import jax
        import jax.numpy as jnp

        import kjax_core

        self.steps = {}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            translation = kjax_core.translate(model, weights=None)
            kjax_core.save(translation, os.path.join(tmp, "out"))
            module, variables = kjax_core.load(os.path.join(tmp, "out"))
        size = translation.input_shape
        del translation
        setup = time.perf_counter() - start
        x = jnp.asarray(_images(batch, size))
        flops = jax.jit(module.apply).lower(variables, x).cost_analysis()
        flops = float((flops[0] if isinstance(flops, list) else flops).get("flops", 0.0))
        firsts, prep = {}, {}
        for variant in variants:
            t0 = time.perf_counter()
            if variant == "kjax":  # what the README shows: the loaded model under jax.jit
                run = functools.partial(jax.jit(module.apply), variables)
            elif variant == "kjax-fold":  # folding alone, default XLA options
                m, v = kjax_core.fold_batch_norm(module, variables, input_shape=size)
                run = functools.partial(jax.jit(m.apply), v)
            elif variant in ("kjax-fast", "kjax-bf16", "kjax-ynn", "kjax-scan"):  # the predictor
                dtype = jnp.bfloat16 if variant == "kjax-bf16" else None
                options = {} if variant == "kjax-ynn" else None
                run = kjax_core.predictor(module, variables, dtype=dtype, input_shape=size,
                                          xla_options=options, compilation_cache=False,
                                          scan_blocks=variant == "kjax-scan")
            else:
                raise ValueError(f"unknown kjax variant {variant}")
            prep[variant] = time.perf_counter() - t0  # folding, casting: not compilation
            firsts.update(self.first_call(variant, lambda run=run: run(x).block_until_ready()))
        return {"first_s": firsts, "prep_s": prep, "flops_per_batch": flops, "setup_s": setup,
                "input_size": list(size)}


class KerasJax(JaxMixin, Engine):
    def load(self, model: str, batch: int, variants: list[str]) -> dict:
        import jax
        import jax.numpy as jnp

        keras_model, size, setup = self.load_keras(model)
        trainable = [v.value for v in keras_model.trainable_variables]
        non_trainable = [v.value for v in keras_model.non_trainable_variables]

        @jax.jit
        def apply(trainable, non_trainable, x):
            return keras_model.stateless_call(trainable, non_trainable, x, training=False)[0]

        x = jnp.asarray(_images(batch, size))
        first = self.first_call(
            "keras-jax", lambda: apply(trainable, non_trainable, x).block_until_ready())
        return {"first_s": first, "setup_s": setup, "input_size": list(size)}


class KerasTf(Engine):
    def matmul(self) -> dict:
        import tensorflow as tf

        a = tf.constant(np.random.default_rng(0).standard_normal((MATMUL_N, MATMUL_N), np.float32))
        f = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
        f(a, a).numpy()
        seconds = _median_time(lambda: f(a, a).numpy(), 7)
        return {"gflops": 2 * MATMUL_N**3 / seconds / 1e9, "framework": "tensorflow"}

    def load(self, model: str, batch: int, variants: list[str]) -> dict:
        import tensorflow as tf

        keras_model, size, setup = self.load_keras(model)
        apply = tf.function(lambda x: keras_model(x, training=False), jit_compile=True)
        x = tf.constant(_images(batch, size))
        first = self.first_call("keras-tf", lambda: apply(x).numpy())
        return {"first_s": first, "setup_s": setup, "input_size": list(size)}


def main() -> None:
    engine = {"kjax": Kjax, "keras-jax": KerasJax, "keras-tf": KerasTf}[ENGINE]()
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "quit":
                break
            if op == "info":
                answer = engine.info()
            elif op == "matmul":
                answer = engine.matmul()
            elif op == "load":
                answer = engine.load(**request)
            elif op == "step":
                answer = engine.step(request["variant"])
            else:
                raise ValueError(f"unknown op {op}")
            answer["ok"] = True
        except Exception as error:  # reported to the driver, which skips what failed
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        _protocol.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
