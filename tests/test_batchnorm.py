"""The closed-form BatchNorm backward (`cpu_kernels.batch_norm_train`) against XLA's autodiff of
the forward, and the BatchNorm module on each impl."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zenfer_jax.model.layers import cpu_kernels
from zenfer_jax.model.layers.batchnorm import BatchNorm
from zenfer_jax.model.layers.cpu_kernels import batch_norm_forward, batch_norm_train, resolve_impl

EPS = 1e-3


def _data(shape, seed=0):
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
  scale = jnp.asarray(rng.uniform(0.5, 2, c).astype(np.float32))
  bias = jnp.asarray(rng.standard_normal(c).astype(np.float32))
  w = jnp.asarray(
    rng.standard_normal(shape, np.float32)
  )  # a loss that weighs every output differently
  return x, scale, bias, w


def _loss(norm):
  def f(x, scale, bias, w):
    y = norm(x, scale, bias)
    return jnp.sum(jax.nn.relu(y) * w) + 0.5 * jnp.sum(y * y)

  return f


@pytest.mark.parametrize('shape', [(4, 6, 6, 8), (2, 5, 7, 3), (3, 1, 1, 16)])
def test_gradients_equal_autodiff(shape):
  x, scale, bias, w = _data(shape)
  custom = _loss(lambda x, s, b: batch_norm_train(x, s, b, EPS, None)[0])
  auto = _loss(lambda x, s, b: batch_norm_forward(x, s, b, EPS, None)[0])
  gc = jax.jit(jax.grad(custom, argnums=(0, 1, 2)))(x, scale, bias, w)
  ga = jax.jit(jax.grad(auto, argnums=(0, 1, 2)))(x, scale, bias, w)
  for c, a in zip(gc, ga):
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))))
  # The forward is the same expression, so the outputs and statistics are equal bit for bit.
  for c, a in zip(
    batch_norm_train(x, scale, bias, EPS, None), batch_norm_forward(x, scale, bias, EPS, None)[:3]
  ):
    np.testing.assert_array_equal(c, a)


def test_gradients_equal_autodiff_across_devices():
  # vmap with an axis name stands in for pmap: statistics and the backward's means are global.
  x, scale, bias, w = _data((3, 4, 5, 5, 8), seed=1)

  def total(norm):
    def f(x, scale, bias, w):
      per = jax.vmap(lambda xi, wi: _loss(norm)(xi, scale, bias, wi), axis_name='d')
      return jnp.sum(per(x, w))

    return f

  custom = total(lambda a, s, b: batch_norm_train(a, s, b, EPS, 'd')[0])
  auto = total(lambda a, s, b: batch_norm_forward(a, s, b, EPS, 'd')[0])
  gc = jax.grad(custom, argnums=(0, 1, 2))(x, scale, bias, w)
  ga = jax.grad(auto, argnums=(0, 1, 2))(x, scale, bias, w)
  for c, a in zip(gc, ga):
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(a))))
  # Not the same as normalising each device on its own: the test can tell the two apart.
  local = total(lambda a, s, b: batch_norm_forward(a, s, b, EPS, None)[0])
  assert not np.allclose(jax.grad(local)(x, scale, bias, w), gc[0], rtol=1e-3)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_module_paths_agree_on_outputs_statistics_and_gradients(dtype):
  x, _, _, w = _data((4, 6, 6, 8), seed=2)
  x = x.astype(dtype)
  results = []
  for impl in ('cpu', 'xla'):
    bn = BatchNorm(impl=impl, dtype=dtype)
    v = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
    v = {
      'params': jax.tree.map(lambda p: p * 1.5 + 0.25, v['params']),
      'batch_stats': v['batch_stats'],
    }

    def loss(params, bn=bn, v=v):
      y, upd = bn.apply(
        {'params': params, 'batch_stats': v['batch_stats']},
        x,
        use_running_average=False,
        mutable=['batch_stats'],
      )
      return jnp.sum(y.astype(jnp.float32) * w), (y, upd['batch_stats'])

    (_, (y, stats)), g = jax.value_and_grad(loss, has_aux=True)(v['params'])
    gx = jax.grad(
      lambda xx, bn=bn, v=v: jnp.sum(
        bn.apply(v, xx, use_running_average=False, mutable=['batch_stats'])[0].astype(jnp.float32)
        * w
      )
    )(x)
    results.append((y, stats, g, gx))
  (y1, s1, g1, gx1), (y2, s2, g2, gx2) = results
  np.testing.assert_array_equal(np.asarray(y1, np.float32), np.asarray(y2, np.float32))
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_array_equal(a, b)
  tol = 1e-4 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(g1) + [gx1], jax.tree.leaves(g2) + [gx2]):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))
  assert gx1.dtype == dtype


def test_bn_impl_auto_is_the_explicit_choice_bit_for_bit():
  x, _, _, w = _data((4, 6, 6, 8), seed=3)
  grads = {}
  for impl in ('auto', 'cpu', 'xla'):
    bn = BatchNorm(impl=impl)
    v = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)

    def loss(params, xx, bn=bn, v=v):
      y, _ = bn.apply(
        {'params': params, 'batch_stats': v['batch_stats']},
        xx,
        use_running_average=False,
        mutable=['batch_stats'],
      )
      return jnp.sum(jax.nn.relu(y) * w)

    grads[impl] = jax.tree.leaves(jax.jit(jax.grad(loss, argnums=(0, 1)))(v['params'], x))
  for a, b in zip(grads['auto'], grads[resolve_impl('auto')]):
    np.testing.assert_array_equal(a, b)
  # The two backward passes round differently, so the equality above tells them apart.
  assert any(not np.array_equal(a, b) for a, b in zip(grads['cpu'], grads['xla']))


def test_unknown_bn_impl_names_the_allowed_values():
  with pytest.raises(ValueError, match=r"BatchNorm.impl must be one of \('auto', 'xla', 'cpu'\)"):
    BatchNorm(impl='closed_form').init(
      jax.random.PRNGKey(0), jnp.ones((2, 3, 3, 4)), use_running_average=False
    )


@pytest.mark.parametrize(
  'shape, axes',
  [
    ((4, 12, 12, 8), (0, 1, 2)),  # folded 16 ways
    ((3, 5, 7, 8), (0, 1, 2)),  # 105 rows: no power of two divides, summed as is
    ((2, 6, 6, 48), (0, 1, 2)),  # 128 // 48 = 2 lanes of channels
    ((2, 3, 3, 256), (0, 1, 2)),  # wider than the lanes: summed as is
    ((4, 12, 12, 8), (1, 2)),  # per sample, as the SA gates reduce
    ((5, 6, 10, 16), (1, 2)),
  ],
)
def test_channel_sum_equals_plain_sum(shape, axes):
  """The lane-folded channel reduction sums the same numbers as jnp.sum, in another order."""
  x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
  got = jax.jit(lambda t: cpu_kernels._channel_sum(t, axes))(jnp.asarray(x))
  want = x.astype(np.float64).sum(axis=axes)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_forward_moments_equal_numpy():
  x, scale, bias, _ = _data((8, 12, 12, 8))
  y, mean, var, r = batch_norm_forward(x, scale, bias, EPS, None)
  xn = np.asarray(x, np.float64)
  np.testing.assert_allclose(mean, xn.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, xn.var(axis=(0, 1, 2)), rtol=1e-5)
  want = (xn - xn.mean((0, 1, 2))) / np.sqrt(xn.var((0, 1, 2)) + EPS) * scale + bias
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
