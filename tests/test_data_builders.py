"""The dataset builders on tiny fixtures in the official on-disk layouts."""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.data.builders import digits as digits_lib

tfds.disable_progress_bar()


def _examples(name, data_dir, split, classes=None):
  b = data.builder(name, data_dir, classes)
  return list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))


@pytest.fixture(scope='module')
def rafdb(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('rafdb_manual'))
  expected = fx.make_rafdb(manual)
  data_dir = str(tmp_path_factory.mktemp('rafdb_tfds'))
  return data.prepare_dataset('rafdb', data_dir, manual_dir=manual), data_dir, expected


def test_rafdb_counts_labels_and_names(rafdb):
  info, data_dir, expected = rafdb
  assert info.class_names == [
    'surprise',
    'fear',
    'disgust',
    'happiness',
    'sadness',
    'anger',
    'neutral',
  ]
  assert info.split_sizes == {
    'train': sum(fx.RAFDB_GOOD['train']),
    'test': sum(fx.RAFDB_GOOD['test']),
  }
  for split in ('train', 'test'):
    exs = _examples('rafdb', data_dir, split)
    names = [e['file_name'].decode() for e in exs]
    assert sorted(names) == sorted(n for n, (s, _) in expected.items() if s == split)
    for e in exs:
      name = e['file_name'].decode()
      assert e['label'] == expected[name][1], name
      assert e['image'].shape == (100, 100, 3)
      assert fx.colour_label(e['image']) == e['label'], name


def test_rafdb_bad_data_is_skipped_counted_and_reported(rafdb):
  info, _, _ = rafdb
  assert info.skipped == 4
  report = pathlib.Path(info.report_path).read_text()
  for name in fx.RAFDB_BAD:
    assert name in report
  assert 'missing file' in report and 'not an image' in report and 'truncated' in report
  assert os.path.dirname(info.report_path) == info.data_path
  # The reference counts differ from the fixture's: reported, not fatal.
  assert 'reference split has 12271' in report and 'reference split has 3068' in report


def test_rafdb_class_ranges_match_records(rafdb):
  info, data_dir, _ = rafdb
  for split, ranges in info.class_ranges.items():
    labels = [e['label'] for e in _examples('rafdb', data_dir, split)]
    assert len(ranges) == 7
    for c, (a, b) in enumerate(ranges):
      assert b - a == fx.RAFDB_GOOD[split][c]
      assert set(labels[a:b]) == {c}


def test_prepare_twice_reuses_records(rafdb):
  info, data_dir, _ = rafdb
  again = data.prepare_dataset('rafdb', data_dir, manual_dir='/nonexistent/not/needed')
  assert again == info


def test_missing_manual_dir_fails_naming_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='(?s)nowhere.*basic/EmoLabel'):
    data.prepare_dataset('rafdb', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'nowhere'))
  assert not (tmp_path / 'tfds' / 'rafdb' / '1.0.0').exists()


def test_wrong_layout_fails_naming_what_was_expected(tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'Image').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='list_patition_label.txt'):
    data.prepare_dataset('rafdb', str(tmp_path / 'tfds'), manual_dir=str(manual))
  with pytest.raises(FileNotFoundError, match='Manually_Annotated_Images'):
    data.prepare_dataset('affectnet/7cls', str(tmp_path / 'tfds'), manual_dir=str(manual))
  assert not (tmp_path / 'tfds' / 'rafdb' / '1.0.0').exists()


@pytest.fixture(scope='module')
def affectnet_manual(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('affectnet_manual'))
  fx.make_affectnet(manual)
  return manual


@pytest.mark.parametrize('config,num_classes', [('7cls', 7), ('8cls', 8)])
def test_affectnet_drops_codes_outside_config(affectnet_manual, tmp_path, config, num_classes):
  info = data.prepare_dataset(f'affectnet/{config}', str(tmp_path), manual_dir=affectnet_manual)
  assert info.num_classes == num_classes
  assert info.class_names[:3] == ['neutral', 'happy', 'sad']
  for split in ('train', 'test'):
    want = collections.Counter(c for c in fx.AFFECTNET_CODES[split] if c < num_classes)
    labels = [int(e['label']) for e in _examples(f'affectnet/{config}', str(tmp_path), split)]
    assert collections.Counter(labels) == want
    assert info.split_sizes[split] == sum(want.values())
  assert info.skipped == 4  # A truncated image and a missing one in each csv.
  meta = json.loads(pathlib.Path(info.data_path, 'metadata.json').read_text())
  dropped = sum(meta['dropped'].values())
  total = len(fx.AFFECTNET_CODES['train']) + len(fx.AFFECTNET_CODES['test'])
  assert dropped == total - sum(info.split_sizes.values())


