"""Training-step benchmark: one SGD step of kjax against the same step of Keras 3 on JAX.

    python benchmarks/train_step.py                                  # resnet50, efficientnetb0
    python benchmarks/train_step.py --models resnet50 --size 64 --batch 4 --reps 10

One step, both engines: logits of a batch of random images (random weights, Keras' own
initialisation: ``weights=None``, ``classifier_activation=None``), softmax cross-entropy against
random integer labels, ``jax.value_and_grad`` over the trainable parameters with the BatchNorm
statistics as the auxiliary output (batch statistics, moving averages updated), then an
``optax.sgd`` update; all in one ``jax.jit``, the state donated and fed to the next step.

    kjax       ``kjax_core.translate(name, None, classifier_activation=None, input_shape=...)``,
               ``module.apply(variables, x, train=True, mutable=["batch_stats"],
               rngs={"dropout": key})``, a new dropout key each step (split inside the step);
    keras-jax  ``keras.applications.<Name>(weights=None, input_shape=..., classifier_activation=None)``,
               ``model.stateless_call(trainable, non_trainable, x, training=True)`` (the
               non-trainable state carries the BatchNorm statistics and the dropout seed).

Keras' backend is fixed per process, so each engine runs in its own worker process (this script
with ``--worker ENGINE``, JSON lines as in benchmarks/worker.py). The driver asks the engines in
turn for one timed step each, rotating who goes first, so that a disturbance of the machine falls
on both alike. Compile time is the first call minus the median step (tracing, lowering, XLA;
each worker compiles a small gradient first, so that XLA's one-time start is in neither).
After the timed steps each worker traces, lowers and compiles a fresh ``jax.jit`` of the same step
once more, timing the two parts apart and counting the fusions XLA made (``--no-breakdown`` skips
it).

Writes ``<out>/<tag>.md`` and ``<out>/<tag>.json`` (tag ``train-step-<date>`` by default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = ("resnet50", "efficientnetb0")
ENGINES = ("kjax", "keras-jax")
LEARNING_RATE = 0.01


# ---------------------------------------------------------------- worker (one engine, one process)

def _data(batch: int, size: int, classes: int = 1000):
    import numpy as np

    rng = np.random.default_rng(batch)
    x = rng.uniform(-1.0, 1.0, size=(batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, size=(batch,)).astype(np.int32)
    return x, y


def _leaves_changed(before, after) -> bool:
    import jax
    import numpy as np

    return any(not np.array_equal(a, b) for a, b in
               zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)))


class _Trainer:
    """One engine's compiled train step over its state ``(trainable, statistics, optimiser...)``,
    set by the subclass with ``jitted``, ``state``, ``x`` and ``y``."""

    def stats(self):
        return self.state[1]

    def __call__(self) -> float:
        *state, loss = self.jitted(*self.state, self.x, self.y)
        self.state = tuple(state)
        import jax

        jax.block_until_ready(self.state)
        return float(loss)


class KjaxTrainer(_Trainer):
    def __init__(self, model: str, size: int, batch: int) -> None:
        import jax
        import optax

        import kjax_core

        translation = kjax_core.translate(model, None, classifier_activation=None,
                                          input_shape=(size, size, 3))
        module = translation.module
        variables = translation.variables
        extra = sorted(set(variables) - {"params", "batch_stats"})
        if extra:
            raise RuntimeError(f"{model}: variable collections {extra} besides params/batch_stats")
        tx = optax.sgd(LEARNING_RATE)

        def loss_fn(params, batch_stats, x, y, key):
            logits, updates = module.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": key})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        def step(params, batch_stats, opt_state, key, x, y):
            key, dropout_key = jax.random.split(key)
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, batch_stats, x, y, dropout_key)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, batch_stats, opt_state, key, loss

        self.step_fn, self.donate = step, (0, 1, 2, 3)
        self.jitted = jax.jit(step, donate_argnums=self.donate)
        params = jax.device_put(variables["params"])  # on the device: donated each step
        self.state = (params, jax.device_put(variables.get("batch_stats", {})), tx.init(params),
                      jax.random.key(0))
        self.x, self.y = (jax.numpy.asarray(a) for a in _data(batch, size))
        self.stats0 = jax.tree_util.tree_map(lambda a: jax.numpy.array(a, copy=True), self.state[1])
        self.parameters = sum(a.size for a in jax.tree_util.tree_leaves(params))



def breakdown(trainer) -> dict:
    """Where the compile time goes: trace and lower a fresh ``jax.jit`` of the same step (a new
    function object, so nothing is cached), then XLA-compile it; with the number of fusions and
    instructions in the optimised HLO."""
    import jax

    fresh = jax.jit(lambda *a: trainer.step_fn(*a), donate_argnums=trainer.donate)
    t0 = time.perf_counter()
    lowered = fresh.lower(*trainer.state, trainer.x, trainer.y)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo = compiled.as_text() or ""
    entry = hlo[hlo.find("ENTRY"):]
    return {"lower_s": t1 - t0, "xla_s": t2 - t1,
            "fusions": entry.count(" fusion("), "entry_instructions": entry.count("\n  ")}


class KerasJaxTrainer(_Trainer):
    def __init__(self, model: str, size: int, batch: int) -> None:
        import jax
        import optax

        import kjax_core

        spec = kjax_core.get_spec(model)
        if spec.keras_constructor.startswith("tf_keras"):
            raise RuntimeError(f"{model} is a tf_keras model, which Keras on JAX cannot build")
        keras_model = spec.load(spec.keras_constructor)(
            weights=None, input_shape=(size, size, 3), classifier_activation=None)
        tx = optax.sgd(LEARNING_RATE)

        def loss_fn(trainable, non_trainable, x, y):
            logits, non_trainable = keras_model.stateless_call(
                trainable, non_trainable, x, training=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, non_trainable

        def step(trainable, non_trainable, opt_state, x, y):
            (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                trainable, non_trainable, x, y)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            return trainable, non_trainable, opt_state, loss

        self.step_fn, self.donate = step, (0, 1, 2)
        self.jitted = jax.jit(step, donate_argnums=self.donate)
        trainable = [v.value for v in keras_model.trainable_variables]
        non_trainable = [v.value for v in keras_model.non_trainable_variables]
        self.state = (trainable, non_trainable, tx.init(trainable))
        self.x, self.y = (jax.numpy.asarray(a) for a in _data(batch, size))
        self.stats0 = [jax.numpy.array(a, copy=True) for a in non_trainable]
        self.parameters = sum(int(a.size) for a in trainable)



def warm_up() -> None:
    """Compile one small convolution's gradient, so that the first model's compile time does not
    carry the process' one-time start of XLA's CPU compiler (Keras on JAX would already have paid
    it drawing its initial weights, kjax not)."""
    import jax
    import jax.numpy as jnp

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jax.nn.relu(y) ** 2)

    w, x = jnp.ones((3, 3, 3, 8)), jnp.ones((2, 8, 8, 3))
    jax.block_until_ready(jax.jit(jax.value_and_grad(loss))(w, x))


def worker(engine: str) -> None:
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers; any printing goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import traceback

    warm_up()
    trainer = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "quit":
                break
            if op == "load":
                trainer = None
                start = time.perf_counter()
                cls = KjaxTrainer if engine == "kjax" else KerasJaxTrainer
                trainer = cls(**request)
                setup = time.perf_counter() - start
                t0 = time.perf_counter()
                loss = trainer()
                first = time.perf_counter() - t0
                answer = {"first_s": first, "setup_s": setup, "loss": loss,
                          "parameters": trainer.parameters,
                          "stats_updated": _leaves_changed(trainer.stats0, trainer.stats())}
            elif op == "step":
                cpu, start = time.process_time(), time.perf_counter()
                loss = trainer()
                answer = {"s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                          "loss": loss}
            elif op == "breakdown":
                answer = breakdown(trainer)
            elif op == "info":
                import importlib.metadata as md

                answer = {"versions": {d: md.version(d) for d in
                                       ("jax", "jaxlib", "flax", "keras", "optax", "numpy")}}
            else:
                raise ValueError(f"unknown op {op}")
            answer["ok"] = True
        except Exception as error:  # reported to the driver, which skips what failed
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        protocol.write(json.dumps(answer) + "\n")


# ---------------------------------------------------------------------------------------- driver

sys.path.insert(0, str(HERE))
from run import Worker as _Worker, load_average, machine  # noqa: E402  (benchmarks/run.py)


class Worker(_Worker):
    """run.py's worker process and protocol, running this script's ``--worker ENGINE``."""

    def __init__(self, engine: str, log) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("KERAS_BACKEND", None)
        self.engine = engine
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", engine],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            cwd=HERE.parent)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{args.tag}.log", "w")
    workers = {engine: Worker(engine, log) for engine in ENGINES}
    result = {
        "tag": args.tag, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "load_before": load_average(),
        "size": args.size, "batch": args.batch, "reps": args.reps, "learning_rate": LEARNING_RATE,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": [], "skipped": [],
    }
    try:
        result["versions"] = workers["kjax"].ask("info").get("versions", {})
        for model in args.models:
            loaded = {}
            for engine, worker in workers.items():
                answer = worker.ask("load", model=model, size=args.size, batch=args.batch)
                if not answer["ok"]:
                    result["skipped"].append(f"{model} {engine}: {answer['error']}")
                    continue
                loaded[engine] = answer
            engines = list(loaded)
            times = {e: [] for e in engines}
            cpu = {e: [] for e in engines}
            losses = {e: [] for e in engines}
            for rep in range(args.reps):
                shift = rep % max(len(engines), 1)
                for engine in engines[shift:] + engines[:shift]:
                    answer = workers[engine].ask("step")
                    if not answer["ok"]:
                        raise RuntimeError(f"{model} {engine}: {answer['error']}")
                    times[engine].append(answer["s"])
                    cpu[engine].append(answer["cpu_s"])
                    losses[engine].append(answer["loss"])
            split = {}
            if args.breakdown:
                for engine in engines:
                    answer = workers[engine].ask("breakdown")
                    split[engine] = answer if answer["ok"] else {}
            for engine in engines:
                t = sorted(times[engine])
                median = statistics.median(t)
                q1, q3 = statistics.quantiles(t, n=4)[0::2] if len(t) > 1 else (t[0], t[0])
                result["rows"].append({
                    "model": model, "engine": engine, "median_s": median, "q1_s": q1, "q3_s": q3,
                    "min_s": t[0], "cpu_median_s": statistics.median(cpu[engine]),
                    "first_s": loaded[engine]["first_s"],
                    "compile_s": max(loaded[engine]["first_s"] - median, 0.0),
                    "setup_s": loaded[engine]["setup_s"],
                    "parameters": loaded[engine]["parameters"],
                    "stats_updated": loaded[engine]["stats_updated"],
                    "loss_first": loaded[engine]["loss"], "loss_last": losses[engine][-1],
                    "times_s": times[engine],
                    **{k: split.get(engine, {}).get(k) for k in
                       ("lower_s", "xla_s", "fusions", "entry_instructions")},
                })
            line = ", ".join(f"{e} {statistics.median(times[e]) * 1e3:.1f} ms" for e in engines)
            print(f"{model}: {line}  (load {load_average()})", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
        log.close()
    result["load_after"] = load_average()
    by_key = {(r["model"], r["engine"]): r for r in result["rows"]}
    for row in result["rows"]:
        peer = by_key.get((row["model"], "keras-jax"))
        if row["engine"] == "kjax" and peer:
            row["step_ratio"] = row["median_s"] / peer["median_s"]
            row["compile_ratio"] = row["compile_s"] / peer["compile_s"] if peer["compile_s"] else None
    return result


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    lines = [
        f"## Training step `{result['tag']}` ({result['date']})",
        "",
        f"{result['machine']['cpu']}, {result['machine']['affinity']} cores; load average before {result['load_before']}, "
        f"after {result['load_after']}. Input {result['size']}x{result['size']}x3, batch "
        f"{result['batch']}, {result['reps']} interleaved steps per engine; optax.sgd("
        f"{result['learning_rate']}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | engine | compile (s) | median step (ms) | IQR (ms) | kjax / Keras-JAX step | "
        "kjax / Keras-JAX compile | trace+lower (s) | XLA compile (s) | fusions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        step = f"{r['step_ratio']:.2f}" if r.get("step_ratio") is not None else "-"
        comp = f"{r['compile_ratio']:.2f}" if r.get("compile_ratio") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['compile_s']:.2f} | {r['median_s'] * 1e3:.1f} | "
            f"{(r['q3_s'] - r['q1_s']) * 1e3:.1f} | {step} | {comp} | "
            f"{_fmt(r.get('lower_s'), '.2f')} | {_fmt(r.get('xla_s'), '.2f')} | "
            f"{_fmt(r.get('fusions'), 'd')} |")
    notes = [f"{r['model']} {r['engine']}: BatchNorm statistics not updated"
             for r in result["rows"] if not r["stats_updated"]]
    if result["skipped"] or notes:
        lines += ["", "Skipped or suspicious: " + "; ".join(result["skipped"] + notes)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=10, help="timed steps per engine")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the extra trace/lower and XLA compile of each step, after timing")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default=f"train-step-{dt.date.today().isoformat()}")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    args.models = [m for m in args.models.split(",") if m]
    start = time.perf_counter()
    result = run(args)
    out = Path(args.out)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / f"{args.tag}.md").write_text(text)
    print(text)
    print(f"wrote {out / args.tag}.{{json,md}} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
