"""`folders` prepared through TFDS's Apache Beam path (DirectRunner, worker processes) gives the
same records, metadata and report as the plain path, bad files included."""

from __future__ import annotations

import importlib
import json
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data

tfds.disable_progress_bar()

# Names whose string order differs from the order of their (label, file name) pairs: 'a-b/...'
# sorts before 'a/...' as a key string, after it as a class.
IDENTITIES = ['a', 'a-b', 'n000002', 'n000017', 'x', 'x_1']
PER_CLASS = 8


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('identities'))
  fx.make_identity_tree(root, IDENTITIES, PER_CLASS, others=('n999990',))
  fx.write_bad(os.path.join(root, 'train', 'a-b', '0003_02.jpg'), 'corrupt')
  fx.write_bad(os.path.join(root, 'train', 'x', 'notes.txt'), 'text')
  return root


def _prepare(tree, data_dir, **kwargs):
  return data.prepare_dataset('folders', str(data_dir), manual_dir=tree, classes='auto', **kwargs)


@pytest.fixture(scope='module')
def both(tree, tmp_path_factory):
  plain = _prepare(tree, tmp_path_factory.mktemp('plain'))
  beam = _prepare(tree, tmp_path_factory.mktemp('beam'), beam=True, beam_workers=2)
  return plain, beam


def _examples(info: data.DatasetInfo, split: str) -> list[tuple[bytes, int, bytes]]:
  b = data.builder('folders', os.path.dirname(os.path.dirname(os.path.dirname(info.data_path))))
  return [
    (ex['image'].tobytes(), int(ex['label']), ex['file_name'])
    for ex in tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False))
  ]


def _records(path: str) -> list[tf.train.Example]:
  return [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


@pytest.mark.slow  # Beam starts worker processes.
def test_beam_records_equal_the_plain_ones(both):
  plain, beam = both
  assert beam.split_sizes == plain.split_sizes == {'train': 48, 'test': 6}
  assert beam.class_names == plain.class_names == IDENTITIES
  assert beam.class_ranges == plain.class_ranges
  for split in ('train', 'test'):
    examples = _examples(beam, split)
    assert examples == _examples(plain, split)
    assert [name.decode() for _, _, name in examples] == sorted(
      (name.decode() for _, _, name in examples), key=lambda n: tuple(n.split('/'))
    )
  # The record files, shard by shard and record by record, as tf.train.Example protos. Not as
  # bytes: protobuf serializes the feature map in an order that changes from one process to the
  # next, so two plain preparations of the same tree differ in bytes too.
  for split in ('train', 'test'):
    shards = sorted(f for f in os.listdir(plain.data_path) if f'-{split}.tfrecord' in f)
    assert shards == sorted(f for f in os.listdir(beam.data_path) if f'-{split}.tfrecord' in f)
    for shard in shards:
      records = [_records(os.path.join(info.data_path, shard)) for info in both]
      assert len(records[0]) > 0 and records[0] == records[1], shard


@pytest.mark.slow  # Beam starts worker processes.
def test_beam_metadata_and_report_equal_the_plain_ones(both):
  plain, beam = both
  meta = []
  for info in both:
    with open(os.path.join(info.data_path, 'metadata.json')) as f:
      meta.append(json.load(f))
  assert meta[0] == meta[1]
  assert [(e['split'], e['item']) for e in meta[1]['skipped']] == [
    ('train', 'a-b/0003_02.jpg'),
    ('train', 'x/notes.txt'),
  ]
  assert beam.skipped == plain.skipped == 2
  report = open(beam.report_path).read()
  assert report == open(plain.report_path).read()
  assert 'a-b/0003_02.jpg' in report and "test: class folders not among train/'s" in report
  # The workers' report files were read into the metadata and removed.
  assert not [f for f in os.listdir(beam.data_path) if f.startswith('beam_report')]


def test_beam_is_refused_for_builders_without_it(tmp_path, capsys):
  with pytest.raises(ValueError, match='rafdb has no Beam preparation'):
    data.prepare_dataset('rafdb', str(tmp_path / 'd'), manual_dir=str(tmp_path), beam=True)
  args = ['--dataset=rafdb', f'--data_dir={tmp_path / "d"}', f'--manual_dir={tmp_path}', '--beam']
  with pytest.raises(SystemExit) as e:
    importlib.import_module('zenfer_jax.data.prepare').main(args)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'rafdb has no Beam preparation' in err
  assert not os.path.exists(tmp_path / 'd')
