"""Dataset names -> TFDS builders, and `prepare`, which builds the records once."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import logging

from zenfer_jax.data import array_records, images
from zenfer_jax.data.builders import (
  Affectnet,
  Digits,
  Fer2013,
  Folders,
  FoldersConfig,
  Rafdb,
  common,
)
from zenfer_jax.data.builders.folders import AUTO, auto_classes
from zenfer_jax.dataset_names import ALL_DATASETS, class_summary
from zenfer_jax.errors import UserError

MANUAL = ('rafdb', 'affectnet', 'fer2013', 'folders')
REPORT_NAME = 'prepare_report.txt'
FOLDERS_CONFIG = 'default'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about a prepared dataset."""

  name: str
  class_names: list[str]
  num_classes: int
  split_sizes: dict[str, int]
  report_path: str | None
  skipped: int
  # Per split, each class's [start, end) example range in the (class-grouped) records.
  class_ranges: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)
  data_path: str = ''


# Builder class by dataset family (the part of a name before '/').
_BUILDERS: dict[str, type[tfds.core.DatasetBuilder]] = {
  'rafdb': Rafdb,
  'digits': Digits,
  'affectnet': Affectnet,
  'fer2013': Fer2013,
  'folders': Folders,
}


def _check_name(name: str) -> None:
  if name not in ALL_DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {list(ALL_DATASETS)}.')


def _builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  _check_name(name)
  return _BUILDERS[name.split('/')[0]]


