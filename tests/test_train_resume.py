"""Killed with SIGKILL at an arbitrary moment, a rerun ends exactly where an uninterrupted run does.

Real subprocesses: an uninterrupted run, then a run killed -9 shortly after its first
checkpoint and rerun in the same workdir. Parameters, optimizer state, BatchNorm statistics,
metrics.jsonl and the best checkpoint must all be identical.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
from train_fixtures import (
  REPO,
  assert_same_latest_checkpoint,
  flat,
  main_command,
  run_main,
  subprocess_env,
)

from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Three training subprocesses.

# Three epochs of four steps, a checkpoint every three steps and at each epoch end, so the kill
# lands mid-epoch and the resumed run must restore the epoch's running sums too.
RUN = dict(num_epochs=3, steps_per_epoch=4, checkpoint_every_steps=3, log_every_steps=1)


def _checkpoint_steps(workdir) -> list[int]:
  path = os.path.join(workdir, workdir_lib.LATEST)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, digits_dir):
  # The runs share compiled programs through config.compilation_cache_dir, as a user's do.
  cache = tmp_path / 'xla_cache'
  run = dict(RUN, compilation_cache_dir=str(cache))
  ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'killed'
  run_main(ref_dir, digits_dir, **run)
  compiled = set(os.listdir(cache))
  assert compiled, 'nothing was written to the compilation cache'
  assert f'Compilation cache: {cache}' in (ref_dir / 'log.txt').read_text()

  proc = subprocess.Popen(
    main_command(run_dir, digits_dir, **run),
    cwd=REPO,
    env=subprocess_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  deadline = time.time() + 300
  while not _checkpoint_steps(run_dir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(random.uniform(0.0, 0.2))  # Anywhere in the next steps, saves or evaluation.
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, f'the run ended before the kill:\n{err[-3000:]}'
  killed_at = _checkpoint_steps(run_dir)
  assert killed_at and killed_at[-1] < 12, killed_at

  run_main(run_dir, digits_dir, **run)
  # The killed run and the rerun compiled nothing the first run had not (every step was found).
  assert set(os.listdir(cache)) == compiled

  assert_same_latest_checkpoint(run_dir, ref_dir, 12)
  assert workdir_lib.read_metrics(str(run_dir)) == workdir_lib.read_metrics(str(ref_dir))
  assert [r['epoch'] for r in workdir_lib.read_metrics(str(run_dir))] == [1, 2, 3]
  ref_best, _ = model_directory.load_model_dir(str(ref_dir / workdir_lib.MODEL_BEST))
  best, _ = model_directory.load_model_dir(str(run_dir / workdir_lib.MODEL_BEST))
  for k, v in flat(ref_best).items():
    np.testing.assert_array_equal(flat(best)[k], v, err_msg=k)
