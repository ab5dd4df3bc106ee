"""Class-per-folder trees (`<root>/<split>/<class>/*.jpg|png`), the original repository's layout.

The class order is given explicitly (config `classes`), so label index <-> name never depends on
how a file system sorts. The class list is recorded in the prepared dataset; `zenfer_jax.data`
refuses to reuse it with a different list.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from zenfer_jax.data import images
from zenfer_jax.data.builders import common


@dataclasses.dataclass(eq=False)
class FoldersConfig(tfds.core.BuilderConfig):
  classes: tuple[str, ...] = ()


class Folders(common.ImageBuilder):
  """One split per sub-directory of manual_dir, one class per sub-sub-directory."""

  name = 'folders'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point manual_dir at a tree <manual_dir>/<split>/<class>/<image>.jpg|.png (for example
  train/happy/0001.jpg, test/happy/0100.jpg) and give the class order explicitly
  (FoldersConfig(name='default', classes=(...)) or --folders.classes=a,b,c).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    classes = self.builder_config.classes
    if not classes:
      raise ValueError(
        'The folders dataset needs its class list, in label order '
        '(FoldersConfig.classes / --folders.classes=a,b,c).'
      )
    if len(set(classes)) != len(classes):
      raise ValueError(f'Duplicate names in the folders class list {list(classes)}.')
    return common.make_info(
      self, classes, 'Images from a <split>/<class>/ tree; file_name is <class>/<file>.'
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    common.require_dir(root, 'the class-folder root (<root>/<split>/<class>/*.jpg)')
    common.record_source(self, root)
    classes = list(self.builder_config.classes)
    splits = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not splits:
      raise FileNotFoundError(
        f'Expected split folders such as train/ and test/ in {root!r}, found none.'
      )
    skips = images.SkipLog(self.name)
    per_split = {}
    for split in splits:
      split_dir = os.path.join(root, split)
      found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
      unknown = [d for d in found if d not in classes]
      if unknown:
        raise ValueError(
          f'Unknown class folder(s) {unknown} in {split_dir!r}; the class list is {classes}.'
        )
      cands = []
      for label, cls in enumerate(classes):
        cls_dir = os.path.join(split_dir, cls)
        if not os.path.isdir(cls_dir):
          continue
        for fname in sorted(os.listdir(cls_dir)):
          rel = f'{cls}/{fname}'
          path = os.path.join(cls_dir, fname)
          if os.path.isdir(path):
            skips.add(split, rel, 'a directory inside a class folder')
          elif not fname.lower().endswith(images.IMAGE_SUFFIXES):
            skips.add(split, rel, f'not an image file (expected {"/".join(images.IMAGE_SUFFIXES)})')
          else:
            cands.append(common.Candidate(rel, path, label))
      per_split[split] = cands
    return {
      split: common.generate(self, split, cands, skips)
      for split, cands in common.non_empty(self, per_split).items()
    }
