"""Flax models: parameter counts, shapes, train-mode statistics, init schemes, conv formulations."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zenfer_jax
from zenfer_jax.model import zennet
from zenfer_jax.model.layers.attention import channel_shuffle
from zenfer_jax.model.zennet import XAVIER_GAIN, ZenNet, build_model, count_params, init_variables

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperResIDWE2K3(16,16,1,16,1)SuperConvK1BNRELU(16,32,1,1)'


@pytest.fixture(scope='module')
def zennet_r_sa_lw():
  """One real init of ZenNet-R-SA+lw_att shared by the tests that need values (compiling is the cost)."""
  model = build_model('zennet_r', 7, use_sa=True, use_lw_att=True)
  return model, init_variables(model, jax.random.key(0), 32)


@pytest.fixture(scope='module')
def tiny_sa():
  model = build_model(TINY, 7, use_sa=True)
  return model, init_variables(model, jax.random.key(3), 16)


def _shapes(model, res):
  v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 32))
  x = jax.ShapeDtypeStruct((2, res, res, 3), jnp.float32)
  logits = jax.eval_shape(model.apply, v, x)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=ZenNet.features), v, x)
  return logits.shape, feats.shape


@pytest.mark.parametrize(
  'name',
  [
    'ZenNet-M',
    'ZenNet-M+lw_att',
    'ZenNet-M-SA',
    'ZenNet-M-SA+lw_att',
    'ZenNet-R',
    'ZenNet-R+lw_att',
    'ZenNet-R-SA',
    'ZenNet-R-SA+lw_att',
    'mixed-families',
    'mixed-families-SA',
    'mixed-families-SA+lw_att',
  ],
)
def test_trainable_params_equal_reference(model_facts, name):
  f = model_facts[name]
  model = build_model(
    f['structure'], f['num_classes'], use_sa=f['use_sa'], use_lw_att=f['use_lw_att']
  )
  v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 32))
  assert count_params(v['params']) == f['trainable_params']


@pytest.mark.parametrize(
  'preset, res, feat_hw, channels',
  [
    ('zennet_m', 224, 7, 2048),
    ('zennet_m', 112, 4, 2048),
    ('zennet_m', 100, 4, 2048),
    ('zennet_r', 224, 28, 192),
    ('zennet_r', 112, 14, 192),
    ('zennet_r', 100, 13, 192),
  ],
)
def test_output_shapes(preset, res, feat_hw, channels):
  model = build_model(preset, 7, use_sa=True, use_lw_att=True)
  logits, feats = _shapes(model, res)
  assert logits == (2, 7)
  assert feats == (2, feat_hw, feat_hw, channels)


def test_jit_forward_at_rafdb_native_size_is_finite_and_deterministic(zennet_r_sa_lw):
  model, v = zennet_r_sa_lw
  x = jax.random.normal(jax.random.key(1), (2, 100, 100, 3))
  f = jax.jit(lambda v, x: model.apply(v, x, train=False))
  y1, y2 = f(v, x), f(v, x)
  assert y1.shape == (2, 7) and bool(jnp.all(jnp.isfinite(y1)))
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
  # Batch independence in eval mode: one sample alone gives the same logits.
  np.testing.assert_allclose(np.asarray(f(v, x[:1]))[0], np.asarray(y1)[0], rtol=1e-4, atol=1e-4)


def test_same_seed_same_params_other_seed_differs(tiny_sa):
  model, a = tiny_sa
  b = init_variables(model, jax.random.key(3), 16)
  c = init_variables(model, jax.random.key(4), 16)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  k = ('params', 'backbone', 'block0', 'conv0', 'kernel')

  def get(t):
    return t[k[0]][k[1]][k[2]][k[3]][k[4]]

  assert not np.allclose(np.asarray(get(a)), np.asarray(get(c)))


def test_train_mode_updates_batch_stats_with_pytorch_rule():
  model = build_model(TINY, 7, bn_momentum=0.9)
  v = init_variables(model, jax.random.key(0), 16)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  logits, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  assert logits.shape == (4, 7)
  # Stem conv output, computed independently, gives the expected running statistics.
  kernel = v['params']['backbone']['block0']['conv0']['kernel']
  y = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  y = np.asarray(y, np.float64).reshape(-1, 8)
  n = y.shape[0]
  stats = new['batch_stats']['backbone']['block0']['bn1']
  np.testing.assert_allclose(stats['mean'], 0.1 * y.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * y.var(0) * n / (n - 1), rtol=1e-4)
  # Every BN in the model moved off its fresh statistics, eval mode reads them.
  for leaf in jax.tree_util.tree_leaves(new['batch_stats']):
    assert leaf.shape[0] in (8, 16, 32, 48)
  f = jax.jit(model.apply)
  eval_before = f(v, x)
  eval_after = f({**v, **new}, x)
  assert not np.allclose(np.asarray(eval_before), np.asarray(eval_after))


def test_custom_init_follows_the_reference(zennet_r_sa_lw):
  _, v = zennet_r_sa_lw
  p = v['params']
  layer = p['backbone']['block4']['layer0']
  # Zero scale on the last BN of every residual layer, ones elsewhere; proj BN keeps ones.
  assert float(jnp.abs(layer['bn8']['scale']).max()) == 0.0
  assert float(layer['bn1']['scale'].min()) == 1.0 and float(layer['proj_bn']['scale'].min()) == 1.0
  # Xavier-normal with the reference gain: (256, 16) 1x1 conv over 5 sub-layers*2 -> check one big kernel.
  k = np.asarray(p['backbone']['block5']['conv0']['kernel'])  # 1x1, 256 -> 192
  expected = XAVIER_GAIN * np.sqrt(2.0 / (256 + 192))
  assert abs(k.std() / expected - 1) < 0.03
  fc = np.asarray(p['fc']['kernel'])
  assert fc.shape == (192, 7) and abs(fc.std() / (XAVIER_GAIN * np.sqrt(2.0 / 199)) - 1) < 0.1
  assert (
    float(jnp.abs(p['fc']['bias']).max()) == 0.0
    and float(jnp.abs(layer['proj_conv']['bias']).max()) == 0.0
  )
  sa = layer['sa6']
  assert (np.asarray(sa['cweight']) == 0).all() and (np.asarray(sa['cbias']) == 1).all()
  assert (np.asarray(p['lw_att']['res_scale']) == 1).all() and (
    np.asarray(p['lw_att']['x_scale']) == 1
  ).all()


def test_custom_open_init_differs_from_custom_only_in_the_zero_scales():
  """Same draws; only the last BatchNorm of each residual branch starts at 1 instead of 0."""
  key = jax.random.key(0)
  custom = init_variables(build_model('zennet_r', 7, use_sa=True), key, 16)['params']
  opened = build_model('zennet_r', 7, use_sa=True, init='custom_open')
  opened = dict(jax.tree_util.tree_leaves_with_path(init_variables(opened, key, 16)['params']))
  changed = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(custom):
    if not np.array_equal(opened[path], leaf):
      assert (np.asarray(leaf) == 0).all() and (np.asarray(opened[path]) == 1).all()
      changed.append(jax.tree_util.keystr(path))
  # ZenNet-R: 2 + 2 + 2 + 10 residual layers, one zeroed BatchNorm scale each.
  assert len(changed) == 16 and all(name.endswith("['scale']") for name in changed), changed


def test_gaussian_init_and_no_reslink_variant(zennet_r_sa_lw):
  model = build_model(TINY, 7, no_reslink=True, init='gaussian')
  p = init_variables(model, jax.random.key(0), 16)['params']
  k = np.asarray(p['backbone']['block1']['layer0']['conv3']['kernel'])  # 3x3, 8 -> 16
  assert abs(k.std() - 1) < 0.1
  assert float(p['backbone']['block1']['layer0']['bn4']['scale'].min()) == 1.0
  assert 'proj_conv' not in p['backbone']['block1']['layer0']
  shapes = jax.eval_shape(
    lambda: init_variables(build_model('zennet_r', 7, no_reslink=True), jax.random.key(0), 32)
  )
  assert 'proj_conv' not in shapes['params']['backbone']['block2']['layer0']
  assert 'proj_conv' in zennet_r_sa_lw[1]['params']['backbone']['block2']['layer0']


def test_no_bn_variant_has_no_batchnorm():
  model = build_model(TINY, 7, no_bn=True)
  v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 16))
  assert 'batch_stats' not in v or all(
    'proj_bn' in '/'.join(str(k) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(v.get('batch_stats', {}))[0]
  )


def _train_grads(model, v, x):
  def loss(params):
    y, _ = model.apply(
      {'params': params, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats']
    )
    return jnp.sum(jnp.sin(y))

  return jax.jit(jax.grad(loss))(v['params'])


def test_model_impls_agree(tiny_sa):
  """The CPU formulations and XLA's ops give one model the same outputs and gradients."""
  x = jax.random.normal(jax.random.key(1), (2, 33, 33, 3))
  a = build_model(TINY, 7, use_sa=True, conv_impl='cpu', bn_impl='cpu')
  b = build_model(TINY, 7, use_sa=True, conv_impl='xla', bn_impl='xla')
  v = tiny_sa[1]
  fa, fb = jax.jit(a.apply), jax.jit(b.apply)
  np.testing.assert_allclose(np.asarray(fa(v, x)), np.asarray(fb(v, x)), rtol=1e-4, atol=1e-4)
  ga, gb = jax.tree.leaves(_train_grads(a, v, x)), jax.tree.leaves(_train_grads(b, v, x))
  # Some leaves (a bias feeding a BatchNorm) are zero up to rounding: compare at the model's scale.
  scale = max(float(np.max(np.abs(g))) for g in gb)
  for p, q in zip(ga, gb):
    np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-5 * scale)


