"""Grouped convolution (Keras ``Conv2D(groups=g)``, RegNet's 3x3) in a form XLA:CPU runs well.

XLA:CPU hands a grouped convolution (``feature_group_count``) to its convolution library as one
call, and both do poorly with it: YNNPACK (XLA's default, what a plain ``jax.jit`` runs) took 3-6x
the time of the dense convolutions the groups are made of. Written as one dense convolution per
group inside a ``fori_loop`` (:func:`grouped_loop`: the group's channels read with a dynamic slice,
its outputs written in place, NHWC throughout), the same products and sums run at the dense
convolutions' speed with one convolution to compile instead of g. :class:`GroupedConv` computes it
so when lowered for CPU and with XLA's grouped convolution elsewhere (chosen per platform, as
:func:`kjax_core.nn.depthwise.depthwise`), with the variables of a Flax grouped ``nn.Conv``:
``kernel`` (kh, kw, C / g, features), ``bias`` (features,); translation does not change.

Measured with ``benchmarks/grouped_conv.py`` (jax 0.10.2, 2-core Xeon *shared with other jobs*:
load average 4-7, so the fastest of 7 runs is reported): every grouped 3x3 of RegNetX016 / Y016
(group width 24) at 224x224, batch 8, each shape once per block that has it, summed (ms):

=================  ============  ============  ==========  ==========
formulation        X016 YNNPACK  Y016 YNNPACK  X016 Eigen  Y016 Eigen
=================  ============  ============  ==========  ==========
``xla`` (grouped)  565           396           154         108
``dense_conv``     876           944           428         251
``per_group``      88            81            103         66
``loop`` (chosen)  87            92            111         83
``shift_batched``  493           401           309         175
=================  ============  ============  ==========  ==========

e.g. 8x56x56x72 in 3 groups: xla 100.9, loop 7.2; 8x14x14x408 in 17: 15.0 vs 2.6; 8x7x7x912 in
38: 10.6 vs 1.8 (YNNPACK). RegNetX002 (group width 8, up to 46 groups): 32 vs 17 (YNNPACK), 49 vs
19 (Eigen). The whole stack of grouped blocks as one jitted function (with their 1x1 products),
run ms / compile s: X016 YNNPACK xla 892 / 0.64, loop 362 / 2.72, per_group 210 / 11.8; Y016
YNNPACK 648 / 0.90, 188 / 3.20, 188 / 10.2; with Eigen (the predictor's choice) xla and loop are
within the noise of each other (X016 221 vs 196 ms, Y016 175 vs 212). At XLA's optimisation level
0 (the test tier) loop adds 0.4-0.7 s of compile per model. So one formulation for every grouped
convolution that is not depthwise; no per-shape choice paid (at batch 1 X016's total was 20 vs 8
ms with YNNPACK, 11 vs 9 with Eigen). ``per_group`` (g convolutions side by side) runs as fast or
faster but compiles 3-5x longer (2g + 1 slice and concatenation fusions, each compiled by LLVM).
Also tried and dropped: ``dense_conv`` (the block-diagonal kernel: g times the arithmetic), a
``lax.scan`` over group-major copies (slower, compiled longer), the loop unrolled 2 or 4 (no
faster), im2col patches times block-diagonal or group-batched matrices (2-10x slower than xla:
XLA:CPU materialises the patches) and ``batch_group_count`` with the groups moved into the batch
(over 1 s per call).

Depthwise (groups equal to the input channels, ConvNeXt's 7x7) goes to
:mod:`kjax_core.nn.depthwise` instead (see :func:`kjax_core.nn.conv`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from .layers import ConvModule, kernel_and_bias

Dtype = Any
_NHWC = ("NHWC", "HWIO", "NHWC")


def explicit_padding(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                     padding: Any) -> list[tuple[int, int]]:
    """((top, bottom), (left, right)) of 'SAME' (TF's: the extra pad at the end), 'VALID' or
    explicit pairs, for NHWC ``x``."""
    if not isinstance(padding, str):
        return [tuple(int(p) for p in pair) for pair in padding]
    if padding.upper() == "VALID":
        return [(0, 0), (0, 0)]
    pads = []
    for size, kernel, stride in zip(x.shape[1:3], kernel_hw, strides):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _check(x: jax.Array, kernel: jax.Array, groups: int) -> tuple[int, int]:
    """(input channels, output channels) of one group."""
    channels, out_channels = x.shape[-1], kernel.shape[-1]
    if channels % groups or out_channels % groups or kernel.shape[2] * groups != channels:
        raise ValueError(f"kernel {kernel.shape} with {groups} groups does not fit {channels} "
                         "input channels")
    return channels // groups, out_channels // groups


def grouped_xla(x, kernel, strides, padding, groups):
    """XLA's own grouped convolution (``feature_group_count``), what ``flax.linen.Conv`` runs.
    Output channel ``k * O/g + o`` is group ``k``'s: input channels ``k * C/g ...``."""
    _check(x, kernel, groups)
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(strides), explicit_padding(x, kernel.shape[:2], strides, padding),
        dimension_numbers=_NHWC, feature_group_count=groups)


