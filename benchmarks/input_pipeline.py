"""Input-pipeline throughput of the full RAF-DB train recipe (not a test).

  python -m benchmarks.input_pipeline                       # synthetic RAF-DB-layout images
  python -m benchmarks.input_pipeline --data_dir=~/tfds     # an already prepared real RAF-DB
  python -m benchmarks.input_pipeline --threads=1           # one core: the per-core figure

Without --data_dir it writes --num_images synthetic 100x100 JPEGs (smooth random faces-sized
images, about the size of RAF-DB's aligned files) in the official layout, prepares them with the
real builder, then times the train pipeline: decode, bicubic resize to 299, RandomResizedCrop 224,
flip, AutoAugment ImageNet, PCA lighting, normalisation, random erasing, batching. Prints
images/s and images/s per CPU core available to the process.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

import numpy as np
from absl import logging
from PIL import Image

from zenfer_jax import cli


def parse_args(argv: list[str] | None = None):
  p = cli.ArgumentParser(
    prog='python -m benchmarks.input_pipeline', description=__doc__.split('\n')[0]
  )
  p.add_argument('--data_dir', default=None, help='a prepared RAF-DB (default: synthetic images)')
  p.add_argument('--num_images', type=int, default=2048, help='synthetic images to write')
  p.add_argument('--image_size', type=int, default=224, help='training resolution')
  p.add_argument('--batch', type=int, default=64, help='per-device batch (one device)')
  p.add_argument('--steps', type=int, default=30, help='timed batches')
  p.add_argument(
    '--warmup', type=int, default=5, help='untimed batches first (tracing, buffers, autotune)'
  )
  p.add_argument(
    '--threads',
    type=int,
    default=0,
    help='if > 0: tf.data private thread pool of this size and single-threaded ops, so that '
    'images/s divided by threads is a clean per-core figure; 0: TensorFlow defaults',
  )
  return p.parse_args(argv)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


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


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from zenfer_jax import data  # Late: TensorFlow starts after the logging set-up.

  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  tfds.disable_progress_bar()

  data_dir = args.data_dir
  if data_dir is None:
    tmp = tempfile.mkdtemp(prefix='zenfer_bench_')
    manual = os.path.join(tmp, 'manual')
    write_synthetic_rafdb(manual, args.num_images)
    data_dir = os.path.join(tmp, 'tfds')
    logging.info('Preparing %d synthetic RAF-DB images in %s', args.num_images, tmp)
    data.prepare_dataset('rafdb', data_dir, manual_dir=manual)
  ds = data.pipeline.train_tf_dataset(
    data.pipeline.DataSpec(
      'rafdb', data_dir, image_size=args.image_size, per_device_batch=args.batch, recipe='rafdb'
    )
  )
  if args.threads:
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = args.threads
    opts.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(opts)
  ds = iter(tfds.as_numpy(ds))
  for _ in range(args.warmup):
    next(ds)
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  for _ in range(args.steps):
    batch = next(ds)
  elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
  assert batch['image'].shape == (1, args.batch, args.image_size, args.image_size, 3)
  cores = args.threads or (
    len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  )
  images = args.steps * args.batch
  rate = images / elapsed
  print(
    f'RAF-DB train recipe at {args.image_size}: {rate:.1f} images/s on {cores} cores '
    f'= {rate / cores:.1f} images/s per core (wall clock; {args.steps} batches of '
    f'{args.batch} in {elapsed:.1f} s)'
  )
  # CPU seconds the process actually got: the per-core figure that stays honest on a busy machine.
  print(
    f'  {images / cpu:.1f} images per CPU-second ({cpu:.1f} CPU-s, '
    f'{cpu / elapsed:.2f} cores busy on average)'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