def test_affectnet_face_crop(affectnet_manual, tmp_path):
  data.prepare_dataset('affectnet/8cls_crop', str(tmp_path), manual_dir=affectnet_manual)
  full = data.prepare_dataset('affectnet/8cls', str(tmp_path), manual_dir=affectnet_manual)
  assert full.split_sizes['test'] == 8
  cropped = _examples('affectnet/8cls_crop', str(tmp_path), 'test')
  whole = _examples('affectnet/8cls', str(tmp_path), 'test')
  assert {e['image'].shape for e in cropped} == {(50, 60, 3)}
  assert {e['image'].shape for e in whole} == {(80, 120, 3)}
  for e in cropped:
    assert fx.colour_label(e['image']) == e['label']


def test_folders_class_order_is_the_given_one(tmp_path):
  fx.make_folders(str(tmp_path / 'm'))
  classes = ['sad', 'happy', 'angry']  # Not alphabetical on purpose.
  info = data.prepare_dataset(
    'folders', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), classes=classes
  )
  assert info.class_names == classes
  assert info.split_sizes == {'train': 11, 'test': 5}
  assert info.skipped == 3
  report = pathlib.Path(info.report_path).read_text()
  assert 'sad/broken.jpg' in report and 'happy/notes.txt' in report and 'sad/half.jpg' in report
  for e in _examples('folders', str(tmp_path / 'd'), 'train'):
    assert fx.colour_label(e['image']) == e['label']
    assert e['file_name'].decode().split('/')[0] == classes[e['label']]
  # Reopening without classes uses the recorded list; a different list is refused.
  assert data.load('folders', str(tmp_path / 'd'))[1].class_names == classes
  assert data.load('folders', str(tmp_path / 'd'), 'sad,happy,angry')[1].class_names == classes
  with pytest.raises(ValueError, match=r"prepared with classes \['sad', 'happy', 'angry'\]"):
    data.prepare_dataset('folders', str(tmp_path / 'd'), classes=['angry', 'happy', 'sad'])


def test_folders_unknown_folder_is_an_error_naming_it(tmp_path):
  fx.make_folders(str(tmp_path / 'm'))
  with pytest.raises(ValueError, match="Unknown class folder.*'angry'"):
    data.prepare_dataset(
      'folders', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'), classes=['sad', 'happy']
    )
  with pytest.raises(ValueError, match='class list'):
    data.prepare_dataset('folders', str(tmp_path / 'd2'), manual_dir=str(tmp_path / 'm'))


def test_digits_fixed_split(tmp_path):
  info = data.prepare_dataset('digits', str(tmp_path))
  assert info.split_sizes == {'train': 1437, 'test': 360}
  assert info.class_names == [str(d) for d in range(10)]
  assert info.skipped == 0
  imgs, labels = digits_lib.digit_images()
  exs = _examples('digits', str(tmp_path), 'test')
  idx = sorted(int(e['file_name'].decode().split('_')[1]) for e in exs)
  assert idx == list(range(0, 1797, 5))
  for e in exs[::37]:
    i = int(e['file_name'].decode().split('_')[1])
    np.testing.assert_array_equal(e['image'], imgs[i])  # PNG: lossless.
    assert e['label'] == labels[i]


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.prepare_dataset('ckplus', '/tmp')


def test_datasets_are_registered_with_tfds():
  names = tfds.list_builders()
  for name in ('rafdb', 'affectnet', 'fer2013', 'digits', 'folders'):
    assert name in names
  assert set(data.DATASETS) == {
    'rafdb',
    'affectnet/7cls',
    'affectnet/8cls',
    'fer2013',
    'digits',
    'folders',
  }


@pytest.mark.slow
def test_prepare_cli(tmp_path):
  fx.make_folders(str(tmp_path / 'm'))
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'zenfer_jax.data.prepare',
      '--dataset=folders',
      f'--manual_dir={tmp_path / "m"}',
      f'--data_dir={tmp_path / "d"}',
      '--folders.classes=sad,happy,angry',
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "'train': 11" in out.stdout and "'test': 5" in out.stdout and '3 skipped' in out.stdout
  assert (tmp_path / 'd' / 'folders' / 'default' / '1.0.0' / 'prepare_report.txt').exists()
