"""What a user gets without a checkout: a wheel, installed into a fresh environment, trains the
demo config by its name (`zenfer-train --config=demo`), its configs coming from the package.

The wheel is built from a copy of the sources (a build in the checkout would leave build/ there,
and setuptools packs whatever build/ still holds). The fresh venv holds only the wheel; the
dependencies come from this test's environment through a path in a .pth file, which keeps the
test offline and fast and leaves that environment's editable install of the checkout out (a .pth
line that is a path adds the directory without running the .pth files in it).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
from train_fixtures import REPO, TINY_OVERRIDES, subprocess_env

pytestmark = pytest.mark.slow  # A wheel build and a training process.


def _run(args, **kwargs) -> subprocess.CompletedProcess:
  proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
  assert proc.returncode == 0, f'{args[:3]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}'
  return proc


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """The venv the wheel went into."""
  root = tmp_path_factory.mktemp('wheel')
  source = root / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(REPO / name, source / name)
  for package in ('zenfer_jax', 'torch_port'):
    shutil.copytree(
      REPO / package, source / package, ignore=shutil.ignore_patterns('__pycache__', '*.pyc')
    )
  dist = root / 'dist'
  _run(
    [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w', dist, '.'],
    cwd=source,
  )
  (wheel,) = dist.glob('zenfer_jax-*.whl')
  venv = root / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', venv])
  python = venv / 'bin' / 'python'
  site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'])
  dependencies = sysconfig.get_paths()['purelib']
  (pathlib.Path(site.stdout.strip()) / 'zenfer_dependencies.pth').write_text(dependencies + '\n')
  _run([sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', wheel])
  return venv


def _env() -> dict:
  env = subprocess_env()
  env.pop('PYTHONPATH')  # Nothing of the checkout.
  return env


def test_the_wheel_holds_the_package_and_its_data(installed, tmp_path):
  code = (
    'import os, zenfer_jax\n'
    'from zenfer_jax.config import files\n'
    'from zenfer_jax.model import presets\n'
    'from zenfer_jax.rundir import pretrained\n'
    'print(os.path.dirname(zenfer_jax.__file__))\n'
    'print(",".join(files.shipped_names()), ",".join(pretrained.names()))\n'
    "print(os.path.isfile(os.path.join(os.path.dirname(presets.__file__), 'zennet_m.txt')))\n"
  )
  out = _run([installed / 'bin' / 'python', '-c', code], cwd=tmp_path, env=_env()).stdout.split()
  assert out[0].startswith(str(installed)), out[0]  # Not the checkout.
  assert 'demo' in out[1].split(',') and 'rafdb_m' in out[1].split(',')
  assert out[2:] == ['fer2013_r', 'True']


def test_the_wheel_trains_the_demo_config_by_name(installed, tmp_path, digits_dir):
  workdir = tmp_path / 'run'
  args = [installed / 'bin' / 'zenfer-train', '--config=demo', f'--workdir={workdir}']
  overrides = {
    **TINY_OVERRIDES,
    'data.data_dir': digits_dir,
    'num_epochs': 1,
    'warmup_epochs': 0,
    'steps_per_epoch': 2,
  }
  for key, value in overrides.items():
    args.append(f'--config.{key}={str(value).lower() if isinstance(value, bool) else value}')
  elsewhere = tmp_path / 'elsewhere'  # No configs/ beside it.
  elsewhere.mkdir()
  _run(args, cwd=elsewhere, env=_env())
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['best_epoch'] == 1
  assert (workdir / 'model_best' / 'model_card.json').is_file()
