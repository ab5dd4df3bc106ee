"""The SA block's gate form with its closed-form backward (`cpu_kernels.shuffle_attention`)
against the plain form differentiated by autodiff: values and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zenfer_jax.model.layers import cpu_kernels
from zenfer_jax.model.layers.attention import ShuffleAttention


def _vjp(module, params, x, g):
  y, fn = jax.jit(lambda p, a: jax.vjp(module.apply, p, a))(params, x)
  return y, fn(g)


# ZenNet-R's widths (8 channels in 4 groups, 16 in 4), two channels per group-half, and
# per_group 3 (one channel-attention parameter serves two channels); odd extents.
@pytest.mark.parametrize('channels,groups', [(8, 4), (16, 4), (16, 8), (12, 4), (12, 2)])
def test_gate_form_matches_plain_sa(channels, groups):
  rng = np.random.default_rng(channels + groups)
  x = jnp.asarray(rng.standard_normal((3, 7, 6, channels), dtype=np.float32) * 2 + 0.5)
  fast = ShuffleAttention(groups=groups, impl='cpu')
  plain = ShuffleAttention(groups=groups, impl='xla')
  params = fast.init(jax.random.key(0), x)
  # Random parameters: the initial ones (zero weights) would hide most terms of the backward.
  params = jax.tree.map(
    lambda t: jnp.asarray(rng.standard_normal(t.shape, dtype=np.float32)), params
  )
  g = jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32))
  y, grads = _vjp(fast, params, x, g)
  y_ref, grads_ref = _vjp(plain, params, x, g)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  leaves, ref_leaves = jax.tree.leaves(grads), jax.tree.leaves(grads_ref)
  assert [a.shape for a in leaves] == [b.shape for b in ref_leaves]
  for a, b in zip(leaves, ref_leaves):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))


def test_gate_form_is_chosen_for_thin_blocks_only():
  assert cpu_kernels.use_shuffle_attention((16, 224, 224, 8))
  assert cpu_kernels.use_shuffle_attention((16, 28, 28, 16))
  assert not cpu_kernels.use_shuffle_attention((16, 56, 56, 32))  # ZenNet-M's widths


def test_bfloat16_input_keeps_its_dtype_and_values():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 5, 5, 8), dtype=np.float32)).astype(jnp.bfloat16)
  fast = ShuffleAttention(groups=4, impl='cpu')
  params = fast.init(jax.random.key(0), x)
  y = fast.apply(params, x)
  assert y.dtype == jnp.bfloat16
  y_ref = ShuffleAttention(groups=4, impl='xla').apply(params, x)
  np.testing.assert_allclose(np.float32(y), np.float32(y_ref), rtol=1e-2, atol=1e-2)
