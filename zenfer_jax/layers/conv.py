"""Convolutions with the reference's padding and two depthwise formulations.

The reference pads k//2 on every side; Flax's 'SAME' pads asymmetrically at
stride 2, so the padding is always explicit here. XLA's CPU depthwise
convolution is several times slower than PyTorch's for 7x7 kernels, so a
depthwise conv can also run as k*k strided slices multiplied and summed
(`impl='shift'`): the same arithmetic, fused by XLA into one loop. Both
formulations read the same (k, k, 1, C) kernel.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Conv", "depthwise_shift", "default_depthwise_impl"]


def default_depthwise_impl() -> str:
    """'shift' on CPU, where it is measured faster; XLA's native op elsewhere."""
    return "shift" if jax.default_backend() == "cpu" else "xla"


def depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """Depthwise conv as a sum of k*k shifted, strided slices (NHWC, kernel (k, k, 1, C))."""
    k = kernel.shape[0]
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    out = None
    for dy in range(k):
        for dx in range(k):
            patch = lax.slice(
                xp,
                (0, dy, dx, 0),
                (n, dy + (ho - 1) * stride + 1, dx + (wo - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )
            term = patch * kernel[dy, dx, 0]
            out = term if out is None else out + term
    return out


class Conv(nn.Module):
    """Bias-optional conv with symmetric k//2 padding; depthwise when groups == features."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    depthwise_impl: str = "auto"  # 'auto' | 'xla' | 'shift'
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel_size
        if cin % self.groups:
            raise ValueError(f"{self.name}: {cin} input channels are not divisible by groups={self.groups}")
        kernel = self.param("kernel", self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32)
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = kernel.astype(dtype)
        pad = k // 2
        impl = default_depthwise_impl() if self.depthwise_impl == "auto" else self.depthwise_impl
        depthwise = self.groups > 1 and self.groups == cin == self.features
        if depthwise and impl == "shift":
            y = depthwise_shift(x, kernel, self.stride, pad)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(dtype)
        return y
