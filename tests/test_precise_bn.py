"""Precise BatchNorm: exact population statistics, and a small folder dataset learnt above chance."""

from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from PIL import Image

from zenfer_jax.model.layers.batchnorm import BatchNorm
from zenfer_jax.training import parallel, precise_bn

EPS = 1e-3


class TwoBatchNorms(nn.Module):
  """BatchNorm on the input, a fixed non-linearity, BatchNorm again: the second layer's input
  depends on how the first normalised each batch, as in a real network."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = BatchNorm(epsilon=EPS, name='bn0')(x, use_running_average=not train)
    x = nn.relu(2.0 * x + 0.5)
    return BatchNorm(epsilon=EPS, name='bn1')(x, use_running_average=not train)


def _normalise(x, scale, bias):
  axes = (0, 1, 2)
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + EPS) * scale + bias


def test_recomputed_statistics_equal_the_dataset_statistics():
  rng = np.random.default_rng(0)
  devices = jax.local_device_count()
  per_device, num_batches = 8, 6
  images = (rng.normal(size=(num_batches, devices, per_device, 3, 3, 4)) * 3 + 5).astype(np.float32)
  model = TwoBatchNorms()
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 3, 3, 4)), train=False))
  for name in ('bn0', 'bn1'):
    variables['params'][name]['scale'] = rng.uniform(0.5, 2, 4).astype(np.float32)
    variables['params'][name]['bias'] = rng.normal(size=4).astype(np.float32)

  # What training leaves behind: running averages, mostly still their initial values.
  state = variables
  for b in images[:3]:
    _, upd = model.apply(state, b.reshape(-1, 3, 3, 4), train=True, mutable=['batch_stats'])
    state = {'params': variables['params'], 'batch_stats': upd['batch_stats']}
  assert np.abs(state['batch_stats']['bn0']['mean'] - images.mean((0, 1, 2, 3, 4))).min() > 4

  p_moments = precise_bn.pmap_batch_moments(model.apply)
  stats, used = precise_bn.recompute_batch_stats(
    p_moments,
    parallel.replicate(state),
    ({'image': b} for b in images),
    state['batch_stats'],
  )
  assert used == num_batches

  # bn0 sees the images: its statistics are the whole dataset's (biased variance, N*H*W each).
  flat = images.reshape(-1, 3, 3, 4).astype(np.float64)
  np.testing.assert_allclose(stats['bn0']['mean'], flat.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(stats['bn0']['var'], flat.var((0, 1, 2)), rtol=1e-5)
  # bn1 sees relu(2 * bn0(x) + 0.5) with bn0 normalising each device's batch on its own.
  p0 = variables['params']['bn0']
  seen = np.concatenate(
    [
      np.maximum(2 * _normalise(shard.astype(np.float64), p0['scale'], p0['bias']) + 0.5, 0)
      for batch in images
      for shard in batch
    ]
  )
  np.testing.assert_allclose(stats['bn1']['mean'], seen.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(stats['bn1']['var'], seen.var((0, 1, 2)), rtol=1e-4)
  # The evaluation forward with these statistics normalises the dataset's inputs exactly.
  out = model.apply(
    {'params': variables['params'], 'batch_stats': stats}, flat.astype(np.float32), train=False
  )
  assert out.shape == flat.shape


def make_stripes(root: str, n_train: int = 100, n_test: int = 30, size: int = 40) -> None:
  """Two visually separable classes, horizontal and vertical stripes, random colours, period,
  phase and noise; robust to every augmentation the rafdb recipe applies (flips, AutoAugment's
  inversions and small rotations keep the stripes' direction)."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:size, 0:size]
  for split, n in (('train', n_train), ('test', n_test)):
    for label, cls in enumerate(('horizontal', 'vertical')):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(n):
        period = rng.uniform(5, 12)
        on = (((yy if label == 0 else xx) + rng.uniform(0, period)) % period) < period / 2
        img = np.where(on[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, split, cls, f'{i:03d}.png'))


@pytest.mark.slow  # A whole training run.
def test_folders_config_learns_a_small_two_class_tree(tmp_path, caplog):
  from configs import folders
  from zenfer_jax.training import loop

  make_stripes(str(tmp_path / 'stripes'))
  config = folders.get_config()
  assert config.precise_bn_batches > 0  # On by default for folders, off in the base recipe.
  config.data.manual_dir = str(tmp_path / 'stripes')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.classes = 'horizontal,vertical'
  config.data.image_size = 32
  config.model.structure = (
    'SuperConvK3BNRELU(3,16,1,1)SuperResK1K3K1(16,32,2,16,1)'
    'SuperResK1K3K1(32,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)'
  )
  config.batch_size = 32  # 6 steps per epoch: 36 steps in all.
  config.num_epochs = 6
  config.warmup_epochs = 1
  config.eval_every_epochs = 6
  config.progress_bar = False
  t = time.perf_counter()
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)  # As main.py runs it.
  try:
    with caplog.at_level('INFO'):
      summary = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  finally:
    logging.set_verbosity(verbosity)
  seconds = time.perf_counter() - t
  # The running averages alone gave 0.517 here (0.5 is chance); recomputed statistics 0.800.
  assert summary['final_test_top1'] >= 0.75, summary
  assert 'Precise BN: BatchNorm statistics recomputed over 6 training batches' in caplog.text
  # The exported model holds the recomputed statistics: it scores what the run reported.
  from zenfer_jax.deploy import evaluate
  from zenfer_jax.rundir import model_directory

  card = json.loads((tmp_path / 'run' / 'model_best' / model_directory.CARD_NAME).read_text())
  assert card['class_names'] == ['horizontal', 'vertical']
  result = evaluate.evaluate(
    str(tmp_path / 'run' / 'model_best'),
    name='folders',
    data_dir=str(tmp_path / 'tfds'),
    split='test',
  )
  assert abs(result['top1'] - summary['final_test_top1']) < 1e-9
  print(f'folders run: {seconds:.1f} s, test top-1 {summary["final_test_top1"]:.3f}')


def test_reference_configs_keep_the_running_averages():
  from configs import affectnet7_m, affectnet8_r, default, rafdb_m, rafdb_r

  for mod in (default, rafdb_m, rafdb_r, affectnet7_m, affectnet8_r):
    assert mod.get_config().precise_bn_batches == 0
