"""What every zenfer-jax image builder shares: features, class-grouped writing, skip bookkeeping.

Examples are written in a fixed order (TFDS shuffling disabled), grouped by class and sorted by
file name within a class. The metadata records each class's [start, end) example range per split,
so the input pipeline can read one class at a time (`train[a:b]`) for class-balanced or
class-proportional sampling without filtering the whole dataset once per class.

Metadata keys (saved to metadata.json beside the records): classes, class_ranges, split_sizes,
skipped (list of {split, item, reason}), dropped (reason -> count), count_notes, source (the
manual_dir and a fingerprint of its listing, see `source_fingerprint`).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from zenfer_jax.data import images


class Candidate(NamedTuple):
  """One labelled image named by the dataset's annotation or layout, not yet read."""

  file_name: str
  path: str
  label: int
  crop_box: tuple[float, float, float, float] | None = None


def make_info(
  builder: tfds.core.GeneratorBasedBuilder,
  class_names: Sequence[str],
  description: str,
  homepage: str | None = None,
) -> tfds.core.DatasetInfo:
  metadata = tfds.core.MetadataDict()
  metadata.update(
    {
      'classes': list(class_names),
      'class_ranges': {},
      'split_sizes': {},
      'skipped': [],
      'dropped': {},
      'count_notes': [],
      'source': {},
    }
  )
  return tfds.core.DatasetInfo(
    builder=builder,
    description=description,
    features=tfds.features.FeaturesDict(
      {
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=list(class_names)),
        'file_name': tfds.features.Text(),
      }
    ),
    supervised_keys=('image', 'label'),
    homepage=homepage,
    disable_shuffling=True,
    metadata=metadata,
  )


# Annotation files: their contents are part of the fingerprint (a relabelled list keeps its size).
_HASHED_SUFFIXES = ('.txt', '.csv')


def source_fingerprint(root: str) -> dict:
  """What identifies a manual_dir's contents: every file's relative path and size, plus the bytes
  of its annotation files (.txt, .csv), hashed.

  Prepared records are reused only for the source they were built from; paths are relative, so
  a copied or moved dataset still matches. Image bytes are not read (sizes stand for them), so
  this costs one directory walk.
  """
  root = os.path.abspath(os.fspath(root))
  digest = hashlib.sha256()
  files, total, seen_dirs = 0, 0, set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    st = os.stat(dirpath)
    if (st.st_dev, st.st_ino) in seen_dirs:  # A symlink loop.
      dirnames[:] = []
      continue
    seen_dirs.add((st.st_dev, st.st_ino))
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      try:
        size = os.stat(path).st_size
      except OSError:  # A dangling link: listed, as the builder will report it.
        size = -1
      files += 1
      total += max(size, 0)
      digest.update(os.fsencode(os.path.relpath(path, root)) + b'\0%d\n' % size)
      if size > 0 and name.lower().endswith(_HASHED_SUFFIXES):
        with open(path, 'rb') as f:
          for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
  return {'manual_dir': root, 'files': files, 'bytes': total, 'fingerprint': digest.hexdigest()}


def record_source(builder: tfds.core.GeneratorBasedBuilder, root: str) -> None:
  """Stores the manual_dir's fingerprint in the metadata, taken before any file is read."""
  builder.info.metadata['source'] = source_fingerprint(root)


def require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Expected {what} at {path!r}, but no such directory exists.')


def require_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Expected {what} at {path!r}, but no such file exists.')


def non_empty(
  builder: tfds.core.GeneratorBasedBuilder, per_split: dict[str, list[Candidate]]
) -> dict[str, list[Candidate]]:
  """Drops (with a warning) splits without a single labelled image: TFDS cannot write them."""
  for split, cands in per_split.items():
    if not cands:
      logging.warning('%s: no labelled images for split %r; it is left out.', builder.name, split)
  kept = {split: cands for split, cands in per_split.items() if cands}
  if not kept:
    raise ValueError(f'{builder.name}: found no labelled images at all; check the layout.')
  return kept


def _utf8_name(cand: Candidate) -> Candidate:
  # Names are stored as UTF-8 text: undecodable file-name bytes are kept as backslash escapes.
  return cand._replace(file_name=os.fsencode(cand.file_name).decode('utf-8', 'backslashreplace'))


def _sorted(candidates: Iterable[Candidate], split: str, skips: images.SkipLog) -> list[Candidate]:
  cands, seen = [], set()
  for cand in map(_utf8_name, candidates):
    if cand.file_name in seen:
      skips.add(split, cand.file_name, 'listed more than once; the first listing is kept')
      continue
    seen.add(cand.file_name)
    cands.append(cand)
  return sorted(cands, key=lambda c: (c.label, c.file_name))


