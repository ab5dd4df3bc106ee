"""Preparing a class-grouped split with Apache Beam, to the same records and report as the plain
path (`common.generate`).

TFDS runs a Beam pipeline when `download_and_prepare` gets a DownloadConfig with `beam_runner` or
`beam_options` and the builder's split generators are Beam transforms. Here a split is a
`beam.Create` of groups (one class folder each) whose elements are read by a ParDo on any worker:

- Order. With shuffling disabled, TFDS's Beam writer sorts the examples by key and assigns shards
  by key range, so keys must be integers in the plain path's order: the key is
  `label * 2**32 + position within the group`, and the groups arrive in file-name order.
- Report. Workers are other processes (or machines), so the counts and skips cannot go to the
  builder's metadata as the plain generator puts them. Each group emits a report (label, count,
  skips) to a second output; the reports of a split are gathered (`ToList`) and written as one
  JSON file beside the records. After the pipeline, `collect_reports` (in the launching process,
  from the builder's `_process_pipeline_result`) reads them, in split and label order, into the
  metadata and prepare_report.txt, and deletes them.

This module imports apache_beam: only the Beam path imports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import tensorflow_datasets as tfds
from etils import epath

from zenfer_jax.data import images
from zenfer_jax.data.builders import common

REPORT = 'report'
_REPORT_PREFIX = 'beam_report'
# Room for the positions of one group in a key: far more files than any class folder holds.
_POSITIONS = 2**32

# (group, skips) -> the examples of that group, in order; label is the group's first item.
ReadGroup = Callable[[Any, images.SkipLog], Iterator[dict]]


def report_path(builder: tfds.core.GeneratorBasedBuilder, split: str) -> str:
  return os.path.join(os.fspath(builder.data_dir), f'{_REPORT_PREFIX}-{split}.json')


class _ReadGroup(beam.DoFn):
  """Reads one group on a worker: its examples, keyed in order, and then its report."""

  def __init__(self, dataset: str, split: str, read_group: ReadGroup):
    self._dataset = dataset
    self._split = split
    self._read_group = read_group

  def process(self, group):
    label = int(group[0])
    skips = images.SkipLog(self._dataset)
    count = 0
    for example in self._read_group(group, skips):
      if count >= _POSITIONS:
        raise ValueError(f'{self._split}: group {group!r} holds more than {_POSITIONS} images.')
      yield label * _POSITIONS + count, example
      count += 1
    yield beam.pvalue.TaggedOutput(
      REPORT, {'label': label, 'count': count, 'skipped': skips.entries}
    )


def _write_report(reports: list[dict], path: str) -> None:
  epath.Path(path).write_text(json.dumps(reports))


class GroupedSplit(beam.PTransform):
  """One split's examples as a PCollection of (key, example); writes its report file too."""

  def __init__(
    self, dataset: str, split: str, groups: Sequence[Any], read_group: ReadGroup, path: str
  ):
    super().__init__()
    self._dataset = dataset
    self._split = split
    self._groups = list(groups)
    self._read_group = read_group
    self._path = path

  def expand(self, pbegin):
    results = (
      pbegin
      | 'Groups' >> beam.Create(self._groups)
      | 'Read'
      >> beam.ParDo(_ReadGroup(self._dataset, self._split, self._read_group)).with_outputs(
        REPORT, main='examples'
      )
    )
    _ = (
      results[REPORT]
      | 'GatherReport' >> beam.combiners.ToList()
      | 'WriteReport' >> beam.Map(_write_report, path=self._path)
    )
    return results.examples


def grouped_split(
  builder: tfds.core.GeneratorBasedBuilder,
  split: str,
  groups: Sequence[Any],
  read_group: ReadGroup,
) -> GroupedSplit:
  """The Beam transform of a split whose `groups` (label first, in label order) `read_group`
  reads; `read_group` must be picklable (a module-level function, or a partial of one)."""
  path = report_path(builder, split)
  builder._beam_reports.append((split, path))
  return GroupedSplit(builder.name, split, groups, read_group, path)


def collect_reports(
  builder: tfds.core.GeneratorBasedBuilder, reports: Sequence[tuple[str, str]]
) -> None:
  """Puts the splits' reports into the metadata as `common.generate` does, in split order."""
  num_classes = builder.info.features['label'].num_classes
  skipped = list(builder.info.metadata.get('skipped', []))
  for split, path in reports:
    file = epath.Path(path)
    groups = sorted(json.loads(file.read_text()), key=lambda r: r['label'])
    file.unlink()
    counts = [0] * num_classes
    before = len(skipped)
    for group in groups:
      counts[group['label']] += group['count']
      skipped.extend(group['skipped'])
    common.record_counts(builder, split, counts, skipped, len(skipped) - before)
