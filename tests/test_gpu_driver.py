"""benchmarks.gpu_driver runs its three stages where TensorFlow cannot be imported, as on the lent
accelerator machines, and writes what they measured: one tiny run of every stage on the CPU, its
JSON files checked for their figures, and the generated dataset's ArrayRecord files read back
against the JPEGs they were prepared from."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from train_fixtures import REPO, TINY

from benchmarks import gpu_driver
from tests import no_tensorflow

pytestmark = pytest.mark.slow  # Subprocesses: the driver, the search sides, benchmarks.run, main.

TRAIN, TEST = 24, 8


@pytest.fixture(scope='module')
def driven(tmp_path_factory):
  """One `--all --tiny` run (the JAX cold and PyTorch search sides, one model's steps, one e2e
  dtype: the rest repeats the same code) with TensorFlow blocked; (out dir, cache dir, log)."""
  tmp = tmp_path_factory.mktemp('gpu_driver')
  out, cache, blocked = tmp / 'out', tmp / 'cache', tmp / 'blocked_imports.txt'
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # The driver's own caches, under --cache_dir.
  env = no_tensorflow.environment(tmp / 'no_tf', env, log=blocked)
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.gpu_driver',
    '--all',
    '--tiny',
    f'--out={out}',
    f'--cache_dir={cache}',
    '--search_sides=jax_cold,torch',
    '--steps_models=zennet_m_sa',
    '--e2e_dtypes=float32',
    f'--e2e_train={TRAIN}',
    f'--e2e_test={TEST}',
  ]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, f'driver failed ({proc.returncode}):\n{proc.stdout[-6000:]}'
  return out, cache, blocked


def _load(path):
  with open(path) as f:
    return json.load(f)


def test_every_stage_ran_without_tensorflow(driven):
  out, _, blocked = driven
  report = _load(out / gpu_driver.DRIVER_JSON)
  assert report['device'] == 'cpu'
  assert report['environment']['tensorflow_importable'] is False
  assert report['torch_plan'] == {'device': 'cpu', 'skipped': None}
  assert report['carried']['grain'] and report['carried']['tensorflow-datasets']
  assert {s: e['status'] for s, e in report['stages'].items()} == dict.fromkeys(
    gpu_driver.STAGES, 'done'
  )
  assert all(e['seconds'] > 0 and e['tiny'] for e in report['stages'].values())
  # Libraries asked for TensorFlow (TFDS, etils probe for it), and every stage went on without.
  assert 'tensorflow' in blocked.read_text().split()


def test_search_stage_figures(driven):
  out, _, _ = driven
  search = _load(out / gpu_driver.FILES['search'])
  assert [r['side'] for r in search['results']] == ['jax_cold', 'torch']
  assert search['not_run'] == {}
  for r in search['results']:
    assert 1 <= r['candidates'] and 1 <= r['iterations'] <= 4
    assert r['candidates_per_s'] > 0 and r['seconds'] > 0
  assert search['args']['resolution'] == 32 and search['args']['max_seconds'] == 5
  jax_side, torch_side = search['results']
  assert jax_side['device'].startswith('jax ') and torch_side['device'].startswith('torch ')
  assert (out / 'gpu_search' / 'jax_cold' / 'search_summary.json').exists()


def test_steps_stage_figures(driven):
  out, _, _ = driven
  steps = _load(out / gpu_driver.FILES['steps'])
  assert steps['settings']['structure'] == gpu_driver.TINY_STRUCTURE == TINY
  assert steps['settings']['torch_skip'] is None
  for section, batch in (('train', 4), ('infer_b1', 1)):
    entry = steps['results'][section]['zennet_m_sa']
    assert entry['batch'] == batch and entry['resolution'] == 16
    for side in ('jax_float32', 'torch_eager'):
      s = entry['sides'][side]
      assert s['rate_median'] > 0 and s['rate_min'] <= s['rate_median'] <= s['rate_max'], side
  assert steps['ratios']['train_zennet_m_sa'] > 0
  assert (out / 'gpu.md').exists()


def test_e2e_stage_trains_with_grain(driven):
  out, _, _ = driven
  e2e = _load(out / gpu_driver.FILES['e2e'])
  env = e2e['environment']
  assert env['loader'] == 'grain' and env['augment_on'] == 'device'
  assert (env['dataset']['train'], env['dataset']['test']) == (TRAIN, TEST)
  assert e2e['not_run'] == []
  [run] = e2e['runs']
  assert run['loader'] == 'grain' and run['augment_on'] == 'device' and run['dtype'] == 'float32'
  assert run['structure_override'] == TINY
  assert run['images_per_second'] > 0 and run['timed_steps'] == 2 and run['warmup_steps'] == 1
  assert 0 <= run['input_wait_fraction'] <= 1 and run['eval_seconds'] > 0
  [alone] = e2e['input_only']
  assert alone['loader'] == 'grain' and alone['images_per_second'] > 0
  assert '| ZenNet-M-SA | device | float32 |' in (out / 'e2e_gpu.md').read_text()


def test_generated_records_read_back_as_the_jpegs(driven):
  """The ArrayRecord files the e2e stage prepared without TensorFlow hold every generated image,
  pixel for pixel, with its RAF-DB label (1..7 in the list file, 0..6 in the records)."""
  from zenfer_jax.data import array_records, registry

  out, _, _ = driven
  dataset = _load(out / gpu_driver.FILES['e2e'])['environment']['dataset']
  image_dir = os.path.join(dataset['manual_dir'], 'basic', 'Image', 'aligned')
  with open(
    os.path.join(dataset['manual_dir'], 'basic', 'EmoLabel', 'list_patition_label.txt')
  ) as f:
    labels = dict(line.split() for line in f if line.strip())
  builder, info = registry.load('rafdb', dataset['data_dir'])
  assert array_records.available(builder) == {'array_record'}
  seen = {}
  for split, n in (('train', TRAIN), ('test', TEST)):
    source = array_records.data_source(builder, split)
    assert len(source) == info.split_sizes[split] == n
    for example in source:
      name = example['file_name']
      name = name.decode() if isinstance(name, bytes) else name
      assert name.startswith(split)
      jpeg = os.path.join(image_dir, name.replace('.jpg', '_aligned.jpg'))
      np.testing.assert_array_equal(np.asarray(example['image']), np.asarray(Image.open(jpeg)))
      assert int(example['label']) == int(labels[name]) - 1
      seen[name] = True
  assert sorted(seen) == sorted(labels)


def test_torch_without_cuda_is_skipped_with_its_reason():
  a = argparse.Namespace(torch='auto', device='gpu')
  no_cuda = {'torch': '2.11.0+cpu', 'torch_cuda': False, 'torch_cuda_build': None}
  device, reason = gpu_driver.torch_plan(a, no_cuda)
  assert device is None and 'no CUDA device' in reason and '2.11.0+cpu' in reason
  assert gpu_driver.torch_plan(a, {'torch': None, 'torch_error': 'No module'})[1].startswith(
    'torch is not importable'
  )
  assert gpu_driver.torch_plan(a, dict(no_cuda, torch_cuda=True)) == ('cuda', None)
  assert gpu_driver.torch_plan(argparse.Namespace(torch='off', device='gpu'), no_cuda)[0] is None


def test_benchmarks_run_records_skipped_torch_sides():
  """benchmarks.run keeps the JAX figures and names why PyTorch's are missing."""
  from benchmarks import run

  sides = run._measure_pair(
    {'torch_eager': run.TorchSkipped('torch 2.11 has no CUDA device')},
    reps=1,
    warmup=0,
    calls_per_rep=1,
    items_per_call=1,
  )
  assert sides == {'torch_eager': {'status': 'skipped', 'reason': 'torch 2.11 has no CUDA device'}}
