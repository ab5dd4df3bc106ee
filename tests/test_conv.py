"""The CPU conv formulations (`cpu_kernels`) against XLA's convolution: values and both gradients;
the Conv module on each impl."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zenfer_jax.model.layers import conv as conv_lib
from zenfer_jax.model.layers.conv import Conv
from zenfer_jax.model.layers.cpu_kernels import (
  conv_blocked,
  conv_strided,
  conv_toeplitz,
  conv_wfold,
  depthwise_shift,
  resolve_impl,
  use_output_blocked,
  use_toeplitz,
  wfold_factors,
)


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


@pytest.mark.parametrize('impl', ['cpu', 'xla', 'auto'])
@pytest.mark.parametrize('cin,k,stride', [(8, 5, 2), (3, 3, 2), (8, 3, 1), (16, 7, 1), (8, 1, 2)])
def test_conv_module_matches_xla(cin, k, stride, impl):
  """Every impl keeps the parameters and XLA's values, gradients included."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 10, 10, cin), dtype=np.float32))
  mod = Conv(features=8, kernel_size=k, stride=stride, impl=impl)
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


# ZenNet-R's thin convs at small sizes: the RGB stem (forward and gradient folds differ), 8 and
# 16 channels, k 3/5/7, stride 1 and 2 (odd heights, where the last padded row is never read).
@pytest.mark.parametrize(
  'h,w,cin,cout,k,stride,fold,grad_fold',
  [
    (8, 8, 3, 8, 3, 1, 4, 2),
    (6, 8, 8, 8, 3, 1, 2, 2),
    (8, 12, 8, 8, 5, 1, 2, 2),
    (10, 8, 8, 8, 7, 1, 4, 4),
    (6, 6, 16, 16, 7, 1, 2, 2),
    (7, 4, 8, 5, 3, 1, 1, 4),
    (12, 12, 8, 8, 5, 2, 2, 2),
    (9, 8, 8, 8, 7, 2, 2, 2),
    (10, 12, 8, 8, 3, 2, 1, 1),
  ],
)
def test_conv_wfold_matches_xla(h, w, cin, cout, k, stride, fold, grad_fold):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, h, w, cin), dtype=np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32))
  fn = jax.jit(lambda a, b, s, p: conv_wfold(a, b, s, p, fold, grad_fold), static_argnums=(2, 3))
  _check(fn, x, kernel, stride)


# Kernels larger than the activation (ZenNet-R's 7x7 at 6x6 when trained at 48 px), odd and
# unequal extents, other channel counts.
@pytest.mark.parametrize(
  'h,w,cin,cout,k',
  [(6, 6, 16, 16, 7), (3, 5, 8, 12, 7), (2, 2, 32, 32, 3), (5, 4, 16, 8, 5), (1, 3, 4, 6, 3)],
)
def test_conv_toeplitz_matches_xla(h, w, cin, cout, k):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((3, h, w, cin), dtype=np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), dtype=np.float32))
  _check(lambda a, b, stride, pad: conv_toeplitz(a, b, pad), x, kernel, 1)


def test_conv_toeplitz_keeps_bfloat16():
  x = jnp.ones((2, 6, 6, 16), jnp.bfloat16)
  y = conv_toeplitz(x, jnp.ones((7, 7, 16, 16), jnp.bfloat16), 3)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(y, np.float32), _ref(x, jnp.ones((7, 7, 16, 16), x.dtype), 1, 3).astype(np.float32)
  )


def test_toeplitz_selection():
  assert use_toeplitz((64, 6, 6, 16), (7, 7, 16, 16), 1, 1)  # ZenNet-R's last stage at 48 px
  assert use_toeplitz((64, 2, 2, 32), (3, 3, 32, 32), 1, 1)
  assert not use_toeplitz((64, 8, 8, 16), (7, 7, 16, 16), 1, 1)  # the kernel fits: XLA's
  assert not use_toeplitz((64, 12, 12, 16), (7, 7, 16, 16), 2, 1)  # strided: conv_strided's
  assert not use_toeplitz((64, 6, 6, 16), (7, 7, 1, 16), 1, 16)  # grouped
  assert not use_toeplitz((64, 6, 6, 256), (7, 7, 256, 256), 1, 1)  # matrix too large
  assert not use_toeplitz((64, 6, 6, 16), (1, 1, 16, 16), 1, 1)  # 1x1: a matmul


