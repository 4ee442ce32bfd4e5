"""RegNet's grouped 3x3 convolutions on XLA:CPU: each formulation of kjax_core.nn.grouped.

    python benchmarks/grouped_conv.py                     # RegNetX016 and Y016, batch 8 (~3 min)
    python benchmarks/grouped_conv.py --models x002 --batch 1 --options ynn --methods xla,loop

For every grouped conv_3x3 of the chosen RegNets (224x224 input, tf_keras' widths and group widths:
the first block of a stage has stride 2, the others stride 1) it prints the fastest of ``--reps``
runs (ms) of each formulation, under XLA's default options (``ynn``: YNNPACK) and the predictor's
Eigen convolutions (``eigen``), and the sum over the model (each shape times its number of blocks).
Then the whole stack as one jitted function (each block: a 1x1 product with ReLU, then the grouped
convolution with ReLU; the 1x1 products are the same for every formulation): run time (fastest,
and CPU time of the process per run) and compile time, which is where formulations with many
operations per convolution pay. The fastest run, not the median: on a machine shared with other
jobs it is the least disturbed one; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kjax_core.inference.predictor import EIGEN_CONVOLUTIONS  # noqa: E402
from kjax_core.nn import grouped  # noqa: E402

# tf_keras.applications.regnet MODEL_CONFIGS: (depths, widths, group_width).
REGNETS = {
    "x002": ([1, 1, 4, 7], [24, 56, 152, 368], 8),
    "x016": ([2, 4, 10, 2], [72, 168, 408, 912], 24),
    "x032": ([2, 6, 15, 2], [96, 192, 432, 1008], 48),
    "y016": ([2, 6, 17, 2], [48, 120, 336, 888], 24),
    "y032": ([2, 5, 13, 1], [72, 216, 576, 1512], 24),
}
OPTIONS = {"ynn": {}, "eigen": EIGEN_CONVOLUTIONS}


def shapes(model: str, batch: int, size: int = 224):
    """(input shape, groups, stride, count) of each distinct grouped convolution."""
    depths, widths, group_width = REGNETS[model]
    side = size // 2  # after the stride-2 stem
    out = []
    for depth, width in zip(depths, widths):
        out.append(((batch, side, side, width), width // group_width, 2, 1))
        side = -(-side // 2)
        if depth > 1:
            out.append(((batch, side, side, width), width // group_width, 1, depth - 1))
    return out


def compile_fn(fn, args, options):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=options or None)
    return compiled, time.perf_counter() - start


def run_times(compiled, args, reps: int) -> tuple[float, float]:
    """(fastest wall time, median CPU time of the process) per run, in ms."""
    compiled(*args).block_until_ready()
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        compiled(*args).block_until_ready()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls) * 1e3, sorted(cpus)[len(cpus) // 2] * 1e3


def per_shape(model, batch, methods, options, reps, rng) -> None:
    totals = dict.fromkeys(methods, 0.0)
    print(f"\n{model}, per shape ({options}), fastest of {reps}, ms\n")
    print("| input | groups | stride | blocks | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 4) + "|")
    for shape, groups, stride, count in shapes(model, batch):
        x = rng.normal(size=shape).astype(np.float32)
        kernel = rng.normal(size=(3, 3, shape[-1] // groups, shape[-1])).astype(np.float32)
        row = {}
        for method in methods:
            fn = grouped.FORMULATIONS[method]
            compiled, _ = compile_fn(
                lambda x, k, fn=fn: fn(x, k, (stride, stride), "SAME", groups), (x, kernel),
                OPTIONS[options])
            row[method] = run_times(compiled, (x, kernel), reps)[0]
            totals[method] += count * row[method]
        cells = " | ".join(f"{row[m]:.1f}" for m in methods)
        print(f"| {'x'.join(map(str, shape))} | {groups} | {stride} | {count} | {cells} |")
    print("| model (sum) | | | | " + " | ".join(f"{totals[m]:.0f}" for m in methods) + " |")


def whole_stack(model, batch, methods, options, reps, rng) -> None:
    depths, widths, group_width = REGNETS[model]
    blocks, channels = [], 32
    for depth, width in zip(depths, widths):
        for b in range(depth):
            blocks.append((2 if b == 0 else 1, width // group_width))
            channels_in, channels = channels, width
            blocks[-1] += ((channels_in, width),)
    params = [
        (rng.normal(size=shape).astype(np.float32) / np.sqrt(shape[0]),
         rng.normal(size=(3, 3, group_width, shape[1])).astype(np.float32)
         / np.sqrt(9 * group_width))
        for _, _, shape in blocks
    ]
    x = rng.normal(size=(batch, 112, 112, 32)).astype(np.float32)
    print(f"\n{model}, the whole stack as one function ({options}): run ms (fastest of {reps}), "
          "CPU ms per run, compile s\n")
    print("| formulation | run | CPU | compile |\n|---|---|---|---|")
    for method in methods:
        fn = grouped.FORMULATIONS[method]

        def stack(params, x, fn=fn):
            for (pointwise, kernel), (stride, groups, _) in zip(params, blocks):
                x = jax.nn.relu(x @ pointwise)
                x = jax.nn.relu(fn(x, kernel, (stride, stride), "SAME", groups))
            return x

        compiled, seconds = compile_fn(stack, (params, x), OPTIONS[options])
        wall, cpu = run_times(compiled, (params, x), reps)
        print(f"| {method} | {wall:.0f} | {cpu:.0f} | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="x016,y016")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--options", default="ynn,eigen")
    parser.add_argument("--methods", default=",".join(grouped.FORMULATIONS))
    parser.add_argument("--no-stack", action="store_true", help="per-shape table only")
    args = parser.parse_args()
    methods = args.methods.split(",")
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, batch {args.batch}")
    for options in args.options.split(","):
        for model in args.models.split(","):
            per_shape(model, args.batch, methods, options, args.reps, rng)
            if not args.no_stack:
                whole_stack(model, args.batch, methods, options, args.reps, rng)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
