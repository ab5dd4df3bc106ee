"""The launch/ scripts run the project's Python, not whichever `python` comes first on PATH.

The README's `DEVICES_PER_PROCESS=2 launch/train_local.sh 2 configs/demo.py runs/demo_2x2`
used to start the system interpreter, and every process died with `No module named 'absl'`. Here
PATH's `python` and `python3` are stand-ins that fail: a launch still trains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_fixtures import REPO, TINY_OVERRIDES, subprocess_env

pytestmark = pytest.mark.slow  # A training process.

NOT_THE_PROJECT = "error: PATH's python, which has no zenfer_jax"


def _path_with_a_foreign_python(tmp_path) -> str:
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('python', 'python3'):
    (bin_dir / name).write_text(f'#!/bin/sh\necho "{NOT_THE_PROJECT}" >&2\nexit 3\n')
    (bin_dir / name).chmod(0o755)
  return f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'


def test_train_local_runs_the_projects_python(tmp_path, digits_dir):
  env = subprocess_env()
  env.pop('PYTHON', None)
  if not (REPO / '.venv' / 'bin' / 'python').exists():  # No `make install` here: $PYTHON.
    env['PYTHON'] = sys.executable
  env.update(PATH=_path_with_a_foreign_python(tmp_path), JAX_PLATFORMS='cpu')
  workdir = tmp_path / 'run'
  args = ['bash', str(REPO / 'launch' / 'train_local.sh'), '1', 'configs/demo.py', str(workdir)]
  overrides = {
    **TINY_OVERRIDES,
    'data.data_dir': digits_dir,
    'num_epochs': 1,
    'warmup_epochs': 0,
    'steps_per_epoch': 2,
  }
  for key, value in overrides.items():
    args.append(f'--config.{key}={str(value).lower() if isinstance(value, bool) else value}')
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert NOT_THE_PROJECT not in proc.stderr
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads((workdir / 'summary.json').read_text())['best_epoch'] == 1
