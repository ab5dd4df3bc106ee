"""FER2013 (ICML 2013 representation-learning challenge): 48x48 grey faces, 7 expressions.

It circulates in two forms, and both are read to the same records (the same decoded images and
labels per split; see `Fer2013`), so a model does not depend on which one its user downloaded:

  * the original `fer2013.csv`: header `emotion,pixels,Usage`, one face per row as 2,304
    space-separated grey levels (48x48, row-major), Usage Training / PublicTest / PrivateTest;
  * Kaggle's folder copy: `train/<class>/Training_*.jpg`, `test/<class>/PublicTest_*.jpg` and
    `test/<class>/PrivateTest_*.jpg`, class folders named as `FER2013_CLASSES`.

Labels follow FER2013's own emotion numbers (0 angry ... 6 neutral), not RAF-DB's order;
`dataset_names.FER2013_TO_RAFDB` maps one to the other.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import warnings

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from zenfer_jax import dataset_names
from zenfer_jax.data import images
from zenfer_jax.data.builders import common
from zenfer_jax.errors import UserError

CSV_NAME = 'fer2013.csv'
SIZE = 48
COLUMNS = ('emotion', 'pixels', 'Usage')
# Usage (CSV) -> split; the file-name prefixes of Kaggle's folder copy are the same words.
USAGE_SPLITS = {'Training': 'train', 'PublicTest': 'publictest', 'PrivateTest': 'privatetest'}
TEST_PREFIXES = {'PublicTest_': 'publictest', 'PrivateTest_': 'privatetest'}
SPLITS = ('train', 'publictest', 'privatetest', 'test')
EXPECTED_SIZES = {'train': 28_709, 'publictest': 3_589, 'privatetest': 3_589, 'test': 7_178}
_EMOTIONS = tuple(str(i) for i in range(len(dataset_names.FER2013_CLASSES)))
# Only ASCII digits and whitespace: np.fromstring stops quietly at anything else (a '-', a '.'),
# and str.isdigit() would let through digits of other scripts.
_PIXEL_CHARS = re.compile(r'[0-9\s]*', re.ASCII)


class LayoutError(FileNotFoundError, UserError):
  """manual_dir holds neither FER2013 form (or both); the message lists what it does hold."""


class HeaderError(ValueError, UserError):
  """fer2013.csv's header lacks a column: no row could be read, so nothing is skipped one by
  one; the message names the file, the header found and the one expected."""


@dataclasses.dataclass
class _OnceLog(images.SkipLog):
  """A SkipLog that lists a bad test/ file once: it is read for `test` and again for
  `publictest` or `privatetest`, but it is one bad file of the download."""

  seen: set = dataclasses.field(default_factory=set)

  def add(self, split: str, item: str, reason: str) -> None:
    if split != 'train':
      if (item, reason) in self.seen:
        return
      self.seen.add((item, reason))
    super().add(split, item, reason)


def grey_png(pixels: np.ndarray) -> bytes:
  """Lossless RGB PNG of a uint8 [48, 48] face, encoded as `images.read_image` encodes a grey
  JPEG of Kaggle's copy, so both forms decode to the same arrays."""
  buf = io.BytesIO()
  Image.fromarray(pixels, 'L').convert('RGB').save(buf, format='PNG')
  return buf.getvalue()


def parse_pixels(text: str) -> np.ndarray:
  """A row's `pixels` field as uint8 [48, 48].

  Raises:
    ValueError: not exactly 2,304 integers in 0..255; the message says what was found.
  """
  want = SIZE * SIZE
  if not _PIXEL_CHARS.fullmatch(text):
    bad = next((t for t in text.split() if not t.isascii() or not t.isdigit()), text)
    raise ValueError(f'pixels: {bad[:20]!r} is not an integer (expected {want} integers 0..255)')
  if not text.strip():
    raise ValueError(f'pixels: expected {want} space-separated integers (48x48), got 0')
  with warnings.catch_warnings():
    warnings.simplefilter('error', DeprecationWarning)  # numpy's "not read to its end": a bug.
    values = np.fromstring(text, dtype=np.int64, sep=' ')
  if values.size != want:
    raise ValueError(f'pixels: expected {want} space-separated integers (48x48), got {values.size}')
  if values.max() > 255:  # Digits only: never negative. The file's own spelling, not numpy's
    # saturated int64, goes in the message.
    bad = next(t for t in text.split() if len(t.lstrip('0')) > 3 or int(t) > 255)
    raise ValueError(f'pixels: value {bad[:20]} is outside 0..255')
  return values.astype(np.uint8).reshape(SIZE, SIZE)


