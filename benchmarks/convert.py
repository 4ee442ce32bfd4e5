"""`kjax convert` against Keras reading the same file: wall time of each step, in fresh processes.

    python benchmarks/convert.py [--models mobilenetv3small efficientnetb0 resnet50] [--runs 3]

For each model a Keras Applications model (random weights, default size) is saved with
`model.save("m.keras")`; then, each in a fresh process (so every run pays its own imports, as a
user's does), the median of `--runs` runs of:

- `keras.saving.load_model(path)` (Keras on TensorFlow, what a Keras user runs;
  `tf_keras.models.load_model` for the tf_keras-only models, saved by tf_keras);
- `kjax convert path -o out/` (reading the file with Keras on JAX, describing the graph,
  translating the weights, writing the output);
- `kjax_core.load("out/")` (no Keras: the graph from config.json) and one jitted inference.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAVE = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
package, _, name = sys.argv[1].rpartition(".")
if package == "tf_keras":
    import tf_keras as keras
else:
    import keras
getattr(keras.applications, name)(weights=None).save(sys.argv[2])
"""
KERAS_LOAD = """
import os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if sys.argv[2] == "tf_keras":
    import tf_keras
    tf_keras.models.load_model(sys.argv[1], compile=False)
else:
    import keras
    keras.saving.load_model(sys.argv[1], compile=False)
"""
KJAX_LOAD = """
import sys
import jax, numpy as np
import kjax_core
module, variables = kjax_core.load(sys.argv[1])
shape = [d for d in __import__("json").load(open(sys.argv[1] + "/config.json"))["input_shape"]]
jax.block_until_ready(jax.jit(module.apply)(variables, np.zeros((1, *shape), np.float32)))
"""
CONSTRUCTORS = {"mobilenetv3small": "MobileNetV3Small", "efficientnetb0": "EfficientNetB0",
                "resnet50": "ResNet50", "convnexttiny": "ConvNeXtTiny", "densenet121": "DenseNet121",
                "nasnetmobile": "NASNetMobile", "inceptionv3": "InceptionV3", "xception": "Xception",
                # saved and read by tf_keras (tf_keras.models.load_model is the reference)
                "resnetrs50": "tf_keras.ResNetRS50", "regnety016": "tf_keras.RegNetY016"}


def timed(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["mobilenetv3small", "efficientnetb0", "resnet50", "resnetrs50"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kjax = shutil.which("kjax") or sys.exit("the kjax command is not installed in this environment")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            path = str(Path(folder) / f"{name}.keras")
            subprocess.run([sys.executable, "-c", SAVE, CONSTRUCTORS[name], path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = str(Path(folder) / f"{name}-out")
            package = "tf_keras" if CONSTRUCTORS[name].startswith("tf_keras.") else "keras"
            keras_s = timed([sys.executable, "-c", KERAS_LOAD, path, package], args.runs)
            convert_s = timed([kjax, "convert", path, "-o", out, "--force"], args.runs)
            load_s = timed([sys.executable, "-c", KJAX_LOAD, out], args.runs)
            rows.append((name, keras_s, convert_s, load_s))
    print(f"runs per step: {args.runs} (median, fresh processes); CPUs: {os.cpu_count()}; "
          f"load average (1 min): {os.getloadavg()[0]:.2f}\n")
    print("| model | Keras' load_model s | kjax convert s | ratio | kjax_core.load + first inference s |")
    print("|---|---|---|---|---|")
    for name, keras_s, convert_s, load_s in rows:
        print(f"| {name} | {keras_s:.1f} | {convert_s:.1f} | {convert_s / keras_s:.2f}x | {load_s:.1f} |")


if __name__ == "__main__":
    main()
