"""Data parallelism over the local devices with ``jax.sharding``: the batch is split across the
devices, the variables are replicated on each, and the result is the same as on one device.

The short way is :func:`kjax_core.predictor` with ``devices="all"``. By hand, for a ``jax.jit`` of
your own::

    import jax
    from kjax_core.inference.sharding import batch_mesh, replicate, shard_batch

    mesh = batch_mesh()                       # all local devices, one mesh axis named "batch"
    variables = replicate(variables, mesh)    # one full copy per device
    apply = jax.jit(module.apply)             # shardings follow the arguments
    images, n = shard_batch(images, mesh)     # padded to a multiple of the device count
    outputs = apply(variables, images)[:n]    # sharded by batch, like the input

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before JAX starts) gives four
devices to try it with.
"""

from __future__ import annotations

from typing import Any, Callable

AXIS = "batch"


def local_devices(devices: Any = "all") -> list:
    """``"all"`` (every local device of the default backend), or the given devices as a list."""
    import jax

    if devices is None or devices == "all":
        return list(jax.local_devices())
    return list(devices)


def batch_mesh(devices: Any = "all"):
    """A one-axis :class:`jax.sharding.Mesh` (axis ``"batch"``) over ``devices``."""
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.asarray(local_devices(devices)), (AXIS,))


def replicated(mesh) -> Any:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh) -> Any:
    """The sharding that splits the leading (batch) axis across the devices of ``mesh``."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: Any, mesh) -> Any:
    """Every array of ``tree`` copied to every device of ``mesh``."""
    import jax

    return jax.device_put(tree, replicated(mesh))


def shard_batch(images: Any, mesh) -> tuple[Any, int]:
    """``(images split by batch across mesh, the original batch size)``. The batch is padded with
    zeros to a multiple of the device count; slice the outputs with ``[:n]``."""
    import jax
    import jax.numpy as jnp

    n = images.shape[0]
    devices = mesh.devices.size
    padded = -(-n // devices) * devices
    if padded != n:
        images = jnp.pad(jnp.asarray(images), [(0, padded - n)] + [(0, 0)] * (images.ndim - 1))
    return jax.device_put(images, batch_sharded(mesh)), n


def data_parallel(
    apply: Callable, variables: Any, devices: Any = "all", compiler_options: dict | None = None
) -> Callable:
    """``run(images) -> outputs``: ``apply(variables, images)`` with the batch split over
    ``devices`` and ``variables`` replicated (copied to the devices once, here).

    Any batch size works (padded to a multiple of the device count, the padding cut from the
    outputs). The outputs are sharded by batch; ``numpy.asarray`` gathers them. Compiler options
    XLA refuses give way to its defaults, with a warning
    (:class:`kjax_core.inference.compiler.JitWithOptions`).
    """
    import jax

    from .compiler import JitWithOptions

    mesh = batch_mesh(devices)
    variables = replicate(variables, mesh)
    compiled = JitWithOptions(
        apply,
        compiler_options,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=batch_sharded(mesh),
    )

    def run(images: Any) -> Any:
        x, n = shard_batch(images, mesh)
        out = compiled(variables, x)
        return jax.tree_util.tree_map(lambda y: y[:n], out) if x.shape[0] != n else out

    run.mesh = mesh  # type: ignore[attr-defined]
    run.compiled = compiled  # type: ignore[attr-defined]
    run.variables = variables  # type: ignore[attr-defined]
    return run