def find_layout(root: str) -> str:
  """'csv' or 'folders': which form manual_dir holds.

  Raises:
    LayoutError: neither form, or both (which one was meant cannot be guessed).
  """
  has_csv = os.path.isfile(os.path.join(root, CSV_NAME))
  has_folders = all(os.path.isdir(os.path.join(root, d)) for d in ('train', 'test'))
  if has_csv and has_folders:
    raise LayoutError(
      f'{root!r} holds both {CSV_NAME} and train/ + test/ folders; point manual_dir at a '
      'directory with only one of the two FER2013 forms.'
    )
  if has_csv:
    return 'csv'
  if has_folders:
    return 'folders'
  with os.scandir(root) as entries:
    found = sorted(e.name + ('/' if e.is_dir() else '') for e in entries)
  shown = ', '.join(found[:10]) + (f' and {len(found) - 10} more' if len(found) > 10 else '')
  raise LayoutError(
    f'Expected FER2013 in {root!r} as either {CSV_NAME} (header emotion,pixels,Usage) or the '
    f'folders train/<class>/*.jpg and test/<class>/*.jpg (classes '
    f'{", ".join(dataset_names.FER2013_CLASSES)}); found {shown or "nothing"}.'
  )


class Fer2013(common.ImageBuilder):
  """FER2013 from fer2013.csv or Kaggle's folder copy, to the same records.

  Splits: `train` (Training), `publictest`, `privatetest`, and `test`, their union (all of
  test/, as Kaggle ships it). A split the download has no image of (Kaggle copies without the
  PrivateTest files) is left out and noted in the report; asking for it names the splits there
  are. In the folder copy a test/ file named neither PublicTest_* nor PrivateTest_* is kept in
  `test` only, and counted in the report.

  Records hold RGB PNGs (the folder copy's JPEGs decoded once and re-encoded losslessly by
  `images.read_image`, CSV rows by `grey_png`), so both forms give equal pixels. Within a class
  the folder copy's records are ordered by file name and the CSV's by line: the two orders
  differ (Kaggle's file numbers are not CSV lines), the multiset of (image, label) per split
  does not.
  """

  name = 'fer2013'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download FER2013 in either form and point manual_dir at the directory that holds
    {CSV_NAME}   the ICML release: header emotion,pixels,Usage (Training/PublicTest/PrivateTest)
  or Kaggle's folder copy:
    train/<class>/Training_*.jpg, test/<class>/PublicTest_*.jpg, test/<class>/PrivateTest_*.jpg
    with <class> one of {', '.join(dataset_names.FER2013_CLASSES)}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return common.make_info(
      self,
      dataset_names.FER2013_CLASSES,
      'FER2013 48x48 grey faces, emotion numbers 0..6 (angry, disgust, fear, happy, sad, '
      'surprise, neutral); splits train, publictest, privatetest and test (publictest + '
      'privatetest). file_name is fer2013.csv:<line> or <class>/<file> of the folder copy.',
      homepage='https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    common.require_dir(root, 'the FER2013 manual_dir')
    layout = find_layout(root)
    common.record_source(self, root)
    skips = _OnceLog(self.name)
    if layout == 'csv':
      rows = self._read_csv(os.path.join(root, CSV_NAME), skips)
      return {
        split: self._generate_rows(split, split_rows, skips)
        for split, split_rows in self._present(rows).items()
      }
    per_split = self._list_folders(root, skips)
    return {
      split: common.generate(self, split, cands, skips, EXPECTED_SIZES[split])
      for split, cands in self._present(per_split).items()
    }

  def _present(self, per_split: dict[str, list]) -> dict[str, list]:
    """The splits with examples; the others are noted in the report as left out."""
    for split, items in per_split.items():
      if not items:
        self.info.metadata['count_notes'].append(
          f'{split}: no examples in this download; the split is left out'
        )
    return common.non_empty(self, per_split)

  def _read_csv(self, path: str, skips: images.SkipLog) -> dict[str, list]:
    """Per split, (line, label, uint8 [48, 48]) of the usable rows; the others are skipped
    with their line number. Each physical line is one row (FER2013 never quotes a newline),
    so one malformed line cannot swallow the next ones."""
    rows = {split: [] for split in SPLITS}
    columns = list(COLUMNS)
    with open(path, newline='', encoding='utf-8-sig', errors='replace') as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f'{CSV_NAME}:{line_no}'
        try:
          row = [c.strip() for c in next(csv.reader([line]))]
        except csv.Error as e:
          skips.add('csv', where, f'unreadable CSV line: {e}')
          continue
        if line_no == 1 and row and row[0] in COLUMNS:
          missing = [c for c in COLUMNS if c not in row]
          if missing:
            raise HeaderError(
              f'{path}:1: the header {row} lacks the columns {missing}; expected '
              f'{",".join(COLUMNS)}'
            )
          columns = row
          continue
        if len(row) != len(columns):
          skips.add(
            'csv',
            where,
            f'expected {len(columns)} fields ({",".join(columns)}), got {len(row)}',
          )
          continue
        rec = dict(zip(columns, row))
        split = USAGE_SPLITS.get(rec['Usage'])
        if split is None:
          skips.add(
            'csv',
            where,
            f'Usage {rec["Usage"][:40]!r} is not one of {", ".join(USAGE_SPLITS)}',
          )
          continue
        if rec['emotion'] not in _EMOTIONS:
          skips.add(
            split, where, f'emotion {rec["emotion"][:40]!r} is not one of 0..{len(_EMOTIONS) - 1}'
          )
          continue
        try:
          pixels = parse_pixels(rec['pixels'])
        except ValueError as e:
          skips.add(split, where, str(e))
          continue
        rows[split].append((line_no, int(rec['emotion']), pixels))
    rows['test'] = rows['publictest'] + rows['privatetest']
    return rows

  def _generate_rows(self, split: str, rows: list, skips: images.SkipLog):
    """CSV rows as examples, grouped by class and in line order within it (`common.generate`'s
    order, with the line number as the name)."""
    counts = [0] * len(dataset_names.FER2013_CLASSES)
    for line_no, label, pixels in sorted(rows, key=lambda r: (r[1], r[0])):
      name = f'{CSV_NAME}:{line_no}'
      counts[label] += 1
      yield name, {'image': grey_png(pixels), 'label': label, 'file_name': name}
    in_split = sum(e['split'] == split for e in skips.entries)
    count = common.record_counts(self, split, counts, skips.entries, in_split)
    common.compare_count(self, split, count, EXPECTED_SIZES[split])

  def _list_folders(self, root: str, skips: images.SkipLog) -> dict[str, list]:
    """Per split, the image candidates of Kaggle's folder copy; stray entries are skipped."""
    per_split = {split: [] for split in SPLITS}
    unprefixed = []
    for folder in ('train', 'test'):
      top = os.path.join(root, folder)
      with os.scandir(top) as entries:
        listing = sorted((e.name, e.is_dir()) for e in entries)
      present = set()
      for cls, is_dir in listing:
        if cls not in dataset_names.FER2013_CLASSES or not is_dir:
          skips.add(
            folder,
            f'{folder}/{cls}',
            f'not a FER2013 class folder (expected {"/".join(dataset_names.FER2013_CLASSES)})',
          )
          continue
        present.add(cls)
        label = dataset_names.FER2013_CLASSES.index(cls)
        cls_dir = os.path.join(top, cls)
        with os.scandir(cls_dir) as entries:
          files = sorted((e.name, e.is_dir()) for e in entries)
        for fname, sub_dir in files:
          rel = f'{cls}/{fname}'
          if sub_dir:
            skips.add(folder, rel, 'a directory inside a class folder')
            continue
          if not fname.lower().endswith(images.IMAGE_SUFFIXES):
            skips.add(
              folder, rel, f'not an image file (expected {"/".join(images.IMAGE_SUFFIXES)})'
            )
            continue
          cand = common.Candidate(rel, os.path.join(cls_dir, fname), label)
          if folder == 'train':
            per_split['train'].append(cand)
            continue
          per_split['test'].append(cand)
          split = next((s for p, s in TEST_PREFIXES.items() if fname.startswith(p)), None)
          if split is None:
            unprefixed.append(rel)
          else:
            per_split[split].append(cand)
      absent = [c for c in dataset_names.FER2013_CLASSES if c not in present]
      if absent:
        self.info.metadata['count_notes'].append(
          f'{folder}/: no class folder for {", ".join(absent)}'
        )
    if unprefixed:
      self.info.metadata['count_notes'].append(
        f'test: {len(unprefixed)} file(s) of test/ named neither PublicTest_* nor PrivateTest_* '
        f'(e.g. {unprefixed[0]}) are in test only, in neither publictest nor privatetest'
      )
    return per_split
