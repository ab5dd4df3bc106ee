"""Training with config.data.loader='grain' where TensorFlow cannot be imported: it trains,
evaluates, is killed with SIGKILL, resumes, and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from train_fixtures import REPO, assert_same_latest_checkpoint, main_command, subprocess_env

from tests import no_tensorflow
from zenfer_jax import data
from zenfer_jax.rundir import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Three training subprocesses (two at once).

# Three epochs of four steps, a checkpoint every three steps and at each epoch end.
RUN = {
  'num_epochs': 3,
  'steps_per_epoch': 4,
  'checkpoint_every_steps': 3,
  'log_every_steps': 1,
  'data.loader': 'grain',
}


def _checkpoint_steps(workdir) -> list[int]:
  path = os.path.join(workdir, workdir_lib.LATEST)
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _start(workdir, data_dir, env):
  return subprocess.Popen(
    main_command(workdir, data_dir, **RUN),
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(proc) -> None:
  _, err = proc.communicate(timeout=400)
  assert proc.returncode == 0, f'training failed ({proc.returncode}):\n{err[-6000:]}'


def test_grain_run_without_tensorflow_resumes_bit_identically(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  data.prepare_dataset('digits', data_dir, file_format='both')
  blocked = tmp_path / 'blocked_imports.txt'
  env = no_tensorflow.environment(
    tmp_path / 'no_tf', subprocess_env(cache_dir=tmp_path / 'xla_cache'), log=blocked
  )
  ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'killed'
  ref = _start(ref_dir, data_dir, env)
  killed = _start(run_dir, data_dir, env)
  deadline = time.time() + 300
  while not _checkpoint_steps(run_dir) and killed.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  killed.send_signal(signal.SIGKILL)
  _, err = killed.communicate(timeout=60)
  assert killed.returncode == -signal.SIGKILL, f'the run ended before the kill:\n{err[-3000:]}'
  assert _checkpoint_steps(run_dir)[-1] < 12
  _finish(_start(run_dir, data_dir, env))
  _finish(ref)

  # TensorFlow was asked for (libraries probe for it) and never imported: the runs succeeded.
  assert 'tensorflow' in blocked.read_text().split()
  meta = assert_same_latest_checkpoint(run_dir, ref_dir, 12)
  assert meta['loader']['next_step'] == 12 and meta['loader']['dataset'] == 'digits'
  records = workdir_lib.read_metrics(str(run_dir))
  assert records == workdir_lib.read_metrics(str(ref_dir))
  assert [r['epoch'] for r in records] == [1, 2, 3]
  assert all(r['test_examples'] == 360 for r in records)  # Each test example counted once.
  summary = json.loads((run_dir / 'summary.json').read_text())
  assert summary['best_test_top1'] == max(r['test_top1'] for r in records)
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(run_dir))


def test_fer2013_r_trains_and_evaluates_with_grain_without_tensorflow(tmp_path):
  """configs/fer2013_r.py as shipped (ZenNet-R-SA, 48 px, the 'fer2013' recipe: rotation, no
  AutoAugment, no lighting) trains one step and evaluates PublicTest through Grain, on a tiny
  FER2013 in Kaggle's folder layout, where TensorFlow cannot be imported."""
  from tests import data_fixtures as fx

  manual, data_dir = tmp_path / 'fer2013', str(tmp_path / 'tfds')
  fx.make_fer2013_folders(str(manual))
  data.prepare_dataset('fer2013', data_dir, manual_dir=str(manual), file_format='both')
  blocked = tmp_path / 'blocked_imports.txt'
  env = no_tensorflow.environment(
    tmp_path / 'no_tf', subprocess_env(cache_dir=tmp_path / 'xla_cache'), log=blocked
  )
  workdir = tmp_path / 'run'
  overrides = {
    'data.data_dir': data_dir,
    'data.loader': 'grain',
    'batch_size': 8,
    'eval_batch_size': 4,
    'num_epochs': 1,
    'steps_per_epoch': 1,
    'warmup_epochs': 0,
    'progress_bar': 'false',
    'compilation_cache_dir': '',
  }
  command = [
    *main_command(workdir, data_dir)[:3],
    f'--config={REPO / "configs" / "fer2013_r.py"}',
    f'--workdir={workdir}',
    *(f'--config.{k}={v}' for k, v in overrides.items()),
  ]
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f'training failed ({proc.returncode}):\n{proc.stderr[-6000:]}'
  assert 'tensorflow' in blocked.read_text().split()  # Asked for, never imported.
  records = workdir_lib.read_metrics(str(workdir))
  assert [r['epoch'] for r in records] == [1]
  assert records[0]['test_examples'] == len(fx.FER2013_LABELS['PublicTest'])
  assert np.isfinite(records[0]['train_loss'])
