"""Class-per-folder trees (`<root>/<split>/<class>/*.jpg|png`), the original repository's layout.

The class order is either given explicitly (config `classes`), so label index <-> name never
depends on how a file system sorts, or `classes='auto'`: the sorted names of the train split's
sub-folders (Python string order, as torchvision's ImageFolder sorts them). That is the way to
take a face-identity dataset with thousands of classes, e.g. VGGFace2 as distributed:

    <root>/train/n000002/0001_01.jpg     8,631 identities, 3.1M images
    <root>/test/n000001/0001_01.jpg      500 other identities

With 'auto', a class folder of another split that the train split lacks (all of VGGFace2's test
identities) cannot be labelled: it is left out and counted in the preparation report, and a
split left with nothing is not written. Either way the class list is recorded with the records
(metadata.json `classes`, `classes_from`); `zenfer_jax.data` refuses to reuse them with a
different explicit list.

Generation streams: one class folder is listed at a time, in label order, and its images are
read and written before the next is listed, so memory does not grow with the number of images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging

from zenfer_jax.data import images
from zenfer_jax.data.builders import common
from zenfer_jax.dataset_names import class_summary

AUTO = 'auto'
TRAIN = 'train'


@dataclasses.dataclass(eq=False, repr=False)
class FoldersConfig(tfds.core.BuilderConfig):
  classes: tuple[str, ...] = ()
  # The classes were read from the train split's folders (classes='auto'): folders of other
  # splits outside them are left out and reported instead of being an error.
  auto_classes: bool = False

  def __repr__(self) -> str:
    # TFDS logs the config each time a builder is made: not 8,631 identities each time.
    return (
      f'FoldersConfig(name={self.name!r}, {len(self.classes)} classes '
      f'{class_summary(self.classes, limit=6)}, auto_classes={self.auto_classes})'
    )


def _subdirs(path: str) -> list[str]:
  with os.scandir(path) as entries:
    return sorted(e.name for e in entries if e.is_dir())


def auto_classes(root: str) -> list[str]:
  """The sorted sub-folder names of `<root>/train`: the class list of classes='auto'."""
  train = os.path.join(os.fspath(root), TRAIN)
  if not os.path.isdir(train):
    raise FileNotFoundError(
      f"classes='auto' takes the class names from the sub-folders of {train!r}, which does "
      'not exist; expected <root>/train/<class>/<image>.jpg (or name the classes).'
    )
  names = _subdirs(train)
  if len(names) < 2:
    raise ValueError(
      f"classes='auto' found {len(names)} class folder(s) in {train!r} ({names}); expected at "
      'least two sub-folders, one per class.'
    )
  return names


def _has_image(split_dir: str, labels: list[tuple[int, str]]) -> bool:
  """Whether any class folder holds an image file name; stops at the first (TFDS cannot write
  an empty split, and the generators run too late to leave one out)."""
  for _, cls in labels:
    with os.scandir(os.path.join(split_dir, cls)) as entries:
      if any(e.name.lower().endswith(images.IMAGE_SUFFIXES) for e in entries):
        return True
  return False


class Folders(common.ImageBuilder):
  """One split per sub-directory of manual_dir, one class per sub-sub-directory."""

  name = 'folders'
  # With a Beam runner each class folder is one element, listed and read on a worker.
  SUPPORTS_BEAM = True
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point manual_dir at a tree <manual_dir>/<split>/<class>/<image>.jpg|.png (for example
  train/happy/0001.jpg, test/happy/0100.jpg) and give the class order explicitly
  (FoldersConfig(name='default', classes=(...)) or --folders.classes=a,b,c), or
  --folders.classes=auto for the sorted sub-folders of train/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    classes = self.builder_config.classes
    if not classes:
      raise ValueError(
        'The folders dataset needs its class list, in label order '
        '(FoldersConfig.classes / --folders.classes=a,b,c, or auto).'
      )
    if len(set(classes)) != len(classes):
      raise ValueError(f'Duplicate names in the folders class list {list(classes)}.')
    info = common.make_info(
      self, classes, 'Images from a <split>/<class>/ tree; file_name is <class>/<file>.'
    )
    info.metadata['classes_from'] = (
      'auto: the sorted sub-folders of train/' if self.builder_config.auto_classes else 'given'
    )
    return info

  def _process_pipeline_result(self, pipeline_result) -> None:
    # After the Beam pipeline has run, before TFDS saves the metadata: the per-split counts and
    # skips the workers wrote beside the records go into it as the plain path puts them.
    from zenfer_jax.data.builders import beam_split  # Here: Beam only on the Beam path.

    beam_split.collect_reports(self, self._beam_reports)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    common.require_dir(root, 'the class-folder root (<root>/<split>/<class>/*.jpg)')
    common.record_source(self, root)
    classes = list(self.builder_config.classes)
    known = set(classes)
    splits = _subdirs(root)
    if not splits:
      raise FileNotFoundError(
        f'Expected split folders such as train/ and test/ in {root!r}, found none.'
      )
    skips = images.SkipLog(self.name)
    present = {}
    for split in splits:
      split_dir = os.path.join(root, split)
      found = _subdirs(split_dir)
      unknown = [d for d in found if d not in known]
      if unknown and not self.builder_config.auto_classes:
        raise ValueError(
          f'Unknown class folder(s) {unknown} in {split_dir!r}; the class list is {classes}.'
        )
      if unknown:
        shown = ', '.join(unknown[:5]) + (
          f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''
        )
        reason = f"{split}: class folders not among train/'s classes (classes=auto)"
        self.info.metadata['dropped'][reason] = len(unknown)
        logging.warning(
          '%s: %s/ has %d class folder(s) that train/ lacks (%s): left out, they cannot be '
          'labelled with the classes of train/.',
          self.name,
          split,
          len(unknown),
          shown,
        )
      found_set = set(found)
      labels = [(label, cls) for label, cls in enumerate(classes) if cls in found_set]
      if labels and _has_image(os.path.join(root, split), labels):
        present[split] = labels
      else:
        logging.warning(
          '%s: no class folder of the class list in %s/; it is left out.', self.name, split
        )
    if not present:
      raise ValueError(f'{self.name}: no split of {root!r} holds a folder of the class list.')
    if self._uses_beam:
      from zenfer_jax.data.builders import beam_split  # Here: Beam only on the Beam path.

      return {
        split: beam_split.grouped_split(
          self, split, labels, functools.partial(_read_class_folder, root, split)
        )
        for split, labels in present.items()
      }
    return {
      split: common.generate(
        self, split, self._candidates(root, split, labels, skips), skips, grouped=True
      )
      for split, labels in present.items()
    }

  @staticmethod
  def _candidates(
    root: str, split: str, labels: list[tuple[int, str]], skips: images.SkipLog
  ) -> Iterator[common.Candidate]:
    """One class folder listed at a time, in label order; names sorted within the folder."""
    for label, cls in labels:
      cls_dir = os.path.join(root, split, cls)
      with os.scandir(cls_dir) as entries:
        listing = sorted((e.name, e.is_dir()) for e in entries)
      for fname, is_dir in listing:
        rel = f'{cls}/{fname}'
        if is_dir:
          skips.add(split, rel, 'a directory inside a class folder')
        elif not fname.lower().endswith(images.IMAGE_SUFFIXES):
          skips.add(split, rel, f'not an image file (expected {"/".join(images.IMAGE_SUFFIXES)})')
        else:
          yield common.Candidate(rel, os.path.join(cls_dir, fname), label)


def _read_class_folder(
  root: str, split: str, group: tuple[int, str], skips: images.SkipLog
) -> Iterator[dict]:
  """A Beam worker's share: one class folder's examples, listed and read as the plain path
  reads them (same order, same skips)."""
  candidates = Folders._candidates(root, split, [group], skips)
  return common.read_examples(common.in_order(candidates, split, skips), split, skips)
