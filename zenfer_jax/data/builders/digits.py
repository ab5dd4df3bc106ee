"""scikit-learn's bundled handwritten digits as a tiny, always-available RGB image dataset.

1,797 real 8x8 images in 10 classes, shipped inside scikit-learn, so `make demo` and end-to-end
tests need no download. Fixed split: example i (in load_digits order) is in `test` when
i % 5 == 0 (360 images) and in `train` otherwise (1,437 images). Grey levels 0..16 are scaled
to 0..255 and repeated over three channels; images are stored as lossless PNG.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from zenfer_jax import dataset_names
from zenfer_jax.data.builders import common

SPLIT_SIZES = {'train': 1_437, 'test': 360}


def split_of(index: int) -> str:
  return 'test' if index % 5 == 0 else 'train'


def digit_images() -> tuple[np.ndarray, np.ndarray]:
  """Returns (uint8 [1797, 8, 8, 3] images, int labels) in load_digits order."""
  from sklearn.datasets import load_digits  # Imported late: sklearn is slow to import.

  digits = load_digits()
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1), digits.target.astype(np.int64)


class Digits(common.ImageBuilder):
  """Handwritten digits 0-9, 8x8 RGB."""

  name = 'digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return common.make_info(
      self,
      dataset_names.DIGITS_CLASSES,
      __doc__,
      homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    imgs, labels = digit_images()
    return {split: self._generate(split, imgs, labels) for split in SPLIT_SIZES}

  def _generate(self, split, imgs, labels):
    idx = [i for i in range(len(labels)) if split_of(i) == split]
    idx.sort(key=lambda i: (labels[i], i))
    counts = np.zeros(10, np.int64)
    for i in idx:
      buf = io.BytesIO()
      Image.fromarray(imgs[i]).save(buf, format='PNG')
      counts[labels[i]] += 1
      name = f'digit_{i:04d}'
      yield name, {'image': buf.getvalue(), 'label': int(labels[i]), 'file_name': name}
    ends = np.cumsum(counts)
    meta = self.info.metadata
    meta['class_ranges'][split] = [[int(e - c), int(e)] for c, e in zip(counts, ends)]
    meta['split_sizes'][split] = int(ends[-1])
