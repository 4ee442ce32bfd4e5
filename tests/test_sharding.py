"""Data parallelism over the local devices (kjax_core.inference.sharding, kjax_core.predictor(devices=...)):
batch split across the devices, variables replicated, the same outputs as on one device.

JAX fixes its device count when it starts, so the check runs in a fresh process that sees four CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import kjax_core
    from kjax_core.parity import relative_error
    from kjax_core.inference.sharding import batch_mesh, replicate, shard_batch

    assert jax.local_device_count() == 4, jax.devices()
    module = kjax_core.create_model("resnet50", include_top=False, pooling="avg")
    x = np.random.default_rng(0).normal(0, 50, (6, 45, 37, 3)).astype(np.float32)  # 6: not a multiple of 4
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x[:1])
    rng = np.random.default_rng(1)

    def draw(path, leaf):  # random weights, BatchNorm statistics far from mean 0 / variance 1
        name, shape = path[-1].key, leaf.shape
        if name in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("mean", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        else:  # kernels, He-scaled
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        return jnp.asarray(value, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    one = np.asarray(jax.jit(module.apply)(variables, x))

    # by hand, as the kjax_core.inference.sharding docstring shows
    mesh = batch_mesh()
    replicated = replicate(variables, mesh)
    xs, n = shard_batch(x, mesh)
    by_hand = jax.jit(module.apply)(replicated, xs)

    # the predictor (BatchNorm folded) over the 4 devices
    fast = kjax_core.predictor(module, variables, devices="all", input_shape=(45, 37, 3))
    leaf = jax.tree_util.tree_leaves(fast.variables)[0]
    print(json.dumps({
        "devices": jax.local_device_count(),
        "padded_batch": xs.shape[0], "batch": n,
        "input_devices": len(xs.sharding.device_set),
        "output_devices": len(by_hand.sharding.device_set),
        "variables_replicated": bool(jax.tree_util.tree_leaves(replicated)[0].sharding.is_fully_replicated)
                                and bool(leaf.sharding.is_fully_replicated),
        "variable_devices": len(leaf.sharding.device_set),
        "by_hand": relative_error(np.asarray(by_hand)[:n], one),
        "fast": relative_error(np.asarray(fast(x)), one),
        "shape": list(np.asarray(fast(x)).shape),
    }))
    """
)


def test_data_parallel_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert (result["padded_batch"], result["batch"]) == (8, 6)
    assert result["input_devices"] == result["output_devices"] == 4  # the batch is split
    assert result["variables_replicated"] and result["variable_devices"] == 4
    assert result["shape"] == [6, 2048]
    # Each device computes its own images: the same arithmetic as one device, to rounding.
    assert result["by_hand"] < 1e-5, result
    assert result["fast"] < 1e-4, result  # folded BatchNorm: float32 rounding differs slightly
