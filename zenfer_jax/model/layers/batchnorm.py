"""BatchNorm with PyTorch's running-statistics semantics.

Flax's `nn.BatchNorm` feeds the *biased* batch variance into its running
average; PyTorch feeds the unbiased one. Checkpoints move between the two and
the Zen-score reads the running variance directly, so this layer keeps
PyTorch's rule (optionally the biased one) and averages statistics across
devices when given an `axis_name` (cross-replica BatchNorm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zenfer_jax.model.layers import cpu_kernels

__all__ = ['BatchNorm']


class BatchNorm(nn.Module):
  """BatchNorm over NHWC inputs (statistics over N, H, W).

  momentum: Flax convention, weight of the old running value (PyTorch 0.01 == 0.99 here).
  unbiased_running_var: update running_var with the unbiased batch variance, as PyTorch does.
  axis_name: when set (inside pmap), batch statistics are averaged across that axis.
  impl: the training-mode backward: 'xla' (autodiff of the forward), 'cpu' (closed form,
  `cpu_kernels.batch_norm_train`, faster on CPU) or 'auto' (`cpu_kernels.resolve_impl`).
  Both run the same forward, so outputs and statistics do not depend on it.
  """

  momentum: float = 0.99
  epsilon: float = 1e-3
  unbiased_running_var: bool = True
  axis_name: str | None = None
  scale_init: Callable[..., Any] = nn.initializers.ones
  dtype: Any = None
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', self.scale_init, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))

    dtype = self.dtype or x.dtype
    if use_running_average:
      inv = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((x.astype(jnp.float32) - ra_mean.value) * inv + bias).astype(dtype)

    if cpu_kernels.resolve_impl(self.impl, 'BatchNorm.impl') == 'cpu':
      y, mean, var = cpu_kernels.batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
    else:
      y, mean, var, _ = cpu_kernels.batch_norm_forward(x, scale, bias, self.epsilon, self.axis_name)
    if not self.is_initializing():
      count = cpu_kernels.global_count(x, self.axis_name)
      run_var = var * (count / jnp.maximum(count - 1, 1)) if self.unbiased_running_var else var
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(run_var)
    return y.astype(dtype)
