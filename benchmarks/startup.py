"""Start-up time of the light commands: median wall time of fresh processes.

    python benchmarks/startup.py [--runs 21]

Prints a markdown table. `kjax list` and `kjax --help` must stay at or under 0.3 s and import none of
TensorFlow, Keras, JAX, Flax (tests/test_registry.py checks the imports).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = (["list"], ["--help"], ["list", "--json"], ["plugins"], ["--version"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    kjax = shutil.which("kjax") or sys.exit("the kjax command is not installed in this environment")
    baseline = [sys.executable, "-c", "pass"]
    rows = []
    for command in [None, *COMMANDS]:
        argv = baseline if command is None else [kjax, *command]
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - start)
        label = "python -c pass (interpreter alone)" if command is None else "kjax " + " ".join(command)
        rows.append((label, statistics.median(times), min(times), max(times)))
    load = os.getloadavg()[0]
    print(f"runs per command: {args.runs}; CPUs: {os.cpu_count()}; load average (1 min): {load:.2f}\n")
    print("| command | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for label, median, low, high in rows:
        print(f"| `{label}` | {median:.3f} | {low:.3f} | {high:.3f} |")


if __name__ == "__main__":
    main()
