"""The shipped configs load by path from any directory, as `--config=/path/to/config.py` loads them."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(
  p.name
  for p in (REPO / 'configs').glob('*.py')
  if p.name not in ('__init__.py',) and not p.name.startswith('search_')
)

# What main.py does with --config: absl's config_flags loads the file by its path.
LOAD = """
import sys
from absl import flags
from ml_collections import config_flags
config = config_flags.DEFINE_config_file('config')
flags.FLAGS(['main', '--config=' + sys.argv[1]])
print(config.value.data.name, config.value.model.structure[:16], config.value.num_epochs)
"""


def _load_elsewhere(config_path: pathlib.Path, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return subprocess.run(
    [sys.executable, '-c', LOAD, str(config_path)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize('name', TRAIN_CONFIGS)
def test_config_loads_by_path_outside_the_repository(name, tmp_path):
  # Used to fail with ModuleNotFoundError: No module named 'configs' (a top-level import).
  out = _load_elsewhere(REPO / 'configs' / name, tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'ModuleNotFoundError' not in out.stderr
  data_name, structure, epochs = out.stdout.split()
  expected = {
    'default.py': 'rafdb',
    'demo.py': 'digits',
    'digits_folders.py': 'folders',
    'fer2013_m.py': 'fer2013',
    'fer2013_r.py': 'fer2013',
    'folders.py': 'folders',
    'rafdb_m.py': 'rafdb',
    'rafdb_m_transfer.py': 'rafdb',
    'rafdb_r.py': 'rafdb',
    'vggface2_m.py': 'folders',
  }.get(name, 'affectnet/' + name[len('affectnet') : len('affectnet') + 1] + 'cls')
  assert data_name == expected
  assert int(epochs) > 0 and structure


def test_a_copied_config_uses_the_base_beside_it(tmp_path):
  mine = tmp_path / 'my_configs'
  mine.mkdir()
  shutil.copy(REPO / 'configs' / 'rafdb_r.py', mine / 'rafdb_r.py')
  base = (REPO / 'configs' / 'default.py').read_text()
  (mine / 'default.py').write_text(base.replace('config.num_epochs = 400', 'config.num_epochs = 7'))
  out = _load_elsewhere(mine / 'rafdb_r.py', tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['rafdb', 'zennet_r', '7']
  (mine / 'default.py').unlink()
  out = _load_elsewhere(mine / 'rafdb_r.py', tmp_path)
  assert out.returncode != 0 and 'builds on the config default.py, expected beside it' in out.stderr


def test_configs_still_import_as_a_package():
  from configs import default, demo, folders

  assert demo.get_config().data.name == 'digits'
  assert folders.get_config().to_dict().keys() == default.get_config().to_dict().keys()


def test_transfer_recipe_configs_are_valid_and_chain():
  """vggface2_m pretrains on the auto classes of a folder tree for 10 epochs; rafdb_m_transfer
  is rafdb_m initialised from that run's workdir, backbone only."""
  from configs import rafdb_m, rafdb_m_transfer, vggface2_m
  from zenfer_jax.config.validation import ConfigError, validate_config

  pre, fine = vggface2_m.get_config(), rafdb_m_transfer.get_config()
  validate_config(pre)
  with pytest.raises(ConfigError, match="init_from='runs/vggface2_m'"):  # Not pretrained here.
    validate_config(fine)
  assert (pre.data.name, pre.data.classes, pre.num_epochs) == ('folders', 'auto', 10)
  assert pre.model.structure == fine.model.structure == 'zennet_m'
  assert pre.model.use_sa and fine.model.use_sa
  assert fine.init_from == 'runs/vggface2_m' and fine.only_backbone and not fine.freeze_backbone
  expected = rafdb_m.get_config()
  expected.init_from, expected.only_backbone = fine.init_from, True
  assert fine.to_dict() == expected.to_dict()


def test_a_config_by_name_is_the_shipped_file_and_a_path_wins(tmp_path, monkeypatch):
  from zenfer_jax.config import files

  shipped = pathlib.Path(files.SHIPPED_DIR)
  assert shipped.resolve() == (REPO / 'configs').resolve()  # The repository's configs/: a link.
  assert {'demo', 'rafdb_m', 'search_m'} <= set(files.shipped_names())
  assert '__init__' not in files.shipped_names()
  assert files.resolve('rafdb_m') == files.resolve('rafdb_m.py') == str(shipped / 'rafdb_m.py')
  for unknown in ('rafdb', '__init__', 'configs/nope.py', ''):
    assert files.resolve(unknown) == unknown
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'demo.py').write_text('')
  assert files.resolve('demo.py') == 'demo.py'  # A file here wins over the shipped demo.
  assert files.resolve('demo') == str(shipped / 'demo.py')


BY_NAME = """
import sys
from absl import flags
from zenfer_jax.config.files import define_config_flag
config = define_config_flag('Training')
sys.argv = ['main', '--config=' + sys.argv[1], '--config.num_epochs=3']  # Overrides: from sys.argv.
flags.FLAGS(sys.argv)
print(config.value.data.name, config.value.num_epochs, config.value.is_locked)
"""


@pytest.mark.parametrize('name', ['demo', 'demo.py'])
def test_config_flag_takes_a_shipped_configs_name_anywhere(name, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run(
    [sys.executable, '-c', BY_NAME, name],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ['digits', '3', 'True']
