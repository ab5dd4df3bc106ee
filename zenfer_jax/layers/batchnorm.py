"""BatchNorm with PyTorch's running-statistics semantics.

Flax's `nn.BatchNorm` feeds the *biased* batch variance into its running
average; PyTorch feeds the unbiased one. Checkpoints move between the two and
the Zen-score reads the running variance directly, so this layer keeps
PyTorch's rule (optionally the biased one) and averages statistics across
devices when given an `axis_name` (cross-replica BatchNorm).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BatchNorm"]


class BatchNorm(nn.Module):
    """BatchNorm over NHWC inputs (statistics over N, H, W).

    momentum: Flax convention, weight of the old running value (PyTorch 0.01 == 0.99 here).
    unbiased_running_var: update running_var with the unbiased batch variance, as PyTorch does.
    axis_name: when set (inside pmap), batch statistics are averaged across that axis.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    unbiased_running_var: bool = True
    axis_name: Optional[str] = None
    scale_init: Callable[..., Any] = nn.initializers.ones
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            count = 1
            for a in axes:
                count *= x.shape[a]
            mean = jnp.mean(xf, axis=axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            # Two-pass variance: stable and exact across devices.
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                count = count * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                run_var = var * (count / jnp.maximum(count - 1, 1)) if self.unbiased_running_var else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * run_var

        dtype = self.dtype or x.dtype
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = (x.astype(jnp.float32) - mean) * inv + bias
        return y.astype(dtype)