def in_order(
  candidates: Iterable[Candidate], split: str, skips: images.SkipLog
) -> Iterator[Candidate]:
  """Streams candidates that arrive in (label, file name) order; a repeat of the previous name is
  skipped as `_sorted` would, anything out of order is a bug in the caller."""
  last = None
  for cand in candidates:
    key = (cand.label, cand.file_name)  # Before re-encoding: the order the caller sorted by.
    if last is not None and key == last:
      skips.add(split, _utf8_name(cand).file_name, 'listed more than once; the first is kept')
      continue
    if last is not None and key < last:
      raise ValueError(f'{split}: candidate {key} arrived after {last}; expected sorted order.')
    last = key
    yield _utf8_name(cand)


def read_examples(
  ordered: Iterable[Candidate], split: str, skips: images.SkipLog
) -> Iterator[dict]:
  """The examples of the readable candidates, in their order; the others are recorded in
  `skips`. Both the plain and the Beam path read images through this."""
  for cand in ordered:
    try:
      encoded = images.read_image(cand.path, cand.crop_box)
    except images.BadImage as e:
      skips.add(split, cand.file_name, str(e))
      continue
    yield {'image': encoded, 'label': cand.label, 'file_name': cand.file_name}


def record_counts(
  builder: tfds.core.GeneratorBasedBuilder,
  split: str,
  counts: Sequence[int],
  skipped: Sequence[dict],
  skipped_in_split: int,
) -> int:
  """Stores a written split's per-class ranges and size, and the skips so far; returns the size.

  `skipped` is every skip of the splits written so far, in their writing order.
  """
  meta = builder.info.metadata
  ranges, start = [], 0
  for n in counts:
    ranges.append([start, start + n])
    start += n
  meta['class_ranges'][split] = ranges
  meta['split_sizes'][split] = start
  meta['skipped'] = list(skipped)
  logging.info('%s/%s: wrote %d examples, skipped %d', builder.name, split, start, skipped_in_split)
  return start


def generate(
  builder: tfds.core.GeneratorBasedBuilder,
  split: str,
  candidates: Iterable[Candidate],
  skips: images.SkipLog,
  expected: int | None = None,
  grouped: bool = False,
) -> Iterator[tuple[str, dict]]:
  """Yields examples grouped by class, skipping (and recording) unreadable images.

  Runs lazily inside TFDS's writer; the metadata it fills is saved after all splits are written.
  `grouped`: the candidates already come in (label, file name) order, as a class-folder walk
  gives them; they are then streamed, never held in memory together (else they are collected,
  de-duplicated and sorted first).
  """
  num_classes = builder.info.features['label'].num_classes
  ordered = in_order(candidates, split, skips) if grouped else _sorted(candidates, split, skips)
  counts = [0] * num_classes
  skipped_before = len(skips.entries)
  for example in read_examples(ordered, split, skips):
    counts[example['label']] += 1
    yield example['file_name'], example
  start = record_counts(builder, split, counts, skips.entries, len(skips.entries) - skipped_before)
  compare_count(builder, split, start, expected)


def compare_count(
  builder: tfds.core.GeneratorBasedBuilder, split: str, count: int, expected: int | None
) -> None:
  """Notes (in the report, not as an error) a split size other than the published one: a
  download with a few broken images is still usable, but the user should know."""
  if expected is not None and count != expected:
    note = (
      f'{split}: {count} examples prepared, the reference split has {expected} '
      f'(difference {count - expected:+d})'
    )
    logging.warning('%s: %s', builder.name, note)
    builder.info.metadata['count_notes'].append(note)


class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders: `_split_generators` returns ready generators from `generate`."""

  # TFDS 4.9.10 finds a builder's source file through `importlib_resources`, which it does not
  # install on Python >= 3.9; editable installs of this package take that code path. Our
  # builders have no checksums or package data to find, so the plain module file is enough.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:
    return epath.Path(inspect.getfile(cls))

  # Whether `_split_generators` can return Beam transforms (see `beam_split`); set by builders
  # that implement it. Preparing with a Beam runner is refused for the others.
  SUPPORTS_BEAM = False
  _uses_beam = False  # Set per preparation by `_generate_splits`.

  def _generate_examples(self, **kwargs):
    raise NotImplementedError('zenfer-jax builders return generators from _split_generators.')

  def _generate_splits(self, dl_manager, download_config):
    # The DownloadConfig says whether TFDS runs a Beam pipeline; `_split_generators` does not see
    # it, so it is noted here, the one place both are known.
    self._uses_beam = (
      download_config.beam_runner is not None or download_config.beam_options is not None
    )
    self._beam_reports = []
    if self._uses_beam and not self.SUPPORTS_BEAM:
      raise ValueError(
        f'{self.name} has no Beam preparation; prepare it without a Beam runner (--beam).'
      )
    return super()._generate_splits(dl_manager, download_config)
