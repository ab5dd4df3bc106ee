"""AffectNet (manually annotated part) from its official manual-download layout.

Splits: `train` from training.csv and `test` from validation.csv (AffectNet's test labels were
never released; every FER paper, the reference included, reports on the validation set).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os

import tensorflow_datasets as tfds

from zenfer_jax import dataset_names
from zenfer_jax.data import images
from zenfer_jax.data.builders import common

CODE_NAMES = dataset_names.AFFECTNET_CLASSES + ('none', 'uncertain', 'no-face')
IMAGE_DIR = 'Manually_Annotated_Images'
CSV_FILES = {'train': 'training.csv', 'test': 'validation.csv'}
COLUMNS = (
  'subDirectory_filePath',
  'face_x',
  'face_y',
  'face_width',
  'face_height',
  'facial_landmarks',
  'expression',
  'valence',
  'arousal',
)
EXPECTED_SIZES = {7: {'train': 283_901, 'test': 3_500}, 8: {'train': 287_651, 'test': 3_999}}


@dataclasses.dataclass(eq=False)
class AffectnetConfig(tfds.core.BuilderConfig):
  num_classes: int = 8
  crop_faces: bool = (
    False  # Crop to the annotated face box (face_x, face_y, face_width, face_height).
  )


class Affectnet(common.ImageBuilder):
  """AffectNet with expression codes 0..6 (`7cls`) or 0..7 (`8cls`); other codes are dropped."""

  name = 'affectnet'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
    AffectnetConfig(name='7cls', num_classes=7, description='codes 0-6, whole images'),
    AffectnetConfig(name='8cls', num_classes=8, description='codes 0-7, whole images'),
    AffectnetConfig(
      name='7cls_crop',
      num_classes=7,
      crop_faces=True,
      description='codes 0-6, cropped to the annotated face box',
    ),
    AffectnetConfig(
      name='8cls_crop',
      num_classes=8,
      crop_faces=True,
      description='codes 0-7, cropped to the annotated face box',
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Request AffectNet from its authors (http://mohammadmahoor.com/affectnet/) and unpack it so
  that manual_dir contains:
    {IMAGE_DIR}/<subDirectory_filePath>   e.g. {IMAGE_DIR}/689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg
    training.csv, validation.csv          columns {', '.join(COLUMNS)}
  """

  def _info(self) -> tfds.core.DatasetInfo:
    n = self.builder_config.num_classes
    return common.make_info(
      self,
      dataset_names.AFFECTNET_CLASSES[:n],
      f'AffectNet manually annotated images, expression codes 0..{n - 1}; '
      'file_name is subDirectory_filePath.',
      homepage='http://mohammadmahoor.com/affectnet/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    common.require_dir(root, 'the AffectNet manual_dir')
    image_dir = os.path.join(root, IMAGE_DIR)
    common.require_dir(image_dir, f'the AffectNet images ({IMAGE_DIR}/)')
    for name in CSV_FILES.values():
      common.require_file(os.path.join(root, name), f'the AffectNet annotation {name}')
    common.record_source(self, root)

    config = self.builder_config
    skips = images.SkipLog(f'{self.name}/{config.name}')
    dropped = collections.Counter()
    per_split = {}
    for split, csv_name in CSV_FILES.items():
      per_split[split] = list(
        self._read_csv(os.path.join(root, csv_name), csv_name, image_dir, split, skips, dropped)
      )
    self.info.metadata['dropped'] = dict(dropped)
    expected = EXPECTED_SIZES[config.num_classes]
    return {
      split: common.generate(self, split, cands, skips, expected[split])
      for split, cands in common.non_empty(self, per_split).items()
    }

  def _read_csv(self, path, csv_name, image_dir, split, skips, dropped):
    config = self.builder_config
    with open(path, newline='', encoding='utf-8', errors='replace') as f:
      rows = csv.reader(f)
      columns = list(COLUMNS)
      for line_no, row in enumerate(rows, 1):
        if not row:
          continue
        if line_no == 1 and row[0].strip() == 'subDirectory_filePath':
          columns = [c.strip() for c in row]
          missing = [c for c in ('subDirectory_filePath', 'expression') if c not in columns]
          if missing:
            raise ValueError(f'{path}: header lacks the columns {missing}; expected {COLUMNS}')
          continue
        where = f'{csv_name}:{line_no}'
        rec = dict(zip(columns, row))
        try:
          rel = rec['subDirectory_filePath'].strip()
          code = int(float(rec['expression']))
          box = None
          if config.crop_faces:
            box = tuple(float(rec[k]) for k in ('face_x', 'face_y', 'face_width', 'face_height'))
        except (KeyError, ValueError, OverflowError):  # int(float('inf')) overflows.
          skips.add(split, where, f'malformed annotation row {",".join(row)[:120]!r}')
          continue
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] in ('..', '.', ''):
          skips.add(split, where, f'{rel!r} is not a path inside {IMAGE_DIR}/')
          continue
        if not 0 <= code < config.num_classes:
          name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else 'unknown'
          dropped[f'{split} code {code} ({name})'] += 1
          continue
        yield common.Candidate(rel, os.path.join(image_dir, rel), code, box)
