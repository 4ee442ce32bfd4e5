"""Accuracy cost of the fast path and of bfloat16 compute, against Keras (TensorFlow, float32).

    python benchmarks/bf16_accuracy.py                    # resnet50, efficientnetb0, mobilenetv2, densenet121
    python benchmarks/bf16_accuracy.py --models resnet50 --batch 4 --tag smoke

For each model at its default size, logits (classifier_activation=None), on weights randomised and
calibrated by kjax_core.parity (no pretrained weights are downloaded here): the relative L2 error
of kjax float32, of kjax_core.predictor (BatchNorm folded, XLA options) and of the predictor with
dtype=bfloat16, and how often bfloat16's top-1 class agrees with float32's. "images differ" is the
relative difference between two images' logits: an error far below it cannot change a decision.

Randomised networks amplify rounding far more than trained ones (their logits are barely
separated), so these bfloat16 errors are an upper bound of what trained weights show.
Writes ``<out>/<tag>.json`` and ``<out>/<tag>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the reference engine
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent


def measure(name: str, batch: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import kjax_core
    from kjax_core.parity import reference_model, relative_error, sample_images
    from kjax_core.preprocessing import apply_mode

    translation, keras_model = reference_model(name, seed=seed, classifier_activation=None)
    shape = translation.input_shape
    x = apply_mode(translation.spec.preprocessing, sample_images((batch, *shape), seed + 7))
    keras = np.asarray(keras_model(x, training=False), np.float64)
    plain = np.asarray(jax.jit(translation.module.apply)(translation.variables, x), np.float64)
    fast = np.asarray(kjax_core.predictor(translation.module, translation.variables,
                                          input_shape=shape)(x), np.float64)
    bf16 = np.asarray(kjax_core.predictor(translation.module, translation.variables,
                                          dtype=jnp.bfloat16, input_shape=shape)(x).astype(jnp.float32),
                      np.float64)
    return {
        "model": name, "input": list(shape), "batch": batch,
        "float32": relative_error(plain, keras),
        "fast": relative_error(fast, keras),
        "bf16": relative_error(bf16, keras),
        "bf16_max_abs": float(np.max(np.abs(bf16 - keras))),
        "top1_agreement": float(np.mean(bf16.argmax(-1) == plain.argmax(-1))),
        "images_differ": float(np.median([relative_error(keras[i], keras[(i + 1) % batch])
                                          for i in range(batch)])),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,efficientnetb0,mobilenetv2,densenet121")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--tag", default="bf16_accuracy")
    args = parser.parse_args(argv)

    import kjax_core

    known = set(kjax_core.list_models())
    rows = []
    for name in [m for m in args.models.split(",") if m in known]:
        rows.append(measure(name, args.batch, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    result = {"tag": args.tag, "date": dt.datetime.now().isoformat(timespec="seconds"), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"## Accuracy against Keras (TensorFlow, float32) `{args.tag}` ({result['date']})", "",
        "Logits at the default size, randomised and calibrated weights, batch of "
        f"{args.batch}; relative L2 error against Keras.", "",
        "| model | kjax float32 | predictor (folded) | predictor bfloat16 | bfloat16 top-1 = float32 | "
        "images differ |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['float32']:.1e} | {r['fast']:.1e} | {r['bf16']:.1e} | "
                     f"{r['top1_agreement']:.0%} | {r['images_differ']:.1e} |")
    text = "\n".join(lines) + "\n"
    (out / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
