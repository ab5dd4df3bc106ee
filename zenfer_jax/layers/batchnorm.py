"""BatchNorm with PyTorch's running-statistics semantics.

Flax's `nn.BatchNorm` feeds the *biased* batch variance into its running
average; PyTorch feeds the unbiased one. Checkpoints move between the two and
the Zen-score reads the running variance directly, so this layer keeps
PyTorch's rule (optionally the biased one) and averages statistics across
devices when given an `axis_name` (cross-replica BatchNorm).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ['BatchNorm', 'batch_norm_train']


def _batch_moments(xf: jax.Array, axis_name: str | None):
  axes = tuple(range(xf.ndim - 1))
  mean = jnp.mean(xf, axis=axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  # Two-pass variance: stable and exact across devices.
  var = jnp.mean(jnp.square(xf - mean), axis=axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
):
  """Training-mode normalisation with the textbook backward; returns (y fp32, mean, var).

  Autodiff of the two-pass forward differentiates through the mean and the variance
  separately, which on CPU costs several more passes over the activation than the closed
  form dx = scale/sigma * (g - mean(g) - xhat * mean(g * xhat)): measured 1.3-1.7x faster
  for BN + ReLU stacks at ZenNet-R's shapes (1 core). Gradients equal autodiff's to ~1e-6,
  also across devices (the means are over the global batch, as sync BatchNorm's are).
  The batch statistics' own cotangents are dropped: they only feed running averages,
  which no loss reads.
  """
  y, mean, var, _ = _bn_forward(x, scale, bias, epsilon, axis_name)
  return y, mean, var


def _bn_forward(x, scale, bias, epsilon, axis_name):
  xf = x.astype(jnp.float32)
  mean, var = _batch_moments(xf, axis_name)
  r = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (r * scale) + bias
  return y, mean, var, r


def _global_count(x: jax.Array, axis_name: str | None):
  count = 1
  for a in range(x.ndim - 1):
    count *= x.shape[a]
  if axis_name is not None:
    count = count * jax.lax.psum(1, axis_name)
  return count


def _bn_train_fwd(x, scale, bias, epsilon, axis_name):
  y, mean, var, r = _bn_forward(x, scale, bias, epsilon, axis_name)
  # The device count is read here, where the axis is bound (a backward pass may run outside).
  count = jnp.asarray(_global_count(x, axis_name), jnp.float32)
  return (y, mean, var), (x, mean, r, scale, count)


def _bn_train_bwd(epsilon, axis_name, res, cts):
  x, mean, r, scale, count = res
  g = cts[0]
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * r
  sum_g = jnp.sum(g, axis=axes)
  sum_gx = jnp.sum(g * xhat, axis=axes)
  tot_g, tot_gx = sum_g, sum_gx
  if axis_name is not None:
    tot_g, tot_gx = jax.lax.psum((sum_g, sum_gx), axis_name)
  dx = (scale * r) * (g - tot_g / count - xhat * (tot_gx / count))
  return dx.astype(x.dtype), sum_gx, sum_g


batch_norm_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over NHWC inputs (statistics over N, H, W).

  momentum: Flax convention, weight of the old running value (PyTorch 0.01 == 0.99 here).
  unbiased_running_var: update running_var with the unbiased batch variance, as PyTorch does.
  axis_name: when set (inside pmap), batch statistics are averaged across that axis.
  custom_grad: training-mode backward in closed form (`batch_norm_train`); None: on CPU,
  where it is measured faster, XLA's autodiff elsewhere (same values).
  """

  momentum: float = 0.99
  epsilon: float = 1e-3
  unbiased_running_var: bool = True
  axis_name: str | None = None
  scale_init: Callable[..., Any] = nn.initializers.ones
  dtype: Any = None
  custom_grad: bool | None = None

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

    custom = jax.default_backend() == 'cpu' if self.custom_grad is None else self.custom_grad
    if custom:
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name)
    else:
      y, mean, var, _ = _bn_forward(x, scale, bias, self.epsilon, self.axis_name)
    if not self.is_initializing():
      count = _global_count(x, self.axis_name)
      run_var = var * (count / jnp.maximum(count - 1, 1)) if self.unbiased_running_var else var
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1.0 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1.0 - m) * jax.lax.stop_gradient(run_var)
    return y.astype(dtype)