# Large enough (> 2^19 elements per thin activation) that the W-folded convs, not the batch-1
# blocked ones, are chosen: the RGB stem, a stride-2 5x5 at 8 channels, 7x7 at 8 and 16.
THIN_R = (
  'SuperConvK3BNRELU(3,8,1,1)SuperResK1K5K1(8,8,2,8,1)'
  'SuperResK1K7K1(8,16,1,8,1)SuperResK1K7K1(16,16,1,16,1)'
)


def _assert_impls_agree(structure: str, size: int, chosen: str) -> None:
  """The CPU formulations (`chosen` among them) and XLA's ops: same outputs and gradients."""
  x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
  a = build_model(structure, 7, use_sa=True, conv_impl='cpu', bn_impl='cpu')
  b = build_model(structure, 7, use_sa=True, conv_impl='xla', bn_impl='xla')
  v = init_variables(a, jax.random.key(4), 16)
  assert chosen in str(jax.make_jaxpr(a.apply)(v, x))
  np.testing.assert_allclose(
    np.asarray(jax.jit(a.apply)(v, x)), np.asarray(jax.jit(b.apply)(v, x)), rtol=1e-4, atol=1e-4
  )
  ga, gb = jax.tree.leaves(_train_grads(a, v, x)), jax.tree.leaves(_train_grads(b, v, x))
  scale = max(float(np.max(np.abs(g))) for g in gb)
  for p, q in zip(ga, gb):
    np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-5 * scale)


