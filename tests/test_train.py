"""Configs, validation and the training loop end to end on digits (tiny model, 16x16, in-process)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import chex
import numpy as np
import pytest
from train_fixtures import REPO, TINY, flat, latest_state, subprocess_env, tiny_config

from zenfer_jax.config import validation
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import loop, steps

CONFIGS = [
  'default',
  'rafdb_m',
  'rafdb_r',
  'affectnet7_m',
  'affectnet7_r',
  'affectnet8_m',
  'affectnet8_r',
  'folders',
  'demo',
]


def _load(name):
  sys.path.insert(0, str(REPO))
  import importlib

  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_validates_and_documents_its_run(name):
  config = _load(name)
  if name == 'folders':
    config.data.classes = 'neutral,smile'
  validation.validate_config(config)
  doc = sys.modules[f'configs.{name}'].__doc__
  if name != 'default':
    assert 'python -m zenfer_jax.main --config=configs/' in doc
  if name in ('rafdb_m', 'affectnet7_m', 'affectnet8_m'):
    assert {'rafdb_m': '88.53%', 'affectnet7_m': '65.23%', 'affectnet8_m': '61.32%'}[name] in doc


def test_published_recipe_values():
  c = _load('rafdb_m')
  assert (c.num_epochs, c.warmup_epochs, c.batch_size, c.lr_per_256, c.target_lr_per_256) == (
    400,
    5,
    64,
    0.1,
    0.0,
  )
  assert (c.momentum, c.nesterov, c.weight_decay, c.label_smoothing, c.mixup_alpha) == (
    0.9,
    True,
    5e-4,
    0.1,
    0.2,
  )
  assert (c.model.bn_momentum, c.model.bn_eps, c.model.init, c.model.use_sa) == (
    0.99,
    1e-3,
    'custom',
    True,
  )
  assert c.data.image_size == 224 and c.model.structure == 'zennet_m'
  assert _load('affectnet8_r').data.name == 'affectnet/8cls'


@pytest.mark.parametrize(
  'key,value,match',
  [
    ('model.structure', 'SuperConvK3BNRELU(3,8', 'model.structure'),
    ('model.bn_momentum', 1.5, 'model.bn_momentum'),
    ('model.dtype', 'float64', 'model.dtype'),
    ('data.name', 'imagenet', 'data.name'),
    ('data.recipe', 'fancy', 'data.recipe'),
    ('batch_size', 0, 'batch_size'),
    ('warmup_epochs', 400, 'warmup_epochs'),
    ('lr_per_256', -0.1, 'lr_per_256'),
    ('label_smoothing', 1.0, 'label_smoothing'),
    ('mixup_alpha', -1.0, 'mixup_alpha'),
    ('freeze_backbone', True, 'freeze_backbone'),
    ('init_from', '/does/not/exist', 'init_from'),
    ('data.manual_dir', '/does/not/exist', 'data.manual_dir'),
    ('data.classes', 'a,b', 'data.classes'),
  ],
)
def test_bad_values_fail_naming_the_key(key, value, match):
  config = _load('rafdb_m')
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(validation.ConfigError, match=f'config.{match}='):
    validation.validate_config(config)


def test_a_model_that_cannot_be_built_fails_before_any_array():
  config = _load('rafdb_m')
  config.model.structure = 'SuperConvK3BNRELU(3,8,2,1)SuperConvK1BNRELU(8,40,1,1)'
  config.model.use_lw_att = True
  with pytest.raises(validation.ConfigError, match='(?s)use_lw_att=True.*multiple of 16'):
    validation.validate_config(config)


def test_batch_must_split_over_devices():
  config = _load('rafdb_m')
  config.batch_size = 66
  with pytest.raises(validation.ConfigError, match='batch_size=66.*4 devices'):
    validation.validate_config(config, device_count=4)


def test_folders_needs_its_classes():
  with pytest.raises(validation.ConfigError, match='config.data.classes'):
    validation.validate_config(_load('folders'))


@pytest.mark.slow
def test_unknown_key_and_bad_type_fail_at_flag_parsing():
  base = [sys.executable, '-m', 'zenfer_jax.main', '--config=configs/demo.py', '--workdir=/tmp/x']
  for extra, match in (
    ('--config.lerning_rate=0.1', 'lerning_rate'),
    ('--config.batch_size=many', 'batch_size'),
  ):
    proc = subprocess.run(
      base + [extra], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert match in proc.stderr


def test_a_bad_config_fails_before_the_workdir_is_made(tmp_path):
  config = tiny_config(tmp_path / 'tfds')
  config.batch_size = 0
  with pytest.raises(validation.ConfigError, match='config.batch_size=0 is invalid'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def test_missing_dataset_fails_at_once_saying_where_files_go(tmp_path):
  config = tiny_config(tmp_path / 'tfds')
  config.data.name = 'rafdb'
  with pytest.raises(FileNotFoundError, match='(?s)manual_dir.*list_patition_label.txt'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / workdir_lib.LATEST)


@pytest.mark.slow
def test_train_end_to_end_writes_metrics_checkpoints_and_model(tmp_path, digits_dir, monkeypatch):
  # One trace of each step function for the whole run: no recompilation per step or epoch.
  monkeypatch.setattr(steps, 'train_step', chex.assert_max_traces(steps.train_step, n=1))
  monkeypatch.setattr(steps, 'eval_step', chex.assert_max_traces(steps.eval_step, n=1))
  checks = []  # The config is checked once per run.
  monkeypatch.setattr(loop, 'validate_config', lambda *a: checks.append(a))
  workdir = tmp_path / 'run'
  summary = loop.train_and_evaluate(tiny_config(digits_dir), str(workdir))
  assert len(checks) == 1

  records = workdir_lib.read_metrics(str(workdir))
  assert [(r['epoch'], r['step']) for r in records] == [(1, 3), (2, 6)]
  for r in records:
    assert {
      'epoch',
      'step',
      'train_loss',
      'test_top1',
      'test_mean_class_accuracy',
      'per_class_accuracy',
    } <= set(r)
    assert sorted(r['per_class_accuracy']) == [str(d) for d in range(10)]
    assert np.isfinite(r['train_loss']) and 0 <= r['test_top1'] <= 1
  events = glob.glob(str(workdir / 'events.out.tfevents.*'))
  import tensorflow as tf

  tags = {
    v.tag for f in events for e in tf.compat.v1.train.summary_iterator(f) for v in e.summary.value
  }
  assert {
    'train/loss',
    'train/learning_rate',
    'train/epoch_loss',
    'test/top1',
    'test/mean_class_accuracy',
    'test/accuracy/7',
  } <= tags
  assert summary['best_test_top1'] == max(r['test_top1'] for r in records)
  state, meta = latest_state(workdir)
  assert int(state['step']) == 6 and meta['book']['epoch_steps'] == 0
  from zenfer_jax.rundir import model_directory

  variables, card = model_directory.load_model_dir(str(workdir / workdir_lib.MODEL_BEST))
  assert card['structure'] == TINY and card['num_classes'] == 10 and card['image_size'] == 16
  assert card['class_names'] == [str(d) for d in range(10)] and card['recipe'] == 'digits'
  assert set(variables) == {'params', 'batch_stats'}

  # evaluate --workdir reads the run's config and its best checkpoint.
  from zenfer_jax.deploy import evaluate

  chex.clear_trace_counter()
  assert evaluate.main(['--workdir', str(workdir)]) == 0
  result = json.loads((workdir / 'eval_test' / 'metrics.json').read_text())
  assert result['top1'] == pytest.approx(summary['best_test_top1'])
  assert (workdir / 'eval_test' / 'confusion_matrix.png').exists()

  # Rerunning a finished workdir resumes at the end: nothing retrains, nothing is duplicated.
  loop.train_and_evaluate(tiny_config(digits_dir), str(workdir))
  assert workdir_lib.read_metrics(str(workdir)) == records

  # Another run initialised from this one's backbone, with the backbone frozen.
  chex.clear_trace_counter()  # A new run builds new mapped steps.
  init_cfg = tiny_config(
    digits_dir,
    init_from=str(workdir / workdir_lib.MODEL_BEST),
    only_backbone=True,
    freeze_backbone=True,
    num_epochs=1,
    warmup_epochs=0,
  )
  loop.train_and_evaluate(init_cfg, str(tmp_path / 'finetune'))
  new_state, _ = latest_state(tmp_path / 'finetune')
  old, new = flat(variables['params']), flat(new_state['params'])
  for k in old:
    if k.startswith('backbone/'):
      np.testing.assert_array_equal(new[k], old[k], err_msg=k)
  assert any(not np.array_equal(new[k], old[k]) for k in old if k.startswith('fc/'))


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
  tmp_path, digits_dir, monkeypatch
):
  from zenfer_jax import data

  real = data.pipeline.train_dataset

  def poisoned(*args, start_step=0, **kwargs):
    for i, batch in enumerate(real(*args, start_step=start_step, **kwargs), start=start_step):
      if i >= 4:  # Step 5 (in the second epoch) sees a NaN image.
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch

  monkeypatch.setattr(data.pipeline, 'train_dataset', poisoned)
  workdir = tmp_path / 'nan'
  with pytest.raises(
    loop.NonFiniteLossError, match='(?s)step 5.*last good checkpoint \\(step 3\\)'
  ):
    loop.train_and_evaluate(tiny_config(digits_dir, num_epochs=3), str(workdir))
  state, _ = latest_state(workdir)
  assert int(state['step']) == 3
  assert all(np.all(np.isfinite(v)) for v in flat(state['params']).values())
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir))] == [3]


@pytest.mark.slow
def test_folders_config_prepares_from_manual_dir_and_learns(tmp_path):
  import data_fixtures

  root = tmp_path / 'faces'
  data_fixtures.make_folders(
    str(root), classes=('neutral', 'smile'), train_counts=(24, 24), test_counts=(6, 6)
  )
  config = _load('folders')
  overrides = tiny_config(
    tmp_path / 'tfds', num_epochs=4, steps_per_epoch=4, batch_size=8, eval_batch_size=8
  )
  for key in (
    'model',
    'batch_size',
    'eval_batch_size',
    'num_epochs',
    'warmup_epochs',
    'steps_per_epoch',
    'progress_bar',
    'log_every_steps',
  ):
    config[key] = overrides[key]
  config.model.bn_momentum = 0.8  # 16 steps: let the running statistics catch up.
  config.data.image_size = 16
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(root)
  config.data.classes = 'neutral,smile'
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  records = workdir_lib.read_metrics(str(tmp_path / 'run'))
  assert list(records[-1]['per_class_accuracy']) == ['neutral', 'smile']
  assert summary['best_test_top1'] >= 0.75
