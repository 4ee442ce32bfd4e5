"""Translation cost: `kjax translate` against Keras itself building the model and loading the same
weights file, in wall time and peak memory (each run a fresh process; runs interleaved).

    python benchmarks/translate_bench.py                         # resnet50, resnet152, efficientnetb7
    python benchmarks/translate_bench.py --models resnet50 --reps 2 --tag smoke

Engines:
    keras-tf        python: import Keras (TensorFlow backend), build the model, load_weights(file)
    keras-jax       the same on Keras' JAX backend
    kjax            `kjax translate MODEL -o OUT --weights FILE --force` as the user runs it
    kjax-jax        the same with KERAS_BACKEND=jax (what kjax_core.translate chooses on its own)
    kjax-tf         the same with KERAS_BACKEND=tensorflow

The weights files are legacy HDF5 files like Keras' imagenet files, written once from randomly
initialised models into --weights-dir (a few hundred MB; nothing is downloaded). Writes
``<out>/<tag>.json`` and ``<out>/<tag>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("keras-tf", "keras-jax", "kjax", "kjax-jax", "kjax-tf")

KERAS_LOAD = """
import importlib, sys
module, _, attr = sys.argv[1].partition(":")
model = getattr(importlib.import_module(module), attr)(weights=None)
model.load_weights(sys.argv[2])
"""

MAKE_WEIGHTS = """
import importlib, sys, h5py
from keras.src.legacy.saving import legacy_h5_format
module, _, attr = sys.argv[1].partition(":")
model = getattr(importlib.import_module(module), attr)(weights=None)
if module.startswith("tf_keras"):
    model.save_weights(sys.argv[2])  # tf_keras writes the legacy HDF5 format itself
else:
    with h5py.File(sys.argv[2], "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
"""


def _env(backend: str | None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    return env


def run_measured(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak resident memory in MiB) of a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def weights_file(model: str, constructor: str, directory: Path) -> Path:
    path = directory / f"{model}.h5"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        print(f"writing {path}", flush=True)
        partial = path.with_suffix(".partial.h5")
        subprocess.run([sys.executable, "-c", MAKE_WEIGHTS, constructor, str(partial)],
                       env=_env("tensorflow"), check=True, stdout=subprocess.DEVNULL)
        partial.rename(path)
    return path


def command_for(engine: str, model: str, constructor: str, file: Path, out: Path):
    if engine.startswith("keras"):
        backend = "jax" if engine == "keras-jax" else "tensorflow"
        return [sys.executable, "-c", KERAS_LOAD, constructor, str(file)], _env(backend)
    kjax = shutil.which("kjax") or "kjax"
    backend = {"kjax": None, "kjax-jax": "jax", "kjax-tf": "tensorflow"}[engine]
    return [kjax, "translate", model, "-o", str(out), "--weights", str(file), "--force"], _env(backend)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,resnet152,efficientnetb7")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--weights-dir", default=os.path.join(tempfile.gettempdir(), "kjax-bench-weights"))
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default="translate")
    args = parser.parse_args(argv)

    import kjax_core

    engines = [e for e in args.engines.split(",") if e]
    known = set(kjax_core.list_models())
    models = [m for m in args.models.split(",") if m in known]
    result = {"tag": args.tag, "date": dt.datetime.now().isoformat(timespec="seconds"),
              "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
              "cores": len(os.sched_getaffinity(0)), "reps": args.reps, "rows": [],
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            spec = kjax_core.get_spec(model)
            file = weights_file(model, spec.keras_constructor, Path(args.weights_dir))
            runs = {engine: [] for engine in engines}
            for rep in range(args.reps):
                order = engines[rep % len(engines):] + engines[:rep % len(engines)]
                for engine in order:
                    command, env = command_for(engine, model, spec.keras_constructor, file,
                                               Path(tmp) / "out")
                    runs[engine].append(run_measured(command, env))
            base = {k: statistics.median(w for w, _ in runs[k]) for k in engines}
            base_mem = {k: statistics.median(m for _, m in runs[k]) for k in engines}
            for engine in engines:
                row = {"model": model, "engine": engine, "file_mb": file.stat().st_size / 2**20,
                       "wall_s": base[engine], "peak_mib": base_mem[engine], "runs": runs[engine]}
                for peer in ("keras-tf", "keras-jax"):
                    if peer in base:
                        row[f"time_vs_{peer}"] = base[engine] / base[peer]
                        row[f"memory_vs_{peer}"] = base_mem[engine] / base_mem[peer]
                result["rows"].append(row)
                print(f"{model} {engine}: {base[engine]:.1f} s, {base_mem[engine]:.0f} MiB", flush=True)
    result["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"## Translation cost `{args.tag}` ({result['date']})", "",
        f"{result['cores']} cores; load average before {result['load_before']}, after "
        f"{result['load_after']}; median of {args.reps} interleaved runs, each a fresh process.", "",
        f"Command: `{result['command']}`", "",
        "| model | weights file (MB) | engine | wall (s) | peak memory (MiB) | time / keras-tf | "
        "memory / keras-tf | time / keras-jax | memory / keras-jax |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['file_mb']:.0f} | {r['engine']} | {r['wall_s']:.1f} | "
            f"{r['peak_mib']:.0f} | {r.get('time_vs_keras-tf', 0):.2f} | "
            f"{r.get('memory_vs_keras-tf', 0):.2f} | {r.get('time_vs_keras-jax', 0):.2f} | "
            f"{r.get('memory_vs_keras-jax', 0):.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
