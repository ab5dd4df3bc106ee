"""The paper's transfer recipe on fixtures: face-identity pretraining, then RAF-DB fine-tuning.

Stage 1 is configs/vggface2_m.py (folders, classes='auto') on a generated 20-identity tree;
stage 2 is configs/rafdb_m_transfer.py on the RAF-DB fixture, initialised from stage 1's
workdir with only_backbone. Both with the tiny test model at 16x16 and a few steps. What is
checked: which arrays the fine-tuning took from the pretraining (every backbone parameter and
BatchNorm statistic, by name and shape) and which started fresh (the classifier: 20 identities
there, 7 expressions here), in WORKDIR/init_from.json and in the weights the run trained from.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest
from train_fixtures import REPO, TINY_OVERRIDES, flat

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import init, loop

pytestmark = pytest.mark.slow  # Two training runs.

IDENTITIES = [f'n{i:06d}' for i in range(2, 42, 2)]


def _config(name: str, **overrides):
  sys.path.insert(0, str(REPO))
  module = __import__(f'configs.{name}', fromlist=['get_config'])
  config = module.get_config()
  for key, value in {**TINY_OVERRIDES, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """Stage 1: configs/vggface2_m.py on a 20-identity tree, two steps."""
  root = tmp_path_factory.mktemp('identities')
  fx.make_identity_tree(str(root), IDENTITIES, per_class=4)
  workdir = tmp_path_factory.mktemp('runs') / 'vggface2_m'
  config = _config(
    'vggface2_m',
    **{
      'data.manual_dir': str(root),
      'data.data_dir': str(tmp_path_factory.mktemp('tfds_identities')),
      'num_epochs': 1,
      'steps_per_epoch': 2,
      'warmup_epochs': 0,
      'checkpoint_every_steps': 0,
    },
  )
  assert config.data.classes == 'auto' and config.data.eval_split == 'train'
  summary = loop.train_and_evaluate(config, str(workdir))
  return workdir, summary


def test_the_pretraining_learns_the_identities_as_classes(pretrained):
  workdir, summary = pretrained
  card = model_directory.load_card(str(workdir / workdir_lib.MODEL_BEST))
  assert card['class_names'] == IDENTITIES and card['num_classes'] == len(IDENTITIES)
  records = workdir_lib.read_metrics(str(workdir))
  assert [r['test_examples'] for r in records] == [4 * len(IDENTITIES)]  # The train split.
  assert summary['model_dir'] == str(workdir / workdir_lib.MODEL_BEST)


def test_fine_tuning_starts_from_the_pretrained_backbone(pretrained, tmp_path):
  workdir, _ = pretrained
  manual = tmp_path / 'rafdb'
  fx.make_rafdb(str(manual))
  tfds_dir = tmp_path / 'tfds_rafdb'
  data.prepare_dataset('rafdb', str(tfds_dir), manual_dir=str(manual))
  # A vanishing rate: the fine-tuned weights are the starting point to within 1e-9.
  config = _config(
    'rafdb_m_transfer',
    **{
      'init_from': str(workdir),
      'data.data_dir': str(tfds_dir),
      'num_epochs': 1,
      'steps_per_epoch': 1,
      'warmup_epochs': 0,
      'lr_per_256': 1e-9,
      'mixup_alpha': 0.0,
    },
  )
  assert config.only_backbone and not config.freeze_backbone
  run = tmp_path / 'rafdb_m_transfer'
  loop.train_and_evaluate(config, str(run))

  source, _ = model_directory.load_model_dir(str(workdir / workdir_lib.MODEL_BEST))
  source = flat(source)
  report = json.loads((run / loop.INIT_REPORT).read_text())
  assert report['only_backbone'] is True and report['source_num_classes'] == len(IDENTITIES)
  left = {e['array']: e['why'] for e in report['left_at_init']}
  assert left == {
    'params/fc/kernel': f'shape (32, {len(IDENTITIES)}) in the checkpoint, (32, 7) here',
    'params/fc/bias': f'shape ({len(IDENTITIES)},) in the checkpoint, (7,) here',
  }
  assert sorted(report['copied']) == sorted(k for k in source if not k.startswith('params/fc/'))
  assert any(k.startswith('batch_stats/') for k in report['copied'])
  assert report['unused'] == []

  # The weights the run started from: the same initialisation the run computed.
  model = init.build_model(config, 7)
  init_rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  start = flat(init.initial_variables(config, model, init_rng))
  config.init_from = ''
  fresh = flat(init.initial_variables(config, model, init_rng))
  for k in start:
    expected = fresh[k] if k in left else source[k]
    np.testing.assert_array_equal(start[k], expected, err_msg=k)
  kernel = next(k for k in sorted(fresh) if k.startswith('params/backbone/') and 'kernel' in k)
  assert not np.allclose(fresh[kernel], source[kernel])  # The two are told apart.

  # And the run trained from them: after one step at a vanishing rate its parameters are
  # still the pretrained backbone and the fresh classifier.
  state, _ = _latest(run)
  for k, v in flat({'params': state['params']}).items():
    np.testing.assert_allclose(v, start[k], atol=1e-6, err_msg=k)


def _latest(workdir):
  ckpts = workdir_lib.Checkpoints(str(workdir))
  try:
    return ckpts.restore('latest')
  finally:
    ckpts.close()
