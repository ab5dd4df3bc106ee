"""RAF-DB basic (7 expressions) from its official manual-download layout."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from zenfer_jax import dataset_names
from zenfer_jax.data import images
from zenfer_jax.data.builders import common

LABEL_FILE = os.path.join('basic', 'EmoLabel', 'list_patition_label.txt')  # sic: the official name
IMAGE_DIR = os.path.join('basic', 'Image', 'aligned')
EXPECTED_SIZES = {'train': 12_271, 'test': 3_068}
_LABELS = ('1', '2', '3', '4', '5', '6', '7')


class Rafdb(common.ImageBuilder):
  """RAF-DB basic: aligned 100x100 faces, labels 1..7 stored as 0..6, split by file prefix."""

  name = 'rafdb'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Request RAF-DB from its authors (http://www.whdeng.cn/raf/model1.html) and unpack it so that
  manual_dir contains:
    {LABEL_FILE}   lines like "train_00001.jpg 5" (labels 1..7)
    {IMAGE_DIR}/train_00001_aligned.jpg ...
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return common.make_info(
      self,
      dataset_names.RAFDB_CLASSES,
      'RAF-DB basic expression set; labels 1..7 (surprise, fear, disgust, happiness, sadness, '
      'anger, neutral) become 0..6; file_name is the name in list_patition_label.txt.',
      homepage='http://www.whdeng.cn/raf/model1.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    common.require_dir(root, 'the RAF-DB manual_dir')
    label_path = os.path.join(root, LABEL_FILE)
    common.require_file(
      label_path, 'the RAF-DB label list (basic/EmoLabel/list_patition_label.txt)'
    )
    image_dir = os.path.join(root, IMAGE_DIR)
    common.require_dir(image_dir, 'the RAF-DB aligned images (basic/Image/aligned/)')
    common.record_source(self, root)

    skips = images.SkipLog(self.name)
    per_split = {'train': [], 'test': []}
    with open(label_path, encoding='utf-8', errors='replace') as f:
      for line_no, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        where = f'{LABEL_FILE}:{line_no}'
        # Only the ASCII digits 1-7: str.isdigit() also accepts '²', which int() refuses.
        if len(fields) != 2 or fields[1] not in _LABELS:
          skips.add(
            'labels', where, f'malformed label line {line.strip()!r}, expected "<name>.jpg <1..7>"'
          )
          continue
        file_name, label = fields[0], int(fields[1]) - 1
        if os.path.basename(file_name) != file_name or file_name in ('.', '..'):
          skips.add('labels', where, f'{file_name!r} is not a plain file name')
          continue
        split = file_name.split('_', 1)[0]
        if split not in per_split:
          skips.add('labels', where, f'{file_name}: prefix {split!r} is neither train_ nor test_')
          continue
        stem = os.path.splitext(file_name)[0]
        path = os.path.join(image_dir, f'{stem}_aligned.jpg')
        per_split[split].append(common.Candidate(file_name, path, label))
    return {
      split: common.generate(self, split, cands, skips, EXPECTED_SIZES[split])
      for split, cands in common.non_empty(self, per_split).items()
    }
