"""Input-pipeline throughput of the full RAF-DB train recipe (not a test).

  python -m benchmarks.input_pipeline                       # synthetic RAF-DB-layout images
  python -m benchmarks.input_pipeline --data_dir=~/tfds     # an already prepared real RAF-DB

Without --data_dir it writes --num_images synthetic 100x100 JPEGs (smooth random faces-sized
images, about the size of RAF-DB's aligned files) in the official layout, prepares them with the
real builder, then times the train pipeline: decode, bicubic resize to 299, RandomResizedCrop 224,
flip, AutoAugment ImageNet, PCA lighting, normalisation, random erasing, batching. Prints
images/s and images/s per CPU core available to the process.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'A prepared RAF-DB; default: synthetic.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 2048, 'Synthetic images to write.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Training resolution.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Per-device batch (one device).')
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed batches.')
_WARMUP = flags.DEFINE_integer('warmup', 5, 'Untimed batches first (tracing, buffers, autotune).')


def write_synthetic_rafdb(root: str, n: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  img_dir = os.path.join(root, 'basic', 'Image', 'aligned')
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(os.path.join(root, 'basic', 'EmoLabel'), exist_ok=True)
  lines = []
  for i in range(1, n + 1):
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((100, 100), Image.BICUBIC), np.int16)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    split = 'test' if i % 8 == 0 else 'train'  # Both splits, as in the real layout.
    Image.fromarray(img).save(os.path.join(img_dir, f'{split}_{i:05d}_aligned.jpg'), quality=90)
    lines.append(f'{split}_{i:05d}.jpg {rng.integers(1, 8)}')
  with open(os.path.join(root, 'basic', 'EmoLabel', 'list_patition_label.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv: list[str]) -> None:
  del argv
  from zenfer_jax import data  # Late: flags first, TF start-up after.
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()

  data_dir = _DATA_DIR.value
  if data_dir is None:
    tmp = tempfile.mkdtemp(prefix='zenfer_bench_')
    manual = os.path.join(tmp, 'manual')
    write_synthetic_rafdb(manual, _NUM_IMAGES.value)
    data_dir = os.path.join(tmp, 'tfds')
    data.prepare('rafdb', data_dir, manual_dir=manual)
  ds = data.pipeline.train_dataset(
      'rafdb', data_dir, image_size=_IMAGE_SIZE.value, per_device_batch=_BATCH.value,
      num_local_devices=1, seed=0, recipe='rafdb')
  for _ in range(_WARMUP.value):
    next(ds)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    batch = next(ds)
  elapsed = time.perf_counter() - start
  assert batch['image'].shape == (1, _BATCH.value, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  rate = _STEPS.value * _BATCH.value / elapsed
  print(f'RAF-DB train recipe at {_IMAGE_SIZE.value}: {rate:.1f} images/s on {cores} cores '
        f'= {rate / cores:.1f} images/s per core ({_STEPS.value} batches of {_BATCH.value}, '
        f'{elapsed:.1f} s)')


if __name__ == '__main__':
  app.run(main)
