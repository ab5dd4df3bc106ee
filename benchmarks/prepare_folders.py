"""Preparing a face-identity tree (`folders`, classes='auto'): time and peak memory.

  python -m benchmarks.prepare_folders                       # 200 identities x 25 images, and x 5
  python -m benchmarks.prepare_folders --classes=50 --per_class=4 --sizes=1   # a smoke run
  python -m benchmarks.prepare_folders --beam --beam_workers=2   # also with --beam, compared

Writes a generated tree in VGGFace2's layout (train/n000002/0001_01.jpg, JPEG quality 90, with
pixel noise so the files are not trivially small) and prepares it with the real command line,
`python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=auto`, in a subprocess
whose wall time and peak resident memory (`wait4`'s ru_maxrss) are what is reported. The same
classes are prepared with `per_class` images and with a fifth of them: when generation streams,
the peak memory of the two is about the same while the time follows the number of images.

With --beam each tree is prepared a second time with `--beam --beam_workers=N` (Beam's
DirectRunner, N worker processes), and the two are compared: every record as a parsed
tf.train.Example, in order across the shards of each split, and metadata.json. The peak RSS of a
Beam run is that of its largest process (ru_maxrss over the waited-for processes), not the sum.

Writes JSON (--out, default benchmarks/results/prepare_folders.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from zenfer_jax import atomic_write


def write_tree(root: str, classes: int, per_class: int, size: int, seed: int = 0) -> int:
  """train/ of `classes` identity folders with `per_class` images each; returns the image count."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    folder = os.path.join(root, 'train', f'n{2 + 3 * c:06d}')
    os.makedirs(folder, exist_ok=True)
    base = rng.integers(0, 256, size=3)
    for k in range(per_class):
      noise = rng.integers(-24, 25, size=(size, size, 3))
      img = np.clip(base + noise, 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(folder, f'{k + 1:04d}_01.jpg'), quality=90)
  return classes * per_class


def measure_prepare(manual_dir: str, data_dir: str, extra: tuple[str, ...] = ()) -> dict:
  """The prepare command line in a child process: wall seconds and peak RSS (MiB)."""
  cmd = [
    sys.executable,
    '-m',
    'zenfer_jax.data.prepare',
    '--dataset=folders',
    '--folders.classes=auto',
    f'--manual_dir={manual_dir}',
    f'--data_dir={data_dir}',
    *extra,
  ]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  output = proc.stdout.read().decode(errors='replace')
  proc.stdout.close()
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    raise RuntimeError(f'prepare failed with status {proc.returncode}:\n{output[-4000:]}')
  return {
    'seconds': round(seconds, 2),
    'peak_rss_mib': round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes.
    'summary': output.strip().splitlines()[-1],
  }


def records_equal(data_dirs: list[str]) -> dict:
  """Whether two preparations hold the same examples in the same order per split, and the same
  metadata. Records are compared parsed: serialized bytes of one example differ from process to
  process (protobuf's map order), so equal files cannot be asked for."""
  import tensorflow as tf

  found = []
  for data_dir in data_dirs:
    path = os.path.join(data_dir, 'folders', 'default', '1.0.0')
    with open(os.path.join(path, 'metadata.json')) as f:
      meta = json.load(f)
    splits = {}
    for split in meta['split_sizes']:
      shards = sorted(f for f in os.listdir(path) if f'-{split}.tfrecord-' in f)
      records = tf.data.TFRecordDataset([os.path.join(path, s) for s in shards])
      splits[split] = (
        len(shards),
        [tf.train.Example.FromString(r) for r in records.as_numpy_iterator()],
      )
    found.append((meta, splits))
  (meta_a, a), (meta_b, b) = found
  return {
    'metadata_equal': meta_a == meta_b,
    'records_equal': {s: a[s][1] == b.get(s, (0, None))[1] for s in a}
    if a.keys() == b.keys()
    else False,
    'examples': {s: len(a[s][1]) for s in a},
    'shards': [{s: n for s, (n, _) in x.items()} for x in (a, b)],
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.prepare_folders', description=__doc__)
  p.add_argument('--classes', type=int, default=200)
  p.add_argument('--per_class', type=int, default=25)
  p.add_argument('--image_size', type=int, default=112, help='square images of this side')
  p.add_argument(
    '--sizes',
    type=int,
    default=2,
    help='2: per_class and per_class // 5 images per class; 1: the first',
  )
  p.add_argument(
    '--beam', action='store_true', help='also prepare with --beam and compare the records'
  )
  p.add_argument('--beam_workers', type=int, default=2, help='DirectRunner worker processes')
  p.add_argument('--out', default=os.path.join('benchmarks', 'results', 'prepare_folders.json'))
  args = p.parse_args(argv)
  runs = []
  counts = [args.per_class, max(1, args.per_class // 5)][: args.sizes]
  with tempfile.TemporaryDirectory(prefix='prepare_folders.') as tmp:
    for per_class in counts:
      manual = os.path.join(tmp, f'tree_{per_class}')
      images = write_tree(manual, args.classes, per_class, args.image_size)
      tree_mib = (
        sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(manual) for f in fs) / 2**20
      )
      plain_dir = os.path.join(tmp, f'tfds_{per_class}')
      result = measure_prepare(manual, plain_dir)
      run = {
        'classes': args.classes,
        'images': images,
        'image_size': args.image_size,
        'tree_mib': round(tree_mib, 1),
        **result,
      }
      if args.beam:
        beam_dir = os.path.join(tmp, f'tfds_beam_{per_class}')
        flags = ('--beam', f'--beam_workers={args.beam_workers}')
        run['beam'] = {
          'flags': ' '.join(flags),
          **measure_prepare(manual, beam_dir, flags),
          **records_equal([plain_dir, beam_dir]),
        }
      print(json.dumps(run), flush=True)
      runs.append(run)
  record = {
    'command': 'python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=auto',
    'cpus': os.cpu_count(),
    'load_average': os.getloadavg(),
    'runs': runs,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  atomic_write.write_json(args.out, record)
  return 0


if __name__ == '__main__':
  sys.exit(main())
