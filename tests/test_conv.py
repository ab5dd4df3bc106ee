"""The CPU-only conv formulations against XLA's convolution: values and both gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zenfer_jax.layers.conv import Conv, conv_blocked, conv_strided, use_output_blocked


def _ref(x, kernel, stride, pad):
  return lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    ((pad, pad), (pad, pad)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def _check(fn, x, kernel, stride):
  pad = kernel.shape[0] // 2
  y = fn(x, kernel, stride, pad)
  y_ref = _ref(x, kernel, stride, pad)
  assert y.shape == y_ref.shape
  # float32 sums of up to k*k*cin products in another order: compare at the output's scale
  tol = lambda ref: 1e-5 * float(jnp.max(jnp.abs(ref)))  # noqa: E731
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=tol(y_ref))
  g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32))
  dx, dk = jax.vjp(lambda a, b: fn(a, b, stride, pad), x, kernel)[1](g)
  dx_ref, dk_ref = jax.vjp(lambda a, b: _ref(a, b, stride, pad), x, kernel)[1](g)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=tol(dx_ref))
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=tol(dk_ref))


# ZenNet-R's stride-2 cases (k 5/7, 8/16 channels) at small sizes; odd and even extents,
# including ones where the last padded rows are never read, and a stride of 3.
@pytest.mark.parametrize(
  'h,w,cin,cout,k,stride',
  [
    (12, 12, 8, 8, 5, 2),
    (11, 13, 8, 8, 7, 2),
    (10, 9, 16, 16, 7, 2),
    (9, 10, 8, 32, 3, 2),
    (8, 8, 8, 12, 3, 2),
    (13, 11, 8, 8, 5, 3),
  ],
)
def test_conv_strided_matches_xla(h, w, cin, cout, k, stride):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, h, w, cin), dtype=np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32))
  _check(jax.jit(conv_strided, static_argnums=(2, 3)), x, kernel, stride)


@pytest.mark.parametrize('cin,k,stride', [(8, 5, 2), (3, 3, 2), (8, 3, 1), (16, 7, 1)])
def test_conv_module_matches_xla(cin, k, stride):
  """The module's choice of path (whatever it is on this backend) keeps params and values."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 10, 10, cin), dtype=np.float32))
  mod = Conv(features=8, kernel_size=k, stride=stride)
  params = mod.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, params) == {'params': {'kernel': (k, k, cin, 8)}}
  kernel = params['params']['kernel']
  _check(lambda a, b, s, p: mod.apply({'params': {'kernel': b}}, a), x, kernel, stride)


# The stride-1 thin convs it is chosen for (3 or 8 channels in, k 3/5/7) plus an odd cout.
@pytest.mark.parametrize(
  'h,w,cin,cout,k',
  [
    (8, 8, 3, 8, 3),
    (10, 6, 8, 8, 3),
    (8, 12, 8, 8, 5),
    (14, 14, 8, 8, 7),
    (6, 6, 8, 5, 7),
  ],
)
def test_conv_blocked_matches_xla(h, w, cin, cout, k):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, h, w, cin), dtype=np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32))
  _check(jax.jit(lambda a, b, s, p: conv_blocked(a, b, p), static_argnums=(2, 3)), x, kernel, 1)


def test_output_blocked_selection():
  assert use_output_blocked((1, 224, 224, 8), (3, 3, 8, 8), 1, 1) == (
    jax.default_backend() == 'cpu'
  )
  assert not use_output_blocked((16, 224, 224, 8), (3, 3, 8, 8), 1, 1)  # batch-16 training size
  assert not use_output_blocked((1, 28, 28, 16), (7, 7, 16, 16), 1, 1)
  assert not use_output_blocked((1, 224, 224, 3), (3, 3, 3, 64), 2, 1)
  assert not use_output_blocked((1, 7, 7, 8), (3, 3, 8, 8), 1, 1)  # odd extent
