"""Inference benchmark: kjax against Keras 3 on JAX and Keras 3 on TensorFlow, side by side.

    python benchmarks/run.py                      # the documented run (see benchmarks/README.md)
    python benchmarks/run.py --models resnet50 --batches 8 --reps 5 --tag smoke

One persistent worker process per engine (benchmarks/worker.py; KERAS_BACKEND is fixed per
process). For each model and batch size every worker loads and compiles its model, then the driver
asks the engines in turn for one timed step each, round-robin, rotating who goes first, so that a
disturbance of the machine falls on all engines alike. Every model runs on random weights
(weights=None) at its default input size, float32 unless the variant says otherwise.

Reported per engine: median step time (and the spread between quartiles), compile time (first call
minus the median step: tracing, lowering and XLA compilation), images per second, the ratio of
kjax's step time to each peer's (< 1: kjax is faster), and the fraction of this machine's float32
matrix-multiply rate that the step reaches (model FLOPs from XLA's cost analysis of the float32
kjax computation / step time / the best measured float32 matmul rate of JAX and TensorFlow).

Writes ``<out>/<tag>.json``, ``<out>/<tag>.md`` and ``<out>/<tag>.png`` (the chart needs
matplotlib: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODELS = ("resnet50", "efficientnetb0", "mobilenetv2", "densenet121")
KJAX_VARIANTS = ("kjax", "kjax-fast", "kjax-ynn", "kjax-bf16")  # the default run's; also
# kjax-scan (the predictor with scanned blocks) and kjax-fold, when asked for
PEERS = ("keras-jax", "keras-tf")


class Worker:
    def __init__(self, engine: str, log) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("KERAS_BACKEND", None)
        self.engine = engine
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), engine],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            cwd=HERE.parent,
        )

    def ask(self, op: str, **kwargs) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.engine} died (see the log)")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError, ValueError):
            pass
        self.process.wait(timeout=30)


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "memory_gib": memory, "system": platform.platform(), "python": platform.python_version()}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def available_models(names) -> list[str]:
    import kjax_core

    known = set(kjax_core.list_models())
    return [n for n in names if n in known]


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{args.tag}.log", "w")
    variants = [v for v in args.engines if v.startswith("kjax")]
    peers = [p for p in args.engines if p in PEERS]
    workers = {}
    if variants:
        workers["kjax"] = Worker("kjax", log)
    for peer in peers:
        workers[peer] = Worker(peer, log)
    result = {
        "tag": args.tag, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "load_before": load_average(), "reps": args.reps,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": [], "skipped": [],
    }
    try:
        result["versions"] = {k: w.ask("info")["versions"] for k, w in workers.items()}
        rates = {k: w.ask("matmul") for k, w in workers.items() if k in ("kjax", "keras-tf", "keras-jax")}
        result["matmul_gflops"] = {v["framework"]: round(v["gflops"], 1) for v in rates.values() if v["ok"]}
        peak = max(result["matmul_gflops"].values())
        print(f"float32 matmul {result['matmul_gflops']} GFLOP/s; load {load_average()}", flush=True)
        models = available_models(args.models)
        result["skipped"] += [f"{m}: not installed" for m in args.models if m not in models]
        for model in models:
            for batch in args.batches:
                loaded, flops, engines = {}, None, []
                for key, worker in workers.items():
                    answer = worker.ask("load", model=model, batch=batch,
                                        variants=variants if key == "kjax" else [key])
                    if not answer["ok"]:
                        result["skipped"].append(f"{model} b{batch} {key}: {answer['error']}")
                        continue
                    flops = answer.get("flops_per_batch", flops)
                    for variant, first in answer["first_s"].items():
                        loaded[variant] = {"first_s": first, "setup_s": answer["setup_s"],
                                           "prep_s": answer.get("prep_s", {}).get(variant, 0.0)}
                        engines.append((variant, worker))
                times = {variant: [] for variant, _ in engines}
                cpu = {variant: [] for variant, _ in engines}
                for rep in range(args.reps):
                    shift = rep % max(len(engines), 1)
                    for variant, worker in engines[shift:] + engines[:shift]:
                        answer = worker.ask("step", variant=variant)
                        times[variant].append(answer["s"])
                        cpu[variant].append(answer["cpu_s"])
                for variant, _ in engines:
                    t = sorted(times[variant])
                    median = statistics.median(t)
                    q1, q3 = (statistics.quantiles(t, n=4)[0::2] if len(t) > 1 else (t[0], t[0]))
                    row = {
                        "model": model, "batch": batch, "engine": variant,
                        "median_s": median, "q1_s": q1, "q3_s": q3,
                        "compile_s": max(loaded[variant]["first_s"] - median, 0.0),
                        "images_per_s": batch / median,
                        "gflops_per_s": flops / median / 1e9 if flops else None,
                        "matmul_fraction": flops / median / 1e9 / peak if flops else None,
                        "min_s": t[0], "cpu_median_s": statistics.median(cpu[variant]),
                        "setup_s": loaded[variant]["setup_s"],
                        "prep_s": loaded[variant]["prep_s"], "times_s": times[variant],
                    }
                    result["rows"].append(row)
                line = ", ".join(f"{v} {statistics.median(times[v]) * 1e3:.0f} ms" for v, _ in engines)
                print(f"{model} b{batch}: {line}  (load {load_average()})", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
        log.close()
    result["load_after"] = load_average()
    add_ratios(result)
    return result


def add_ratios(result: dict) -> None:
    by_key = {(r["model"], r["batch"], r["engine"]): r for r in result["rows"]}
    for row in result["rows"]:
        for peer in PEERS:
            other = by_key.get((row["model"], row["batch"], peer))
            row[f"vs_{peer}"] = row["median_s"] / other["median_s"] if other else None


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(result: dict) -> str:
    m = result["machine"]
    rates = ", ".join(f"{k} {v:.0f}" for k, v in result["matmul_gflops"].items())
    lines = [
        f"## Inference benchmark `{result['tag']}` ({result['date']})",
        "",
        f"Machine: {m['cpu']}, {m['affinity']} cores usable of {m['cores']}, {m['memory_gib']} GiB; "
        f"{m['system']}. Load average (1/5/15 min) before: {result['load_before']}, after: "
        f"{result['load_after']}. float32 matmul rate ({2048}x{2048}, GFLOP/s): {rates}. "
        f"{result['reps']} interleaved repetitions per engine. Versions: "
        + ", ".join(f"{k} {v}" for k, v in next(iter(result["versions"].values())).items())
        + (f". XLA_FLAGS={result['xla_flags']}" if result["xla_flags"] else "") + ".",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | batch | engine | median step (ms) | IQR (ms) | min (ms) | CPU s/step | compile (s) | "
        "first result (s) | images/s | kjax/keras-jax | kjax/keras-tf | GFLOP/s | of matmul rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        kjax = r["engine"].startswith("kjax")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['engine']} | {r['median_s'] * 1e3:.1f} | "
            f"{(r['q3_s'] - r['q1_s']) * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | {r['cpu_median_s']:.2f} | "
            f"{r['compile_s']:.2f} | {r.get('prep_s', 0.0) + r['compile_s'] + r['median_s']:.2f} | "
            f"{r['images_per_s']:.1f} | "
            f"{_fmt(r['vs_keras-jax'] if kjax else None, '.2f')} | "
            f"{_fmt(r['vs_keras-tf'] if kjax else None, '.2f')} | "
            f"{_fmt(r['gflops_per_s'], '.1f')} | {_fmt(r['matmul_fraction'], '.0%')} |"
        )
    if result["skipped"]:
        lines += ["", "Skipped: " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]); no chart", file=sys.stderr)
        return False
    batches = sorted({r["batch"] for r in result["rows"]})
    engines = list(dict.fromkeys(r["engine"] for r in result["rows"]))
    n_models = len({r["model"] for r in result["rows"]})
    # Stacked one above the other, wide enough for one label per model; images/s on a log scale,
    # since one zoo spans 30x (VGG16 to MobileNet).
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(6.0, 0.75 * n_models + 2), 4 * len(batches)),
                             squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        models = list(dict.fromkeys(r["model"] for r in result["rows"] if r["batch"] == batch))
        width = 0.8 / max(len(engines), 1)
        for i, engine in enumerate(engines):
            values = []
            for model in models:
                row = next((r for r in result["rows"] if (r["model"], r["batch"], r["engine"])
                            == (model, batch, engine)), None)
                values.append(row["images_per_s"] if row else 0.0)
            ax.bar([j + i * width for j in range(len(models))], values, width, label=engine)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models,
                      rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("images / s (log; higher is better)")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{result['tag']}: {m['cpu']}, {m['affinity']} cores, load {result['load_before']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated; those not installed are skipped and named")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per engine")
    parser.add_argument("--engines", default=",".join(KJAX_VARIANTS + PEERS),
                        help="kjax, kjax-fast, kjax-bf16, kjax-ynn, kjax-scan, kjax-fold, "
                             "keras-jax, keras-tf")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.engines = [e for e in args.engines.split(",") if e]
    start = time.perf_counter()
    result = run(args)
    out = Path(args.out)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (out / f"{args.tag}.md").write_text(text)
    chart(result, out / f"{args.tag}.png")
    print(text)
    print(f"wrote {out / args.tag}.{{json,md,png}} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
