"""Shuffle attention (the SA block) and the lightweight WIRW head (lw_att).

Channel layout follows the reference exactly so PyTorch weights load without
permutation: in NCHW the reference views channels as (groups, C/groups) and
splits each group's channels into a channel-attention half and a
spatial-attention half, then interleaves the two halves of the whole map with a
2-group channel shuffle. In NHWC the same index arithmetic happens on the last
axis.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from zenfer_jax.model.layers import cpu_kernels

__all__ = ['ShuffleAttention', 'LightweightAttention', 'channel_shuffle']


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """Channel c = g*(C/groups) + i moves to i*groups + g (the reference's shuffle, NHWC)."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)


class ShuffleAttention(nn.Module):
  """SA-Net style shuffle attention with the reference's parameter shapes.

  Per half-group channel j there are four scalars (cweight, cbias, sweight,
  sbias) and a per-channel GroupNorm (one group per channel, eps 1e-5).
  impl: 'xla' (the plain form below, differentiated by autodiff), 'cpu' (the same block as one
  gate per channel with a closed-form backward, `cpu_kernels.shuffle_attention`, where it was
  measured faster) or 'auto' (`cpu_kernels.resolve_impl`).
  """

  groups: int = 4
  gn_epsilon: float = 1e-5
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    g = self.groups
    per_group = c // g
    if c % g or not (per_group % 2 == 0 or per_group == 3):
      raise ValueError(
        f'{self.name}: SA needs channels divisible by {2 * g} (or exactly {3 * g}), got {c}'
      )
    # The reference chunks each group in two (the first part takes the odd channel, as
    # torch.chunk does) and holds per_group // 2 gate parameters per half.
    half = per_group // 2
    first = per_group - half
    cweight = self.param('cweight', nn.initializers.zeros, (half,), jnp.float32)
    cbias = self.param('cbias', nn.initializers.ones, (half,), jnp.float32)
    sweight = self.param('sweight', nn.initializers.zeros, (half,), jnp.float32)
    sbias = self.param('sbias', nn.initializers.ones, (half,), jnp.float32)
    gn_scale = self.param('gn_scale', nn.initializers.ones, (half,), jnp.float32)
    gn_bias = self.param('gn_bias', nn.initializers.zeros, (half,), jnp.float32)

    dtype = x.dtype
    if cpu_kernels.resolve_impl(
      self.impl, 'ShuffleAttention.impl'
    ) == 'cpu' and cpu_kernels.use_shuffle_attention(x.shape):
      params = (cweight, cbias, sweight, sbias, gn_scale, gn_bias)
      return cpu_kernels.shuffle_attention(x, *params, g, self.gn_epsilon).astype(dtype)
    xg = x.astype(jnp.float32).reshape(n, h, w, g, per_group)
    x0, x1 = xg[..., :first], xg[..., first:]

    # Channel attention: global average per (sample, group, channel).
    pooled = jnp.mean(x0, axis=(1, 2), keepdims=True)
    xn = x0 * jax.nn.sigmoid(cweight * pooled + cbias)

    # Spatial attention: per-channel GroupNorm over H, W, then an affine gate.
    mu = jnp.mean(x1, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x1 - mu), axis=(1, 2), keepdims=True)
    xs = (x1 - mu) * jax.lax.rsqrt(var + self.gn_epsilon) * gn_scale + gn_bias
    xs = x1 * jax.nn.sigmoid(sweight * xs + sbias)

    out = jnp.concatenate([xn, xs], axis=-1).reshape(n, h, w, c)
    return channel_shuffle(out, 2).astype(dtype)


class LightweightAttention(nn.Module):
  """WIRW head on the pooled map: out = res_scale * SA(x) + x_scale * x (both scales start at 1)."""

  groups: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    res_scale = self.param('res_scale', nn.initializers.ones, (1,), jnp.float32)
    x_scale = self.param('x_scale', nn.initializers.ones, (1,), jnp.float32)
    y = ShuffleAttention(groups=self.groups, name='sa')(x)
    return (res_scale * y + x_scale * x).astype(x.dtype)