def grouped_loop(x, kernel, strides, padding, groups):
    """Group by group in a ``fori_loop``: dense convolution of the group's input channels with its
    kernel slice, written into the output in place. The same products and sums as
    :func:`grouped_xla` (each output sums only its group's inputs)."""
    cin, out = _check(x, kernel, groups)
    pads = explicit_padding(x, kernel.shape[:2], strides, padding)

    def conv(xg, kg):
        return jax.lax.conv_general_dilated(xg, kg, tuple(strides), pads, dimension_numbers=_NHWC)

    if groups == 1:
        return conv(x, kernel)
    shape = jax.eval_shape(conv, jax.ShapeDtypeStruct((*x.shape[:3], cin), x.dtype),
                           jax.ShapeDtypeStruct((*kernel.shape[:3], out), kernel.dtype)).shape

    def one(k, y):
        xg = jax.lax.dynamic_slice_in_dim(x, k * cin, cin, axis=3)
        kg = jax.lax.dynamic_slice_in_dim(kernel, k * out, out, axis=3)
        return jax.lax.dynamic_update_slice_in_dim(y, conv(xg, kg), k * out, axis=3)

    init = jnp.zeros((*shape[:3], kernel.shape[-1]), jnp.result_type(x, kernel))
    return jax.lax.fori_loop(0, groups, one, init)


def block_diagonal(kernel: jax.Array, groups: int) -> jax.Array:
    """The dense kernel (kh, kw, C, O) equal to a grouped kernel (kh, kw, C / g, O): group ``k``'s
    block at input channels ``k * C/g ...`` and output channels ``k * O/g ...``, zeros elsewhere
    (exact: every element is one product with 1 or 0)."""
    kh, kw, cin, out = kernel.shape
    blocks = kernel.reshape(kh, kw, cin, groups, out // groups)
    dense = jnp.einsum("hwcgo,Gg->hwGcgo", blocks, jnp.eye(groups, dtype=kernel.dtype))
    return dense.reshape(kh, kw, groups * cin, out)


def grouped_dense_conv(x, kernel, strides, padding, groups):
    """(measured, not used) One dense convolution with the block-diagonal kernel: g times the
    arithmetic."""
    _check(x, kernel, groups)
    return jax.lax.conv_general_dilated(
        x, block_diagonal(kernel, groups), tuple(strides),
        explicit_padding(x, kernel.shape[:2], strides, padding), dimension_numbers=_NHWC)


def grouped_per_group(x, kernel, strides, padding, groups):
    """(measured, not used) One dense convolution per group, side by side, concatenated: as fast
    as :func:`grouped_loop`, 4-5x its compile time."""
    cin, out = _check(x, kernel, groups)
    pads = explicit_padding(x, kernel.shape[:2], strides, padding)
    return jnp.concatenate([
        jax.lax.conv_general_dilated(
            x[..., k * cin:(k + 1) * cin], kernel[..., k * out:(k + 1) * out], tuple(strides),
            pads, dimension_numbers=_NHWC)
        for k in range(groups)
    ], axis=-1)


def grouped_shift_batched(x, kernel, strides, padding, groups):
    """(measured, not used) Sum over the kernel taps of the shifted input times the tap's matrices,
    one matrix product batched over the groups per tap."""
    cin, out = _check(x, kernel, groups)
    kh, kw = kernel.shape[:2]
    pads = explicit_padding(x, (kh, kw), strides, padding)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    height = (x.shape[1] - kh) // strides[0] + 1
    width = (x.shape[2] - kw) // strides[1] + 1
    taps = kernel.reshape(kh, kw, cin, groups, out)
    acc = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                x, (0, i, j, 0),
                (x.shape[0], i + (height - 1) * strides[0] + 1, j + (width - 1) * strides[1] + 1,
                 x.shape[3]), (1, strides[0], strides[1], 1))
            window = window.reshape(*window.shape[:3], groups, cin)
            term = jax.lax.dot_general(window, taps[i, j], (((4,), (0,)), ((3,), (1,))))
            acc = term if acc is None else acc + term  # (g, N, H, W, out)
    return jnp.moveaxis(acc, 0, 3).reshape(*acc.shape[1:4], groups * out)


# The formulations benchmarks/grouped_conv.py measures, by name.
FORMULATIONS: dict[str, Callable[..., jax.Array]] = {
    "xla": grouped_xla,
    "dense_conv": grouped_dense_conv,
    "per_group": grouped_per_group,
    "loop": grouped_loop,
    "shift_batched": grouped_shift_batched,
}


def grouped_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
            padding: Any = "VALID", groups: int = 1) -> jax.Array:
    """Grouped convolution of NHWC ``x`` with a kernel (kh, kw, C / groups, O) in Flax's grouped
    ``nn.Conv`` layout: :func:`grouped_loop` when lowered for CPU, :func:`grouped_xla` for any
    other platform (whose compilers have grouped kernels; until measured otherwise there)."""
    options = dict(strides=tuple(strides), padding=padding, groups=groups)
    return jax.lax.platform_dependent(
        x, kernel,
        cpu=functools.partial(grouped_loop, **options),
        default=functools.partial(grouped_xla, **options),
    )


class GroupedConv(ConvModule):
    """Keras ``Conv2D(groups=g)`` with the variables of a Flax grouped ``nn.Conv``: ``kernel``
    (kh, kw, C / groups, features) and, with ``use_bias``, ``bias`` (features,), computed by
    :func:`grouped_conv`. Padding 'SAME' (TF's), 'VALID' or explicit pairs."""

    features: int
    kernel_size: Sequence[int]
    groups: int
    strides: Sequence[int] = (1, 1)
    padding: Any = "VALID"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.groups or self.features % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {channels} input channels and "
                             f"{self.features} filters")
        shape = (*self.kernel_size, channels // self.groups, self.features)
        x, kernel, bias = kernel_and_bias(self, x, shape)
        y = grouped_conv(x, kernel, self.strides, self.padding, self.groups)
        return y if bias is None else y + bias