def _stored_folders_classes(data_dir: str) -> list[str] | None:
  path = os.path.join(data_dir, 'folders', FOLDERS_CONFIG, str(Folders.VERSION), 'metadata.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return list(json.load(f)['classes'])


def _is_auto(classes) -> bool:
  if isinstance(classes, str):
    return classes.strip() == AUTO
  return classes is not None and list(classes) == [AUTO]


def builder(
  name: str,
  data_dir: str,
  classes: Sequence[str] | str | None = None,
  manual_dir: str | None = None,
  file_format: str | None = None,
) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder for `name` under `data_dir` (prepared or not).

  `file_format` ('tfrecord' or 'array_record'): what an unprepared builder writes (TFDS refuses
  it for a prepared dataset in another format: leave it None there).

  For `folders`, `classes` is required before preparation (a list, or 'auto' with `manual_dir`:
  the sorted sub-folders of its train split); afterwards it may be omitted or 'auto', and if
  given as a list must equal the recorded class list.
  """
  cls = _builder_class(name)
  data_dir = os.fspath(data_dir)
  auto = _is_auto(classes)
  if isinstance(classes, str):  # 'a,b,c' as flags and configs spell it; '' means none.
    classes = [c.strip() for c in classes.split(',') if c.strip()] or None
  if auto:
    classes = None
  fmt = {'file_format': file_format} if file_format else {}
  if cls is Affectnet:
    b = Affectnet(data_dir=data_dir, config=name.split('/', 1)[1], **fmt)
  elif cls is not Folders:
    b = cls(data_dir=data_dir, **fmt)
  else:
    stored = _stored_folders_classes(data_dir)
    if stored is not None and classes is not None and list(classes) != stored:
      raise ValueError(
        f'The folders dataset in {data_dir!r} was prepared with classes {stored}, '
        f'not {list(classes)}; use the recorded order or prepare into another data_dir.'
      )
    if stored is None and auto:
      if manual_dir is None:
        raise ValueError(
          f"The folders dataset in {data_dir!r} is not prepared yet, and classes='auto' needs "
          'the manual_dir whose train/ sub-folders name the classes.'
        )
      classes = auto_classes(os.fspath(manual_dir))
    classes = stored if stored is not None else classes
    if not classes:
      raise ValueError(
        'The folders dataset needs its class list in label order '
        "(classes=[...] / --folders.classes=a,b,c, or 'auto' for the sorted sub-folders of "
        'train/).'
      )
    b = Folders(
      data_dir=data_dir,
      config=FoldersConfig(name=FOLDERS_CONFIG, classes=tuple(classes), auto_classes=auto),
      **fmt,
    )
    return b
  if classes is not None and list(classes) != b.info.features['label'].names:
    raise ValueError(
      f'{name} has the classes {b.info.features["label"].names}, not {list(classes)}.'
    )
  return b


def is_prepared(b: tfds.core.DatasetBuilder) -> bool:
  return os.path.exists(os.path.join(os.fspath(b.data_dir), 'dataset_info.json'))


def info_of(name: str, b: tfds.core.DatasetBuilder) -> DatasetInfo:
  meta = dict(b.info.metadata or {})
  report = os.path.join(os.fspath(b.data_dir), REPORT_NAME)
  names = list(b.info.features['label'].names)
  return DatasetInfo(
    name=name,
    class_names=names,
    num_classes=len(names),
    split_sizes={k: int(v.num_examples) for k, v in b.info.splits.items()},
    report_path=report if os.path.exists(report) else None,
    skipped=len(meta.get('skipped', [])),
    class_ranges={k: [list(r) for r in v] for k, v in meta.get('class_ranges', {}).items()},
    data_path=os.fspath(b.data_dir),
  )


def load(
  name: str, data_dir: str, classes: Sequence[str] | str | None = None
) -> tuple[tfds.core.DatasetBuilder, DatasetInfo]:
  """The builder and info of an already prepared dataset; a clear error if it is not prepared."""
  b = builder(name, data_dir, classes)
  if not is_prepared(b):
    raise FileNotFoundError(
      f'{name} is not prepared in {data_dir!r} (no {b.data_dir}); run '
      f'`python -m zenfer_jax.data.prepare --dataset={name} --data_dir={data_dir} ...` first.'
    )
  return b, info_of(name, b)


class SourceMismatchError(ValueError, UserError):
  """Prepared records exist in data_dir, built from other source files than manual_dir holds."""


def _check_source(name: str, b: tfds.core.DatasetBuilder, manual_dir: str) -> None:
  records = os.fspath(b.data_dir)
  stored = dict(b.info.metadata or {}).get('source') or {}
  if not os.path.isdir(manual_dir):
    logging.info(
      '%s: manual_dir %s does not exist; using the records in %s (prepared from %s).',
      name,
      manual_dir,
      records,
      stored.get('manual_dir', 'an unrecorded source'),
    )
    return
  if not stored.get('fingerprint'):
    logging.warning(
      '%s: the records in %s predate source fingerprints; they cannot be checked against '
      'manual_dir %s and are used as they are.',
      name,
      records,
      manual_dir,
    )
    return
  current = common.source_fingerprint(manual_dir)
  if current['fingerprint'] != stored['fingerprint']:
    raise SourceMismatchError(
      f'{name}: the records in {records} were prepared from {stored["manual_dir"]} '
      f'({stored["files"]:,} files, {stored["bytes"]:,} bytes), but manual_dir {manual_dir} now '
      f'holds other files ({current["files"]:,} files, {current["bytes"]:,} bytes, or changed '
      f'annotation files). Nothing was reused or deleted: prepare into another data_dir, or '
      f'delete {records} to rebuild it from {manual_dir}.'
    )


def supports_beam(name: str) -> bool:
  """Whether `name` can be prepared with a Beam runner (`prepare(..., beam=True)`)."""
  return _builder_class(name).SUPPORTS_BEAM


def beam_options(workers: int | None = None, pipeline_options: Sequence[str] = ()):
  """Beam's PipelineOptions for preparation: Beam's DirectRunner on this machine unless
  `pipeline_options` (Beam's own flags, e.g. `--runner=FlinkRunner`) name another runner.

  `workers`: DirectRunner worker processes (default: one per CPU).
  """
  from apache_beam.options.pipeline_options import PipelineOptions

  flags = list(pipeline_options)
  if not any(f.startswith('--runner') for f in flags):
    flags.append('--runner=DirectRunner')
  if not any(f.startswith('--direct_num_workers') for f in flags):
    flags.append(f'--direct_num_workers={workers or os.cpu_count() or 1}')
  if not any(f.startswith('--direct_running_mode') for f in flags):
    flags.append('--direct_running_mode=multi_processing')
  return PipelineOptions(flags=flags)


def prepare(
  name: str,
  data_dir: str,
  manual_dir: str | None = None,
  classes: Sequence[str] | str | None = None,
  beam: bool = False,
  beam_workers: int | None = None,
  beam_pipeline_options: Sequence[str] = (),
  file_format: str = 'tfrecord',
) -> DatasetInfo:
  """Builds the TFDS records of `name` under `data_dir` unless already built; returns its info.

  Manual datasets read `manual_dir` (default: TFDS's <data_dir>/downloads/manual). Unusable
  images and label lines are skipped, counted and listed in prepare_report.txt beside the
  records; a missing manual_dir or a wrong layout raises before anything is written.

  Records are reused only for the manual_dir they were built from: when records exist and
  manual_dir is given, its listing is fingerprinted and compared with the one stored at
  preparation (`SourceMismatchError` if they differ: nothing is reused or deleted silently).

  `file_format`: the record formats wanted, 'tfrecord', 'array_record' or 'both'
  (`zenfer_jax.data.array_records`). Records already prepared as TFRecord get an ArrayRecord copy
  beside them when 'array_record' or 'both' asks for it.

  `beam`: prepare through TFDS's Apache Beam path (`beam_options`: the DirectRunner with
  `beam_workers` processes, or the runner `beam_pipeline_options` names), to the same records and
  report; for the builders that support it (`supports_beam`).

  Raises:
    SourceMismatchError: records in data_dir come from another manual_dir's contents.
    array_records.MissingFormatError: TFRecord files are wanted but only ArrayRecord exist.
  """
  _check_name(name)
  array_records.check_format(file_format)
  if beam and not supports_beam(name):
    raise ValueError(
      f'{name} has no Beam preparation (only {[n for n in ALL_DATASETS if supports_beam(n)]}); '
      'prepare it without beam.'
    )
  data_dir = os.fspath(data_dir)
  default_manual = os.path.join(data_dir, 'downloads', 'manual')
  b = _builder_for_format(name, data_dir, classes, manual_dir or default_manual, file_format)
  if is_prepared(b) and manual_dir and name.split('/')[0] in MANUAL:
    _check_source(name, b, os.fspath(manual_dir))
  if not is_prepared(b):
    beam_args = (beam_workers, beam_pipeline_options) if beam else None
    _build_records(name, b, os.fspath(manual_dir or default_manual), beam_args)
  _add_wanted_formats(name, b, file_format)
  info = info_of(name, b)
  logging.info(
    '%s: %d classes %s, split sizes %s, %d skipped (report: %s)',
    name,
    info.num_classes,
    class_summary(info.class_names),
    info.split_sizes,
    info.skipped,
    info.report_path,
  )
  return info


def _builder_for_format(name: str, data_dir: str, classes, manual_dir: str, file_format: str):
  """The builder, asking for the wanted record format only when nothing is prepared yet: TFDS
  refuses a format that differs from a prepared dataset's, and prepared TFRecords get their
  ArrayRecord copy from `_add_wanted_formats` instead."""
  b = builder(name, data_dir, classes, manual_dir=manual_dir)
  if not is_prepared(b) and array_records.first_format(file_format) != array_records.TFRECORD:
    b = builder(
      name,
      data_dir,
      classes,
      manual_dir=manual_dir,
      file_format=array_records.first_format(file_format),
    )
  return b


def _build_records(name: str, b, manual_dir: str, beam_args) -> None:
  """Runs TFDS's preparation and writes the report of skipped files beside the records. A
  missing manual_dir raises here, before Beam is imported or TFDS writes anything, with what it
  should hold. `beam_args`: `beam_options`' (workers, pipeline options), or None without Beam."""
  config = {}
  if name.split('/')[0] in MANUAL:
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(
        f'The manual_dir {manual_dir!r} for {name} does not exist: pass manual_dir '
        f'(--manual_dir), the dataset as downloaded. It should hold:'
        f'{type(b).MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    config['manual_dir'] = manual_dir
  if beam_args is not None:
    config['beam_options'] = beam_options(*beam_args)
  logging.info(
    'Preparing %s into %s%s', name, b.data_dir, '' if beam_args is None else ' with Beam'
  )
  # TFDS prints that it is 'downloading' (nothing is: the files are local) to stdout, which
  # belongs to a program's result; its lines go to the log instead.
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    b.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP, **config
      )
    )
  for line in printed.getvalue().splitlines():
    logging.debug('tfds: %s', line)
  images.write_report(os.path.join(os.fspath(b.data_dir), REPORT_NAME), name, dict(b.info.metadata))


def _add_wanted_formats(name: str, b, file_format: str) -> None:
  """Records prepared in one format serve a request for both: an ArrayRecord copy is written
  from the TFRecords, while TFRecords missing beside ArrayRecords raise (they cannot be derived
  here), naming the loader that needs them."""
  missing = array_records.wanted(file_format) - array_records.available(b)
  if array_records.ARRAY_RECORD in missing:
    logging.info('Writing ArrayRecord copies of the %s records in %s', name, b.data_dir)
    array_records.add_array_records(b)
  elif missing:
    array_records.require(b, array_records.TFRECORD, 'tf.data')
