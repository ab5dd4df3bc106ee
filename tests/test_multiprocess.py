"""A real multi-process job on this machine: 2 processes x 2 CPU devices, through the launcher.

launch/train_local.sh starts the processes; JAX's distributed runtime connects them and gloo
carries the collectives. Against one process with 4 devices (the same global batches, with
data.process_split='batches') the parameters agree to float rounding (measured: at most 5e-7
apart after 4 steps; the cross-process reductions sum in another order) and the metrics
are equal; the evaluation counts each of the 360 test images once; process 0 alone writes
metrics.jsonl, the TensorBoard events, summary.json and the exported model. Then a job whose
process 1 is killed with SIGKILL: process 0 stops by itself within its peer timeout, saying
which process was lost, and the same command rerun resumes to exactly the uninterrupted job's
state.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from train_fixtures import REPO, TINY_OVERRIDES, flat, latest_state, run_main, subprocess_env

from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import distributed

pytestmark = pytest.mark.slow  # Five training processes in four jobs.

RUN = dict(
  num_epochs=2,
  steps_per_epoch=2,
  checkpoint_every_steps=1,
  log_every_steps=1,
  **{'data.process_split': 'batches'},
)
PEER_TIMEOUT_S = 10
TEST_IMAGES = 360


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('xla_cache')


def _launcher(workdir, data_dir, cache_dir) -> tuple[list[str], dict]:
  """The command line and environment of `launch/train_local.sh 2 configs/demo.py WORKDIR ...`."""
  args = ['bash', str(REPO / 'launch' / 'train_local.sh'), '2']
  args += [str(REPO / 'configs' / 'demo.py'), str(workdir)]
  for key, value in {**TINY_OVERRIDES, 'data.data_dir': str(data_dir), **RUN}.items():
    args.append(f'--config.{key}={str(value).lower() if isinstance(value, bool) else value}')
  args.append(f'--peer_timeout_s={PEER_TIMEOUT_S}')
  env = subprocess_env(cache_dir=cache_dir)
  env.update(PYTHON=sys.executable, DEVICES_PER_PROCESS='2', JAX_PLATFORMS='cpu')
  return args, env


def _run_job(workdir, data_dir, cache_dir) -> subprocess.CompletedProcess:
  args, env = _launcher(workdir, data_dir, cache_dir)
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  if proc.returncode != 0:
    raise AssertionError(f'the job failed ({proc.returncode}):\n{proc.stderr[-6000:]}')
  return proc


@pytest.fixture(scope='module')
def two_by_two(tmp_path_factory, digits_dir, cache_dir):
  workdir = tmp_path_factory.mktemp('jobs') / 'two_by_two'
  proc = _run_job(workdir, digits_dir, cache_dir)
  return workdir, proc


def test_two_processes_equal_one_process_and_write_once(
  tmp_path, digits_dir, cache_dir, two_by_two, monkeypatch
):
  workdir, proc = two_by_two
  assert 'in 2 processes x 2 CPU device(s)' in proc.stdout
  one = tmp_path / 'one_by_four'
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # Host devices, as the job's, on any machine.
  run_main(one, digits_dir, devices=4, cache_dir=cache_dir, **RUN)

  ref, ref_meta = latest_state(one)
  got, got_meta = latest_state(workdir)
  assert int(ref['step']) == int(got['step']) == 4
  a, b = flat(ref), flat(got)
  assert sorted(a) == sorted(b)
  for k in a:  # Parameters, optimizer state and BatchNorm statistics.
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert got_meta['book']['best_step'] == ref_meta['book']['best_step']

  m1, m2 = workdir_lib.read_metrics(str(one)), workdir_lib.read_metrics(str(workdir))
  assert [r['step'] for r in m2] == [r['step'] for r in m1] == [2, 4]  # Written once, not twice.
  for r1, r2 in zip(m1, m2):
    assert r1['test_examples'] == r2['test_examples'] == TEST_IMAGES  # Each image once.
    assert r2['train_loss'] == pytest.approx(r1['train_loss'], rel=1e-6)
    assert r2['train_accuracy'] == pytest.approx(r1['train_accuracy'], abs=1e-9)
    assert r2['test_top1'] == pytest.approx(r1['test_top1'], abs=1e-9)

  # One writer: one events file, one summary, one export; every process keeps its own log.
  assert len(glob.glob(str(workdir / 'events.out.tfevents.*'))) == 1
  assert os.path.isfile(workdir / 'log.txt') and os.path.isfile(workdir / 'log.process1.txt')
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['model_dir'] == str(workdir / workdir_lib.MODEL_BEST)
  exported, card = model_directory.load_model_dir(str(workdir / workdir_lib.MODEL_BEST))
  assert card['class_names'] == [str(d) for d in range(10)]
  best_epoch = summary['best_epoch']
  assert m2[best_epoch - 1]['test_top1'] == pytest.approx(summary['best_test_top1'])
  # Orbax's multi-process saves finished: no temporary directories, every step restorable.
  steps = sorted(int(s) for s in os.listdir(workdir / workdir_lib.LATEST) if s.isdigit())
  assert steps == [3, 4]  # The two latest kept.
  assert not [p for p in os.listdir(workdir / workdir_lib.LATEST) if 'tmp' in p]
  # Process 0 printed the progress lines; process 1's ([1]-prefixed) terminal stayed quiet.
  assert 'epoch 2/2 step 4' in proc.stderr
  assert not re.search(r'^\[1\] epoch', proc.stderr, re.M)


def _checkpoint_steps(workdir) -> list[int]:
  path = os.path.join(workdir, workdir_lib.LATEST)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def test_sigkill_of_one_process_stops_the_other_and_a_rerun_resumes(
  tmp_path, digits_dir, cache_dir, two_by_two
):
  reference, _ = two_by_two
  workdir = tmp_path / 'killed'
  args, env = _launcher(workdir, digits_dir, cache_dir)
  out_path, err_path = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
  with open(out_path, 'w') as out, open(err_path, 'w') as err:  # Files: a full pipe would block.
    job = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err)
  deadline = time.time() + 600
  while not _checkpoint_steps(workdir) and job.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert _checkpoint_steps(workdir), f'no checkpoint before the job ended:\n{err_path.read_text()}'
  pids = {int(i): int(p) for i, p in re.findall(r'process (\d+): pid (\d+)', out_path.read_text())}
  os.kill(pids[1], signal.SIGKILL)
  killed_at = time.monotonic()
  job.wait(timeout=PEER_TIMEOUT_S + 120)
  took = time.monotonic() - killed_at
  err = err_path.read_text()
  # Bounded: the peer timeout plus the watchdog's polling and the process exit.
  assert took < PEER_TIMEOUT_S + 30, f'{took:.0f} s to stop:\n{err[-3000:]}'
  assert job.returncode != 0
  assert f'process 1 (pid {pids[1]}) was killed by signal 9' in err
  assert 'rerun the same command to resume' in err
  # Process 0 either waited for process 1 and its watchdog stopped it, saying why, or a transfer
  # in flight broke and the collective runtime (gloo) ended it at once: both are bounded.
  watchdog = (
    f'process 0 (pid {pids[0]}) exited with status {distributed.PEER_LOST_EXIT}: it stopped' in err
  )
  if watchdog:
    assert f'process 1 of 2 has not responded for {PEER_TIMEOUT_S} s' in err
  else:
    assert f'process 0 (pid {pids[0]}) was killed by signal 6' in err, err[-3000:]
  stopped_at = _checkpoint_steps(workdir)
  assert stopped_at and stopped_at[-1] < 4, stopped_at

  _run_job(workdir, digits_dir, cache_dir)  # The same command again.
  ref, ref_meta = latest_state(reference)
  got, got_meta = latest_state(workdir)
  assert int(got['step']) == 4
  a, b = flat(ref), flat(got)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(b[k], a[k], err_msg=k)
  assert got_meta == ref_meta
  assert workdir_lib.read_metrics(str(workdir)) == workdir_lib.read_metrics(str(reference))