def test_model_impls_agree_where_convs_are_w_folded():
  _assert_impls_agree(THIN_R, 184, 'conv_wfold')


def test_model_impls_agree_for_zennet_r_at_48px():
  """FER2013's size: the last stage's 7x7 convs run at 6x6, larger than the activation, where
  the CPU formulation is the Toeplitz GEMM."""
  _assert_impls_agree('zennet_r', 48, 'name=conv_toeplitz')


def test_auto_impls_resolve_once_to_the_explicit_choice(tiny_sa):
  want = 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  auto = build_model(TINY, 7, use_sa=True)
  explicit = build_model(TINY, 7, use_sa=True, conv_impl=want, bn_impl=want)
  # build_model records the resolved choice, so the two models are the same configuration.
  assert (auto.conv_impl, auto.bn_impl) == (want, want)
  assert auto == explicit
  # A ZenNet made directly with 'auto' resolves in the same function: bit-identical numerics.
  direct = ZenNet(structure_text=auto.structure_text, num_classes=7, use_sa=True)
  assert (direct.conv_impl, direct.bn_impl) == ('auto', 'auto')
  v = tiny_sa[1]
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  np.testing.assert_array_equal(jax.jit(direct.apply)(v, x), jax.jit(explicit.apply)(v, x))
  for a, b in zip(
    jax.tree.leaves(_train_grads(direct, v, x)), jax.tree.leaves(_train_grads(explicit, v, x))
  ):
    np.testing.assert_array_equal(a, b)


def test_impl_options_fail_clearly_and_the_removed_spelling_says_what_to_use():
  for key in ('conv_impl', 'bn_impl'):
    with pytest.raises(
      ValueError, match=rf"{key} must be one of \('auto', 'xla', 'cpu'\), got 'fast'"
    ):
      build_model(TINY, 7, **{key: 'fast'})
  with pytest.raises(zennet.RemovedOptionError, match=r'depthwise_impl was removed.*conv_impl'):
    build_model(TINY, 7, depthwise_impl='shift')
  with pytest.raises(TypeError, match=r"unexpected keyword arguments \['conv_implementation'\]"):
    build_model(TINY, 7, conv_implementation='xla')


def test_backend_is_read_in_one_place():
  """Only cpu_kernels.resolve_impl looks at the backend to choose a model's arithmetic.

  The Zen-score (zenfer_jax/nas) reads it for its own compile options and padding.
  """
  root = pathlib.Path(zenfer_jax.__file__).parent
  readers = {
    str(p.relative_to(root))
    for p in root.rglob('*.py')
    if 'default_backend(' in p.read_text() and p.relative_to(root).parts[0] != 'nas'
  }
  assert readers == {'model/layers/cpu_kernels.py'}


def test_channel_shuffle_matches_reference_index_rule():
  x = jnp.arange(8.0).reshape(1, 1, 1, 8)
  # channel g*(C/2)+i -> i*2+g
  assert np.asarray(channel_shuffle(x, 2)).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_bf16_compute_keeps_float32_params():
  model = build_model(TINY, 7, use_sa=True, dtype=jnp.bfloat16)
  v = init_variables(model, jax.random.key(3), 16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(v))
  y = jax.jit(model.apply)(v, jnp.ones((2, 16, 16, 3)))
  assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


def test_bad_arguments_fail_clearly():
  with pytest.raises(ValueError, match='init must be one of'):
    build_model(TINY, 7, init='kaiming')
  with pytest.raises(ValueError, match='num_classes'):
    build_model(TINY, 0)
  with pytest.raises(ValueError, match='multiple of 16'):
    build_model('SuperConvK3BNRELU(3,8,2,1)', 7, use_lw_att=True)
