"""Depthwise convolution, in the formulation each platform runs best (:func:`depthwise`).

On CPU, a sum of shifted, per-channel scaled copies of the input (:func:`depthwise_shift_add`).
XLA:CPU runs a depthwise convolution (a grouped convolution with one group per channel) through
its general convolution kernels, which do almost no arithmetic per byte there: measured on a 2-core
Xeon (jax 0.10.2), a 3x3 depthwise convolution of an 8x112x112x32 batch took 100 ms with YNNPACK
and 250 ms with Eigen (TensorFlow's XLA: 240 ms). Written as ``sum_ij x[shifted by i, j] * k[i, j]``,
XLA fuses the whole sum into one pass over the input: 5 ms. The result is the same to float32
rounding (the nine products are summed in another order).

Elsewhere (GPU, TPU), the grouped convolution itself (:func:`depthwise_grouped`,
``feature_group_count=C``), which their compilers have depthwise kernels for, until a measurement
on such a device says otherwise.

The choice is made by ``jax.lax.platform_dependent`` when the computation is lowered for a
platform, not by the default backend at trace time: a function jitted or exported for another
platform gets that platform's formulation. Both take the weights in the layout of a Flax grouped
``nn.Conv``, kernel (kh, kw, 1, C * M), so translation and saved variables do not change.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from .layers import ConvModule, PointwiseConv, kernel_and_bias

Dtype = Any


def _pads(size: int, kernel: int, stride: int, dilation: int, padding: Any) -> tuple[int, int]:
    """(before, after) padding of one spatial axis; 'SAME' is TF's (the extra pad at the end)."""
    effective = (kernel - 1) * dilation + 1
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return 0, 0
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        return total // 2, total - total // 2
    before, after = padding
    return int(before), int(after)


def depthwise_shift_add(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Any = "VALID",
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """Depthwise convolution of NHWC ``x`` (C channels) with a kernel (kh, kw, 1, C * M) laid out
    as Flax's grouped ``nn.Conv(feature_group_count=C)``: output channel ``c * M + m`` is input
    channel ``c`` convolved with ``kernel[..., c * M + m]``.

    :param padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).
    """
    kh, kw, one, out_channels = kernel.shape
    channels = x.shape[-1]
    if one != 1 or out_channels % channels:
        raise ValueError(f"kernel {kernel.shape} is not depthwise for {channels} channels")
    multiplier = out_channels // channels
    if multiplier > 1:
        x = jnp.repeat(x, multiplier, axis=-1)
    if isinstance(padding, str):
        pads = [_pads(x.shape[1 + a], (kh, kw)[a], strides[a], dilation[a], padding) for a in (0, 1)]
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    height = (x.shape[1] - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    width = (x.shape[2] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            window = jax.lax.slice(
                x,
                (0, top, left, 0),
                (x.shape[0], top + (height - 1) * strides[0] + 1,
                 left + (width - 1) * strides[1] + 1, x.shape[3]),
                (1, strides[0], strides[1], 1),
            )
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def depthwise_grouped(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Any = "VALID",
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """The same depthwise convolution as :func:`depthwise_shift_add`, as one grouped
    ``lax.conv_general_dilated`` (``feature_group_count=C``): group ``c`` is input channel ``c``
    and output channels ``c * M ... c * M + M - 1``, Flax's grouped ``nn.Conv`` layout."""
    kh, kw, one, out_channels = kernel.shape
    channels = x.shape[-1]
    if one != 1 or out_channels % channels:
        raise ValueError(f"kernel {kernel.shape} is not depthwise for {channels} channels")
    if isinstance(padding, str):
        pads = [_pads(x.shape[1 + a], (kh, kw)[a], strides[a], dilation[a], padding) for a in (0, 1)]
    else:
        pads = [tuple(int(p) for p in pair) for pair in padding]
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=pads, rhs_dilation=tuple(dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
    )


def depthwise(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Any = "VALID",
    dilation: Sequence[int] = (1, 1),
) -> jax.Array:
    """Depthwise convolution of NHWC ``x`` with a kernel (kh, kw, 1, C * M): shifted sums
    (:func:`depthwise_shift_add`) when lowered for CPU, a grouped convolution
    (:func:`depthwise_grouped`) for any other platform. Both are traced; only the chosen one is
    compiled."""
    options = dict(strides=tuple(strides), padding=padding, dilation=tuple(dilation))
    return jax.lax.platform_dependent(
        x, kernel,
        cpu=functools.partial(depthwise_shift_add, **options),
        default=functools.partial(depthwise_grouped, **options),
    )


class DepthwiseConv(ConvModule):
    """Keras DepthwiseConv2D with the variables of a Flax grouped ``nn.Conv``: ``kernel``
    (kh, kw, 1, C * depth_multiplier) and, with ``use_bias``, ``bias`` (C * depth_multiplier,),
    computed by :func:`depthwise` (the formulation of the platform). Padding as in
    :func:`kjax_core.nn.conv`."""

    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "VALID"
    depth_multiplier: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1] * self.depth_multiplier
        x, kernel, bias = kernel_and_bias(self, x, (*self.kernel_size, 1, features))
        y = depthwise(x, kernel, self.strides, self.padding)
        return y + bias if bias is not None else y


def depthwise_conv(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    *,
    name: str,
    strides: int = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    depth_multiplier: int = 1,
    use_bias: bool = True,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Keras DepthwiseConv2D. Its variables are those of a Flax grouped convolution (kernel
    (kh, kw, 1, C * depth_multiplier), one group per input channel); on CPU it is computed as a
    sum of shifted copies of the input (:class:`kjax_core.nn.depthwise.DepthwiseConv`), which
    XLA:CPU runs about 20 times faster than a grouped convolution, with the same result to float32
    rounding; elsewhere as the grouped convolution."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    return DepthwiseConv(
        tuple(kernel_size),
        strides=(strides, strides),
        padding=padding.upper() if isinstance(padding, str) else padding,
        depth_multiplier=depth_multiplier,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(x)


class SeparableConv2D(nn.Module):
    """Keras SeparableConv2D: depthwise conv (no bias) then 1x1 pointwise conv (with the bias)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int = 1
    padding: str = "VALID"
    depth_multiplier: int = 1
    use_bias: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = depthwise_conv(
            x, self.kernel_size, name="depthwise", strides=self.strides, padding=self.padding,
            depth_multiplier=self.depth_multiplier, use_bias=False, **kw,
        )
        return PointwiseConv(self.features, use_bias=self.use_bias, name="pointwise", **kw)(x)

