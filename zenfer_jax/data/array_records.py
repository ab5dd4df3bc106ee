"""ArrayRecord copies of prepared datasets, so training can read them without TensorFlow.

tf.data reads TFDS's TFRecord files; TensorFlow-free loading (`tfds.data_source`, read by Grain:
`zenfer_jax.data.grain_pipeline`) needs random access, which TFRecord files do not give and
ArrayRecord files do. `prepare` can therefore write a dataset in either format or in both:

  * 'tfrecord' (default): as before; the tf.data loader reads it.
  * 'array_record': ArrayRecord files only (TFDS's `file_format='array_record'`); only the
    Grain loader reads it.
  * 'both': TFRecord files, plus an ArrayRecord copy beside them, shard for shard, recorded in
    dataset_info.json as an alternative format (TFDS's own convention, as `tfds convert_format`
    does), so either loader reads the same examples in the same order from one data_dir.

The copy keeps every serialized example byte for byte and the shard lengths, so the examples'
indices, the class ranges in the metadata and the splits' slicing are the same in both formats.
Nothing here imports TensorFlow except `add_array_records`, which reads the TFRecord files.
"""

from __future__ import annotations

import os

from zenfer_jax.errors import UserError

FORMATS = ('tfrecord', 'array_record', 'both')
TFRECORD = 'tfrecord'
ARRAY_RECORD = 'array_record'


def check_format(file_format: str) -> str:
  if file_format not in FORMATS:
    raise ValueError(f'file_format={file_format!r}: expected one of {FORMATS}.')
  return file_format


def wanted(file_format: str) -> set[str]:
  """The on-disk formats a `prepare(file_format=...)` request needs."""
  check_format(file_format)
  return {TFRECORD, ARRAY_RECORD} if file_format == 'both' else {file_format}


def first_format(file_format: str) -> str:
  """The format the builder writes itself (with 'both', ArrayRecord is copied from TFRecord)."""
  return ARRAY_RECORD if check_format(file_format) == ARRAY_RECORD else TFRECORD


def available(builder) -> set[str]:
  """The formats a prepared builder's records exist in (main plus alternatives).

  Read from the info's proto: TFDS 4.9 keeps `alternative_file_formats` there when it reads
  dataset_info.json but not in `DatasetInfo.alternative_file_formats`.
  """
  proto = builder.info.as_proto
  return {f for f in [proto.file_format, *proto.alternative_file_formats] if f}


def data_source(builder, split: str, decoders=None):
  """`builder.as_data_source` over the ArrayRecord files (what `tfds.data_source` returns).

  Works for 'both' too, where `tfds.data_source(..., builder_kwargs={'file_format': ...})`
  refuses a format other than the main one: the alternative recorded in dataset_info.json is
  declared to the (in-memory) info first. The builder then reads ArrayRecord from here on, so
  give it a builder of its own.
  """
  require(builder, ARRAY_RECORD, 'grain')
  info = builder.info
  if info.file_format.value != ARRAY_RECORD and not any(
    f.value == ARRAY_RECORD for f in info.alternative_file_formats
  ):
    info.add_alternative_file_format(ARRAY_RECORD)
  return builder.as_data_source(split, decoders=decoders, file_format=ARRAY_RECORD)


class MissingFormatError(ValueError, UserError):
  """The prepared dataset has no records in the format a loader reads."""


def require(builder, file_format: str, loader: str) -> None:
  """Raises `MissingFormatError` naming the fix when `builder` has no `file_format` records."""
  have = available(builder)
  if file_format in have:
    return
  if file_format == ARRAY_RECORD:
    fix = (
      'Run `python -m zenfer_jax.data.prepare --dataset=... --data_dir=... --file_format=both` '
      '(with TensorFlow installed) to add them beside the TFRecords'
    )
  else:  # ArrayRecord files are not turned back into TFRecords.
    fix = 'Prepare the dataset into another data_dir with --file_format=both (or tfrecord)'
  raise MissingFormatError(
    f'The {builder.name} records in {os.fspath(builder.data_dir)} are {sorted(have)} only; the '
    f"{loader} loader reads {file_format}. {fix}, or use the other loader (config.data.loader='"
    f"{'tf.data' if file_format == ARRAY_RECORD else 'grain'}')."
  )


def _array_record_path(tfrecord_path: str) -> str:
  head, name = os.path.split(tfrecord_path)
  marker = f'.{TFRECORD}-'
  if marker not in name:
    raise ValueError(f'{tfrecord_path} is not a TFDS TFRecord shard name (no {marker!r}).')
  return os.path.join(head, name.replace(marker, f'.{ARRAY_RECORD}-', 1))


def add_array_records(builder) -> list[str]:
  """Writes an ArrayRecord copy of every TFRecord shard of a prepared builder, beside it.

  Each shard is written under a temporary name and renamed when complete, and the format is
  added to dataset_info.json only after all shards exist, so an interrupted copy is redone in
  full rather than read half-written. Returns the written paths.
  """
  import tensorflow as tf  # Reading TFRecord files needs it (preparation only).
  from array_record.python import array_record_module

  info = builder.info
  if info.file_format is None or info.file_format.value != TFRECORD:
    raise ValueError(
      f'{builder.name}: ArrayRecord copies are made from TFRecord files; the records in '
      f'{os.fspath(builder.data_dir)} are {info.file_format}.'
    )
  written = []
  for split in info.splits.values():
    lengths = list(split.shard_lengths)
    for path, expected in zip(split.filepaths, lengths, strict=True):
      src = os.fspath(path)
      dst = _array_record_path(src)
      tmp = dst + '.incomplete'
      writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
      count = 0
      try:
        for record in tf.data.TFRecordDataset(src).as_numpy_iterator():
          writer.write(record)
          count += 1
      finally:
        writer.close()
      if count != expected:
        os.remove(tmp)
        raise ValueError(
          f'{src} holds {count} records but dataset_info.json says {expected}; '
          'the records are damaged: prepare them again.'
        )
      os.replace(tmp, dst)
      written.append(dst)
  if ARRAY_RECORD not in available(builder):
    info.add_alternative_file_format(ARRAY_RECORD)
  info.write_to_directory(builder.data_dir, all_metadata=False)
  return written