def test_wfold_selection():
  assert wfold_factors((16, 224, 224, 3), (3, 3, 3, 8), 1, 1) == (4, 2)  # RGB stem
  assert wfold_factors((16, 224, 224, 8), (3, 3, 8, 8), 1, 1) == (2, 2)
  assert wfold_factors((16, 56, 56, 8), (7, 7, 8, 8), 1, 1) == (4, 4)
  assert wfold_factors((16, 28, 28, 16), (7, 7, 16, 16), 1, 1) == (2, 2)
  assert wfold_factors((16, 224, 224, 8), (5, 5, 8, 8), 2, 1) == (2, 2)
  assert wfold_factors((16, 56, 56, 16), (7, 7, 16, 16), 2, 1) is None  # no faster at 16
  assert wfold_factors((16, 56, 56, 160), (1, 1, 160, 8), 1, 1) is None  # 1x1: a matmul
  assert wfold_factors((16, 56, 56, 32), (3, 3, 32, 32), 1, 1) is None  # wide
  assert wfold_factors((16, 28, 27, 8), (3, 3, 8, 8), 1, 1) is None  # W not in whole blocks
  assert wfold_factors((16, 28, 28, 8), (3, 3, 1, 8), 1, 8) is None  # grouped
  assert wfold_factors((64, 8, 8, 16), (7, 7, 16, 16), 1, 1) is None  # hardly above the kernel
  assert wfold_factors((64, 10, 10, 16), (7, 7, 16, 16), 1, 1) == (2, 2)


def test_output_blocked_selection():
  assert use_output_blocked((1, 224, 224, 8), (3, 3, 8, 8), 1, 1)
  assert not use_output_blocked((16, 224, 224, 8), (3, 3, 8, 8), 1, 1)  # batch-16 training size
  assert not use_output_blocked((1, 28, 28, 16), (7, 7, 16, 16), 1, 1)
  assert not use_output_blocked((1, 224, 224, 3), (3, 3, 3, 64), 2, 1)
  assert not use_output_blocked((1, 7, 7, 8), (3, 3, 8, 8), 1, 1)  # odd extent


@pytest.mark.parametrize('k, stride, size', [(3, 1, 9), (5, 2, 11), (7, 2, 14), (7, 1, 7)])
def test_depthwise_shift_equals_xla_depthwise(k, stride, size):
  c = 12
  x = jax.random.normal(jax.random.key(0), (2, size, size, c))
  w = jax.random.normal(jax.random.key(1), (k, k, 1, c))
  ref = jax.lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    ((k // 2, k // 2),) * 2,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=c,
  )
  got = jax.jit(depthwise_shift, static_argnums=(2, 3))(x, w, stride, k // 2)
  assert got.shape == ref.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
  # Gradients agree too (training uses this path on CPU).
  g_ref = jax.jit(
    jax.grad(
      lambda w: jnp.sum(
        jnp.sin(
          jax.lax.conv_general_dilated(
            x,
            w,
            (stride, stride),
            ((k // 2, k // 2),) * 2,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
            feature_group_count=c,
          )
        )
      )
    )
  )(w)
  g_got = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(depthwise_shift(x, w, stride, k // 2)))))(w)
  np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_ref), rtol=1e-4, atol=1e-4)


def test_conv_impl_auto_is_resolved_by_backend_in_one_place():
  """'auto' is the explicit choice for this backend, and the module computes exactly that."""
  want = 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  assert resolve_impl('auto') == want
  assert resolve_impl('xla') == 'xla' and resolve_impl('cpu') == 'cpu'
  # Depthwise 7x7 (shifted sums), a thin stride-1 conv (2x2 output blocks) and a strided conv
  # (its input gradient through the stride phases): the impls' float32 sums differ in order for
  # each, so bit equality of values and both gradients pins which impl 'auto' ran.
  rng = np.random.default_rng(4)
  for groups, cin, cout, k, stride in ((16, 16, 16, 7, 2), (1, 8, 8, 3, 1), (1, 8, 16, 5, 2)):
    x = jnp.asarray(rng.standard_normal((2, 12, 12, cin), dtype=np.float32))
    out = {}
    for impl in ('auto', 'cpu', 'xla'):
      mod = Conv(features=cout, kernel_size=k, stride=stride, groups=groups, impl=impl)
      v = mod.init(jax.random.PRNGKey(0), x)
      y, vjp = jax.vjp(jax.jit(lambda v, x, mod=mod: mod.apply(v, x)), v, x)
      out[impl] = [y, *jax.tree.leaves(vjp(jnp.sin(y)))]
    for a, b in zip(out['auto'], out[want]):
      np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(out['cpu'], out['xla'])), (cin, k, stride)


def test_unknown_impl_names_the_allowed_values():
  with pytest.raises(
    ValueError, match=r"conv_impl must be one of \('auto', 'xla', 'cpu'\), got 'shift'"
  ):
    resolve_impl('shift', 'conv_impl')
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match=r"Conv.impl must be one of .*'cpu'.*got 'gpu'"):
    Conv(features=4, kernel_size=3, impl='gpu').init(jax.random.PRNGKey(0), x)


def test_old_import_path_still_works():
  """zenfer_jax.nas reads these two names from layers.conv; they are the cpu_kernels objects."""
  from zenfer_jax.model.layers import cpu_kernels

  assert conv_lib.depthwise_shift is cpu_kernels.depthwise_shift
  assert conv_lib.default_depthwise_impl() == ('shift' if resolve_impl('auto') == 'cpu' else 'xla')
