"""DataSpec: what every input pipeline takes, built once from a run's config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from zenfer_jax.configs import demo
from zenfer_jax.data import recipes, spec


def test_from_config_reads_config_data_and_splits_the_batches_between_devices():
  config = demo.get_config()
  config.batch_size, config.eval_batch_size = 64, 256
  config.data.classes = ' sad, happy ,'
  config.data.data_dir = '~/tfds'
  s = spec.from_config(
    config, num_local_devices=2, process_index=1, process_count=2, device_count=4
  )
  assert (s.name, s.image_size, s.seed) == (config.data.name, config.data.image_size, config.seed)
  assert (s.per_device_batch, s.eval_per_device_batch) == (16, 64)
  assert (s.local_batch, s.eval_local_batch) == (32, 128)
  assert (s.train_split, s.eval_split) == (config.data.train_split, config.data.eval_split)
  assert (s.process_index, s.process_count) == (1, 2)
  assert s.classes == ('sad', 'happy')
  assert not s.data_dir.startswith('~')
  assert s.recipe == (config.data.recipe or None)
  assert s.resolved_recipe == recipes.resolve(config.data.recipe or None, config.data.name)


def test_a_spec_is_frozen_hashable_and_defaults_its_eval_batch_to_the_train_one():
  s = spec.DataSpec(
    'digits', '/d', image_size=8, per_device_batch=4, num_local_devices=2, classes=['a', 'b']
  )
  assert s.eval_per_device_batch == 4 and s.classes == ('a', 'b')
  assert hash(s) == hash(
    spec.DataSpec('digits', '/d', 8, 4, num_local_devices=2, classes=('a', 'b'))
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.seed = 1
  assert spec.DataSpec('x', '/d', 8, 4, classes='a, b').classes == ('a', 'b')
  x = np.zeros((8, 3))
  assert s.per_device(x).shape == (2, 4, 3)
  assert spec.DataSpec('x', '/d', 8, 4, 6, num_local_devices=2).per_device(
    np.zeros((12, 3)), evaluation=True
  ).shape == (2, 6, 3)
