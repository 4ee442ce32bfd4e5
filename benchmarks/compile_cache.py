"""The predictor's compiled-program cache: the first result of a fresh process, cold (empty cache)
and warm (the programs a previous process kept), side by side with the cache off.

    python benchmarks/compile_cache.py [--models resnet50,efficientnetb0,...] [--batch 1] [--runs 3]

Each run is a fresh process (`python -c`) building the model with random weights at its default
size, making a `kjax_core.predictor` and timing its first call (compile + one step) and a second call
(the step alone). Per model, in turn: cache off, cold (a new empty folder), warm (the folder the
cold run filled); repeated `--runs` times, medians reported. Writes
`benchmarks/results/compile-cache.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("resnet50,resnet152,efficientnetb0,efficientnetb7,mobilenetv2,densenet121,inceptionv3,"
          "convnexttiny,regnety032,resnetrs101")

PROBE = """
import json, sys, time
import jax, numpy as np
import kjax_core

name, batch = sys.argv[1], int(sys.argv[2])
spec = kjax_core.get_spec(name)
size = spec.input_size
module = kjax_core.create_model(name)
x = np.random.default_rng(0).uniform(0, 255, (batch, *size)).astype(np.float32)
shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x[:1])
rng = np.random.default_rng(1)
# random weights, no compilation (vectors near 1: BatchNorm variances stay positive)
variables = jax.tree.map(
    lambda s: (rng.normal(size=s.shape) * 0.01 + (len(s.shape) == 1)).astype(s.dtype), shapes)
predict = kjax_core.predictor(module, variables, input_shape=size)
start = time.perf_counter(); jax.block_until_ready(predict(x)); first = time.perf_counter() - start
start = time.perf_counter(); jax.block_until_ready(predict(x)); step = time.perf_counter() - start
print(json.dumps({"first": first, "step": step, "cache": str(predict.compilation_cache)}))
"""


def run(name: str, batch: int, cache: str | None) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["KJAX_COMPILATION_CACHE"] = cache or "off"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, name, str(batch)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{name}: {result.stderr.strip().splitlines()[-1]}")
    row = json.loads(result.stdout.splitlines()[-1])
    row["process"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile-cache"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        samples: dict[str, list[dict]] = {"off": [], "cold": [], "warm": []}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                samples["off"].append(run(name, args.batch, None))
                samples["cold"].append(run(name, args.batch, folder))
                samples["warm"].append(run(name, args.batch, folder))
                size = sum(f.stat().st_size for f in Path(folder).iterdir())
        median = {k: {m: statistics.median(s[m] for s in v) for m in ("first", "step", "process")}
                  for k, v in samples.items()}
        rows.append({"model": name, "batch": args.batch, "cache_mb": size / 1e6, **median})
        print(name, json.dumps(median), flush=True)
    load = os.getloadavg()
    lines = [
        f"## Compiled-program cache (`benchmarks/compile_cache.py`, {time.strftime('%Y-%m-%d')})", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
        f"after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Batch {args.batch}, default input size, "
        f"float32, medians of {args.runs} fresh processes per column.", "",
        "| model | first result, cache off (s) | cold (s) | warm (s) | warm / off | step (s) | "
        "process, off (s) | process, warm (s) | programs kept (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['off']['first']:.2f} | {r['cold']['first']:.2f} | "
            f"{r['warm']['first']:.2f} | {r['warm']['first'] / r['off']['first']:.2f} | "
            f"{r['warm']['step']:.3f} | {r['off']['process']:.1f} | {r['warm']['process']:.1f} | "
            f"{r['cache_mb']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
