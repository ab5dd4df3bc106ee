"""prepare's ArrayRecord files: the same examples as the TFRecords, readable by tfds.data_source."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.data import array_records

tfds.disable_progress_bar()


def _tfrecord_examples(name, data_dir, split):
  b = data.builder(name, data_dir)
  ds = b.as_dataset(
    split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()}
  )
  return [(bytes(e['image']), int(e['label']), bytes(e['file_name'])) for e in tfds.as_numpy(ds)]


def _array_record_examples(name, data_dir, split):
  # builder.as_data_source, which tfds.data_source calls: with both formats TFDS 4.9's
  # tfds.data_source refuses the alternative one (array_records.data_source says why).
  source = array_records.data_source(
    data.builder(name, data_dir), split, decoders={'image': tfds.decode.SkipDecoding()}
  )
  return [(bytes(e['image']), int(e['label']), bytes(e['file_name'])) for e in source]


@pytest.mark.parametrize('name', ['digits', 'fer2013'])
def test_both_formats_hold_the_same_examples_in_the_same_order(tmp_path, name):
  manual = None
  if name == 'fer2013':
    manual = str(tmp_path / 'manual')
    fx.make_fer2013_folders(manual, usages=('Training', 'PublicTest'))
  data_dir = str(tmp_path / 'tfds')
  info = data.prepare_dataset(name, data_dir, manual_dir=manual, file_format='both')
  b = data.builder(name, data_dir)
  assert array_records.available(b) == {'tfrecord', 'array_record'}
  assert b.info.file_format.value == 'tfrecord'  # tf.data keeps reading the TFRecords.
  for split, size in info.split_sizes.items():
    expected = _tfrecord_examples(name, data_dir, split)
    got = _array_record_examples(name, data_dir, split)
    assert len(got) == len(expected) == size
    assert got == expected  # Byte for byte, in order: the class ranges hold for both.
  shards = sorted(f for f in os.listdir(b.data_dir) if '.array_record-' in f)
  assert shards and not any(f.endswith('.incomplete') for f in shards)


def test_array_records_are_added_beside_prepared_tfrecords(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  data.prepare_dataset('digits', data_dir)
  b = data.builder('digits', data_dir)
  assert array_records.available(b) == {'tfrecord'}
  with pytest.raises(array_records.MissingFormatError, match='file_format=both'):
    array_records.require(b, 'array_record', 'grain')
  data.prepare_dataset(
    'digits', data_dir, file_format='array_record'
  )  # Adds the copy, keeps the rest.
  b = data.builder('digits', data_dir)
  assert array_records.available(b) == {'tfrecord', 'array_record'}
  decoded = array_records.data_source(data.builder('digits', data_dir), 'test')
  labels = [int(e['label']) for e in decoded]
  assert labels == sorted(labels) and len(labels) == 360  # Class-grouped, as written.
  image = decoded[0]['image']
  assert image.shape == (8, 8, 3) and image.dtype == np.uint8


def test_array_record_only_and_its_errors(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  info = data.prepare_dataset('digits', data_dir, file_format='array_record')
  b = data.builder('digits', data_dir)
  assert array_records.available(b) == {'array_record'}
  with open(os.path.join(b.data_dir, 'dataset_info.json')) as f:
    assert json.load(f)['fileFormat'] == 'array_record'
  assert info.class_ranges['train'][:2] == [[0, 136], [136, 290]]  # As with TFRecords.
  source = tfds.data_source('digits', data_dir=data_dir, split='train', download=False)
  assert [int(source[i]['label']) for i in (0, 135, 136)] == [0, 0, 1]
  with pytest.raises(
    array_records.MissingFormatError,
    match=r"\['array_record'\] only.*another data_dir with --file_format=both",
  ):
    data.prepare_dataset('digits', data_dir)  # The default asks for TFRecords, which are not there.
  with pytest.raises(ValueError, match="file_format='parquet'"):
    data.prepare_dataset('digits', data_dir, file_format='parquet')
