"""`folders` with classes='auto': face-identity trees (the VGGFace2 layout) prepared by streaming.

A generated tree of 300 tiny images over 50 identity folders named as VGGFace2 names them
(n000002, ...), plus what a real download holds: a corrupt JPEG, a text file, and a test split
whose identities train/ lacks (all of VGGFace2's test identities are such).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.config.validation import ConfigError, validate_config
from zenfer_jax.data.builders import folders

tfds.disable_progress_bar()

NUM_CLASSES = 50
PER_CLASS = 6
# VGGFace2-style names, created in a shuffled order (label order must not follow it).
IDENTITIES = [f'n{n:06d}' for n in np.random.default_rng(0).permutation(NUM_CLASSES) * 37 + 2]
OTHERS = ['n999990', 'n999991', 'n999992']  # Test identities that train/ lacks.


def make_identity_tree(root: str) -> None:
  """The identity tree, created in a shuffled order, plus a corrupt JPEG and a text file."""
  fx.make_identity_tree(root, IDENTITIES, PER_CLASS, OTHERS)
  fx.write_bad(os.path.join(root, 'train', IDENTITIES[3], 'broken.jpg'), 'corrupt')
  fx.write_bad(os.path.join(root, 'train', IDENTITIES[7], 'list.txt'), 'text')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('vggface2_like'))
  make_identity_tree(root)
  return root


@pytest.fixture(scope='module')
def prepared(tree, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return data.prepare_dataset('folders', data_dir, manual_dir=tree, classes='auto'), data_dir


def test_auto_classes_are_the_sorted_train_folders(prepared):
  info, data_dir = prepared
  assert info.class_names == sorted(IDENTITIES) != IDENTITIES
  assert info.num_classes == NUM_CLASSES
  # Every image labelled with its own folder's index in the sorted list.
  b = data.builder('folders', data_dir, 'auto')
  examples = list(tfds.as_numpy(b.as_dataset(split='train', shuffle_files=False)))
  assert len(examples) == info.split_sizes['train'] == NUM_CLASSES * PER_CLASS
  for ex in examples:
    folder = ex['file_name'].decode().split('/')[0]
    assert info.class_names[ex['label']] == folder
  assert [int(ex['label']) for ex in examples] == sorted(int(ex['label']) for ex in examples)
  assert info.class_ranges['train'][0] == [0, PER_CLASS]


def test_auto_classes_are_recorded_and_reused(prepared, tree):
  info, data_dir = prepared
  with open(os.path.join(info.data_path, 'metadata.json')) as f:
    meta = json.load(f)
  assert meta['classes'] == sorted(IDENTITIES)
  assert meta['classes_from'].startswith('auto')
  # Later loads take the recorded list, with 'auto', with nothing or with the list itself.
  for classes in ('auto', None, sorted(IDENTITIES)):
    assert data.load('folders', data_dir, classes)[1].class_names == sorted(IDENTITIES)
  with pytest.raises(ValueError, match='was prepared with classes'):
    data.load('folders', data_dir, list(reversed(sorted(IDENTITIES))))
  assert data.prepare_dataset('folders', data_dir, manual_dir=tree, classes='auto') == info


def test_bad_files_and_unlabellable_test_identities_are_reported(prepared):
  info, _ = prepared
  # Test: one image per train identity; the three identities train/ lacks are left out.
  assert info.split_sizes['test'] == NUM_CLASSES
  assert info.skipped == 2
  report = open(info.report_path).read()
  assert f'{IDENTITIES[3]}/broken.jpg' in report and f'{IDENTITIES[7]}/list.txt' in report
  assert "test: class folders not among train/'s classes (classes=auto): 3" in report


def test_generation_streams_one_class_folder_at_a_time(tree, tmp_path, monkeypatch):
  """Listing and reading follow the writer: after the first example only the first class folder
  has been listed, so memory does not depend on the number of images."""
  b = data.builder('folders', str(tmp_path / 'd'), 'auto', manual_dir=tree)
  generators = b._split_generators(types.SimpleNamespace(manual_dir=tree))
  listed = []
  real_scandir = os.scandir

  def scandir(path):
    listed.append(os.path.relpath(os.fspath(path), tree))
    return real_scandir(path)

  monkeypatch.setattr(os, 'scandir', scandir)
  train = generators['train']
  assert isinstance(train, types.GeneratorType)
  first = sorted(IDENTITIES)[0]
  key, example = next(train)
  assert key == f'{first}/0000_01.jpg' and example['label'] == 0
  assert listed == [os.path.join('train', first)]
  for _ in range(PER_CLASS):  # Into the second class folder.
    next(train)
  assert listed == [os.path.join('train', name) for name in sorted(IDENTITIES)[:2]]
  assert sum(1 for _ in train) == NUM_CLASSES * PER_CLASS - PER_CLASS - 1
  assert len(listed) == NUM_CLASSES


def test_thousands_of_classes(tmp_path):
  root = tmp_path / 'm'
  names = [f'id{i}' for i in range(2000)]
  for i, name in enumerate(names):
    fx.write_image(str(root / 'train' / name / 'a.png'), i % 8, i, (4, 4), 'PNG')
  info = data.prepare_dataset('folders', str(tmp_path / 'd'), manual_dir=str(root), classes='auto')
  assert info.num_classes == 2000 and info.class_names == sorted(names)
  assert info.class_names[:3] == ['id0', 'id1', 'id10']
  assert info.split_sizes == {'train': 2000}


def test_auto_needs_a_train_split(tmp_path):
  fx.write_image(str(tmp_path / 'm' / 'test' / 'a' / 'x.jpg'), 0, 0)
  with pytest.raises(FileNotFoundError, match="classes='auto' takes the class names"):
    data.prepare_dataset(
      'folders', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), classes='auto'
    )
  with pytest.raises(ValueError, match='needs the manual_dir'):
    data.builder('folders', str(tmp_path / 'd'), 'auto')
  assert folders.AUTO == 'auto'


def test_config_accepts_auto_for_folders_only():
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import default
  from configs import folders as folders_config

  config = folders_config.get_config()
  config.data.classes = 'auto'
  validate_config(config)
  config = default.get_config()
  config.data.classes = 'auto'
  with pytest.raises(ConfigError, match='data.classes'):
    validate_config(config)


@pytest.mark.slow
def test_prepare_cli_with_auto(tree, tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'zenfer_jax.data.prepare',
      '--dataset=folders',
      '--folders.classes=auto',
      f'--manual_dir={tree}',
      f'--data_dir={tmp_path / "d"}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  first = sorted(IDENTITIES)
  assert f'folders: {NUM_CLASSES} classes [{first[0]!r}' in out.stdout
  assert f"'train': {NUM_CLASSES * PER_CLASS}" in out.stdout and '2 skipped' in out.stdout


def test_digits_as_folders_for_the_transfer_demo(tmp_path):
  """The README's two-stage digits example: disjoint digit sets as class-folder trees."""
  from zenfer_jax.data import digits_folders

  assert digits_folders.main([f'--out={tmp_path / "d"}', '--digits=7,5,9,6,8']) == 0
  info = data.prepare_dataset(
    'folders', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'd'), classes='auto'
  )
  assert info.class_names == ['5', '6', '7', '8', '9']
  assert info.split_sizes == {'train': 718, 'test': 178}  # The digits split, i % 5 == 0 test.
  with pytest.raises(SystemExit):
    digits_folders.main([f'--out={tmp_path / "d"}', '--digits=1'])  # Exists: refused.
