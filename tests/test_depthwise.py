"""The depthwise convolution's two formulations (kjax_core.nn.depthwise): shifted sums, lowered
for CPU, and the grouped convolution, lowered for every other platform, compute the same thing
from the same variables; each platform gets its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kjax_core.nn.depthwise import (
    DepthwiseConv, depthwise, depthwise_grouped, depthwise_shift_add,
)

# (input H, W, C; kernel kh, kw; depth multiplier; strides; padding; dilation): odd and
# non-square sizes, both paddings and explicit pads, stride 2 on odd sizes (TF SAME's extra pad
# at the end), a multiplier, a dilation.
CASES = [
    ((13, 11, 6), (3, 3), 1, (1, 1), "SAME", (1, 1)),
    ((13, 11, 6), (3, 3), 1, (2, 2), "SAME", (1, 1)),
    ((14, 9, 5), (5, 5), 1, (2, 1), "VALID", (1, 1)),
    ((9, 12, 4), (1, 3), 2, (1, 2), ((1, 2), (0, 1)), (1, 1)),
    ((15, 10, 3), (3, 3), 3, (1, 1), "SAME", (2, 2)),
    ((7, 7, 8), (7, 7), 1, (1, 1), "SAME", (1, 1)),
]
TOLERANCE = {"float32": 1e-6, "float64": 1e-14}


def _arrays(case, dtype, seed=0):
    (h, w, c), (kh, kw), multiplier, *_ = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, h, w, c)), dtype)
    kernel = jnp.asarray(rng.normal(size=(kh, kw, 1, c * multiplier)), dtype)
    return x, kernel


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_formulations_agree(case, dtype):
    *_, strides, padding, dilation = case
    with jax.enable_x64(dtype == "float64"):
        x, kernel = _arrays(case, dtype)
        shifted = depthwise_shift_add(x, kernel, strides, padding, dilation)
        grouped = depthwise_grouped(x, kernel, strides, padding, dilation)
        assert shifted.dtype == grouped.dtype == jnp.dtype(dtype)
        assert shifted.shape == grouped.shape
        error = float(jnp.linalg.norm(shifted - grouped) / jnp.linalg.norm(grouped))
        assert error < TOLERANCE[dtype], error
        # The reference for both: each output channel is its input channel's 2D correlation.
        multiplier = kernel.shape[-1] // x.shape[-1]
        one = jax.lax.conv_general_dilated(
            x[..., 1:2], kernel[..., multiplier:multiplier + 1], strides, padding,
            rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        error = float(jnp.linalg.norm(shifted[..., multiplier:multiplier + 1] - one)
                      / jnp.linalg.norm(one))
        assert error < TOLERANCE[dtype], error


def test_each_platform_lowers_its_own_formulation():
    """CPU compiles shifted sums (no convolution); CUDA and TPU get the grouped convolution. The
    choice follows the platform lowered for, not the machine tracing: exported here for CUDA."""
    from jax import export

    x, kernel = _arrays(CASES[1], "float32")
    apply = jax.jit(lambda x, k: depthwise(x, k, (2, 2), "SAME"))
    np.testing.assert_array_equal(apply(x, kernel), depthwise_shift_add(x, kernel, (2, 2), "SAME"))
    for platform in ("cpu", "cuda", "tpu"):
        text = export.export(apply, platforms=[platform])(x, kernel).mlir_module()
        convolutions = text.count("stablehlo.convolution")
        assert convolutions == (0 if platform == "cpu" else 1), platform
        assert ("stablehlo.slice" in text) == (platform == "cpu"), platform


def test_the_module_keeps_flax_grouped_conv_variables():
    module = DepthwiseConv((3, 3), depth_multiplier=2, padding="SAME")
    x = jnp.ones((1, 9, 7, 5))
    variables = module.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, variables["params"]) == {
        "kernel": (3, 3, 1, 10), "bias": (10,)}
    y = module.apply(variables, x)
    expected = depthwise_grouped(x, variables["params"]["kernel"], padding="SAME")
    np.testing.assert_allclose(y, expected + variables["params"]["bias"], rtol=1e-5, atol=1e-6)
