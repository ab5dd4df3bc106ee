"""The conv layer, with the reference's padding, on XLA's conv or a CPU formulation.

The reference pads k//2 on every side; Flax's 'SAME' pads asymmetrically at stride 2, so the
padding is always explicit here. `impl` picks the arithmetic: 'xla' is `lax.conv_general_dilated`
for every conv; 'cpu' uses the formulations in `zenfer_jax.model.layers.cpu_kernels` for the shapes
where they are faster on CPU (the same values up to float32 summation order); 'auto' is resolved
by `cpu_kernels.resolve_impl`. Every formulation reads the same (k, k, cin/groups, cout) kernel,
so parameters do not depend on the choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from zenfer_jax.model.layers import cpu_kernels

# Older import path, still read by zenfer_jax.nas.zen_score: the kernels live in cpu_kernels.
from zenfer_jax.model.layers.cpu_kernels import (  # noqa: F401
  default_depthwise_impl,
  depthwise_shift,
)

__all__ = ['Conv', 'xla_conv']


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int = 1) -> jax.Array:
  """XLA's convolution with symmetric padding `pad` (NHWC, HWIO kernel)."""
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=groups,
  )


class Conv(nn.Module):
  """Bias-optional conv with symmetric k//2 padding; depthwise when groups == features.

  impl: 'auto' | 'xla' | 'cpu' (see the module docstring); a model passes its resolved
  `conv_impl` so that all its convs agree.
  """

  features: int
  kernel_size: int
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    k = self.kernel_size
    if cin % self.groups:
      raise ValueError(
        f'{self.name}: {cin} input channels are not divisible by groups={self.groups}'
      )
    kernel = self.param(
      'kernel', self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32
    )
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    pad = k // 2
    y = None
    if cpu_kernels.resolve_impl(self.impl, 'Conv.impl') == 'cpu':
      y = cpu_kernels.conv(x, kernel, self.stride, pad, self.groups)
    if y is None:
      y = xla_conv(x, kernel, self.stride, pad, self.groups)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y
