"""zenfer_jax.training.init: the model from a config, first variables, init_from and only_backbone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import TINY, TINY_NUM_CLASSES, flat, tiny_config

# The shared fixtures config, model and fresh (imported as themselves: pytest finds them here).
from train_fixtures import tiny_config_fixture as tiny_config_fixture
from train_fixtures import tiny_model_fixture as tiny_model_fixture
from train_fixtures import tiny_variables_fixture as tiny_variables_fixture

from zenfer_jax.model import zennet
from zenfer_jax.model.structure import resolve
from zenfer_jax.rundir import model_directory
from zenfer_jax.training import init


def test_build_model_takes_everything_from_config_model(config):
  c = tiny_config('/unused', **{'model.dtype': 'bfloat16', 'model.use_sa': False})
  c.model.cross_device_bn = True
  model = init.build_model(c, 3)
  assert model.structure_text == str(resolve(TINY))
  assert model.num_classes == 3 and model.use_sa is False
  assert model.dtype == jnp.bfloat16
  assert model.bn_axis_name == 'batch'  # The collective axis of zenfer_jax.training.parallel.
  assert init.build_model(config, 3).bn_axis_name is None
  assert model.bn_momentum == c.model.bn_momentum and model.bn_eps == c.model.bn_eps
  assert set(zennet.DTYPES) == {'float32', 'bfloat16', 'float16'}


def test_initial_variables_are_a_function_of_the_rng(config, model, fresh):
  again = init.initial_variables(config, model, jax.random.PRNGKey(0))
  other = init.initial_variables(config, model, jax.random.PRNGKey(1))
  a, b, c = flat(fresh), flat(again), flat(other)
  assert sorted(a) == sorted(b) == sorted(c)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert any(not np.array_equal(a[k], c[k]) for k in a if k.endswith('kernel'))
  assert all(isinstance(v, np.ndarray) for v in a.values())  # On the host, ready to replicate.


def test_placeholder_variables_have_the_shapes_and_nothing_else(config, model, fresh):
  skeleton = flat(init.placeholder_variables(config, model))
  real = flat(fresh)
  assert {k: (v.shape, v.dtype) for k, v in skeleton.items()} == {
    k: (v.shape, v.dtype) for k, v in real.items()
  }
  assert all(not v.any() for v in skeleton.values())


def _model_dir(tmp_path, variables, num_classes: int) -> str:
  card = model_directory.make_card(TINY, num_classes, use_sa=True, image_size=16)
  return model_directory.save_model_dir(str(tmp_path / 'init'), variables, card)


def test_init_from_loads_everything_or_only_the_backbone(tmp_path, config, model, fresh):
  donor = jax.tree_util.tree_map(lambda x: x + 1, fresh)  # Another model's values, same tree.
  path = _model_dir(tmp_path, donor, TINY_NUM_CLASSES)

  c = tiny_config('/unused', init_from=path)
  loaded = flat(init.initial_variables(c, model, jax.random.PRNGKey(0)))
  for k, v in flat(donor).items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)

  # The reference's only_backbone copies every same-named, same-shaped array: with the same
  # class count that includes the classifier.
  c = tiny_config('/unused', init_from=path, only_backbone=True)
  report = {}
  backbone_only = flat(init.initial_variables(c, model, jax.random.PRNGKey(0), report))
  for k, v in backbone_only.items():
    np.testing.assert_array_equal(v, flat(donor)[k], err_msg=k)
  assert sorted(report['copied']) == sorted(flat(donor)) and report['left_at_init'] == []


def test_only_backbone_takes_what_matches_by_name_and_shape(tmp_path, config, model, fresh):
  """A 7-class donor without one BatchNorm layer and with an array this model lacks: the
  classifier (another shape) and the missing layer start fresh, the rest is copied, the extra
  array is unused, and the report says which and why."""
  other = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1, fresh)
  other['params']['fc'] = {'kernel': np.ones((32, 7), np.float32), 'bias': np.zeros(7, np.float32)}
  bn = sorted(k for k in flat(fresh) if k.startswith('batch_stats/'))[0].split('/')[1:-1]
  node = other['batch_stats']
  for part in bn[:-1]:
    node = node[part]
  del node[bn[-1]]
  other['params']['extra'] = {'kernel': np.ones((3, 3), np.float32)}
  report = {}
  merged = flat(
    init.initial_variables(
      tiny_config('/unused', init_from=_model_dir(tmp_path, other, 7), only_backbone=True),
      model,
      jax.random.PRNGKey(0),
      report,
    )
  )
  missing_bn = 'batch_stats/' + '/'.join(bn)
  left = {e['array']: e['why'] for e in report['left_at_init']}
  assert left['params/fc/kernel'] == 'shape (32, 7) in the checkpoint, (32, 10) here'
  assert left['params/fc/bias'] == 'shape (7,) in the checkpoint, (10,) here'
  assert {k for k in left if k.startswith('batch_stats/')} == {
    f'{missing_bn}/mean',
    f'{missing_bn}/var',
  }
  assert all(left[k] == 'not in the checkpoint' for k in left if k.startswith('batch_stats/'))
  assert report['unused'] == ['params/extra/kernel']
  assert report['source_num_classes'] == 7 and report['only_backbone'] is True
  donor = flat(other)
  for k, v in merged.items():
    expected = flat(fresh)[k] if k in left else donor[k]
    np.testing.assert_array_equal(v, expected, err_msg=k)
  assert sorted(report['copied']) == sorted(set(merged) - set(left))


def test_init_from_with_another_head_fails_unless_only_the_backbone_is_taken(
  tmp_path, config, model, fresh
):
  other = jax.tree_util.tree_map(np.copy, fresh)  # A 7-class model: only the classifier differs.
  other['params']['fc'] = {'kernel': np.ones((32, 7), np.float32), 'bias': np.zeros(7, np.float32)}
  path = _model_dir(tmp_path, other, 7)
  with pytest.raises(model_directory.MergeError, match='fc/kernel'):
    init.initial_variables(tiny_config('/unused', init_from=path), model, jax.random.PRNGKey(0))
  merged = init.initial_variables(
    tiny_config('/unused', init_from=path, only_backbone=True), model, jax.random.PRNGKey(0)
  )
  assert merged['params']['fc']['kernel'].shape[-1] == TINY_NUM_CLASSES
