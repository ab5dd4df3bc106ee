"""End-to-end training speed: the real `zenfer_jax.main` on a RAF-DB-sized dataset (not a test).

  python -m benchmarks.train_end_to_end --device gpu --out benchmarks/results/e2e_gpu.json
  python -m benchmarks.train_end_to_end --device cpu --quick --out benchmarks/results/e2e_cpu.json

Writes, once, a synthetic dataset of RAF-DB's real size in its official on-disk layout (12,271
train and 3,068 test 100x100 JPEGs, basic/EmoLabel/list_patition_label.txt and
basic/Image/aligned/) under --cache_dir, and prepares its records with the real builder (JAX's
persistent compilation cache lives there too, so runs of one model share their compiled steps:
warm-up shrinks, the sustained figures do not change). Then, for each model, augmentation placement
and dtype, runs `python -m zenfer_jax.main` with the RAF-DB config for a fixed number of steps: the
first --warmup steps (compilation, first steps) end at a blocking metrics fetch; the remaining
steps give the sustained images/s. Each run ends with a real evaluation of the whole test split and
a checkpoint at each epoch end. From WORKDIR/timing.json (zenfer_jax/training/loop_timing.py) it
reports

  images_per_second       sustained training rate after warm-up (evaluation excluded)
  input_wait_fraction     share of that training time the loop waited for its next batch
  step_seconds            training time per step after warm-up
  eval_seconds            the last evaluation of the test split (with 1 epoch, the first: its
                          compile included)
  checkpoint_seconds      the epoch-end checkpoint (plus the best-model save)
  epoch_seconds           a full RAF-DB epoch (12,271 images) at that rate + eval + checkpoint
  projected_400_epochs_hours

and, separately, each input path alone (no model): batches/s of the tf.data recipe on the
host, and of the device recipe (`augment_on='device'`) on the chosen device.

--quick: 112 px, batch 32, 2 + 4 steps, for a few-minute run on a small CPU; the projections
then describe that reduced setting (the table says so). Without --quick: the recipe's 224 px and
batch 64, 10 + 40 steps in 2 epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import logging
from PIL import Image

from benchmarks import report as report_lib
from zenfer_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAFDB_TRAIN, RAFDB_TEST = 12_271, 3_068
RECIPE_EPOCHS = 400
MODELS = {'ZenNet-M-SA': 'rafdb_m', 'ZenNet-R-SA': 'rafdb_r'}


def parse_args(argv: list[str] | None = None):
  p = cli.ArgumentParser(
    prog='python -m benchmarks.train_end_to_end', description=__doc__.split('\n')[0]
  )
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  p.add_argument('--quick', action='store_true', help='reduced size for a small CPU (see above)')
  p.add_argument('--out', required=True, help='JSON results; the markdown table goes beside it')
  p.add_argument(
    '--cache_dir',
    default=os.path.join(os.path.expanduser('~'), '.cache', 'zenfer_jax', 'rafdb_synthetic'),
    help='where the synthetic RAF-DB and its records are written once',
  )
  p.add_argument('--models', default=','.join(MODELS), help=f'comma-separated: {list(MODELS)}')
  p.add_argument('--augment_on', default='host,device', help='comma-separated: host, device')
  p.add_argument('--dtypes', default='float32', help='comma-separated: float32, bfloat16')
  p.add_argument('--image_size', type=int, default=None, help='default 224 (--quick: 112)')
  p.add_argument('--batch', type=int, default=None, help='global batch, default 64 (--quick: 32)')
  p.add_argument('--warmup', type=int, default=None, help='warm-up steps (default 10, quick 2)')
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 40, quick 4)')
  p.add_argument(
    '--epochs',
    type=int,
    default=None,
    help='the steps split into this many epochs, each ending in an evaluation and a checkpoint; '
    'from 2 on the last evaluation is a warm one (default 2, quick 1)',
  )
  p.add_argument('--input_batches', type=int, default=None, help='batches per input-only timing')
  p.add_argument('--timeout', type=int, default=1800, help='seconds per training run')
  return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# The dataset


def _face_like(rng: np.random.Generator) -> np.ndarray:
  """A smooth random 100x100 image with noise: JPEG sizes and decode cost like RAF-DB's."""
  coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(coarse).resize((100, 100), Image.BICUBIC), np.int16)
  return np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


def write_rafdb_layout(root: str, train: int = RAFDB_TRAIN, test: int = RAFDB_TEST) -> None:
  """RAF-DB's official layout and names (train_00001.jpg, test_0001.jpg; labels 1..7)."""
  rng = np.random.default_rng(0)
  img_dir = os.path.join(root, 'basic', 'Image', 'aligned')
  label_dir = os.path.join(root, 'basic', 'EmoLabel')
  os.makedirs(img_dir, exist_ok=True)
  os.makedirs(label_dir, exist_ok=True)
  lines = []
  for split, n, digits in (('train', train, 5), ('test', test, 4)):
    for i in range(1, n + 1):
      name = f'{split}_{i:0{digits}d}'
      Image.fromarray(_face_like(rng)).save(
        os.path.join(img_dir, f'{name}_aligned.jpg'), quality=90
      )
      lines.append(f'{name}.jpg {rng.integers(1, 8)}')
  with open(os.path.join(label_dir, 'list_patition_label.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def ensure_dataset(cache_dir: str) -> tuple[str, str]:
  """(manual_dir, data_dir), written and prepared on first use."""
  from zenfer_jax import data

  manual, records = os.path.join(cache_dir, 'manual'), os.path.join(cache_dir, 'tfds')
  done = os.path.join(manual, 'COMPLETE')
  if not os.path.exists(done):
    shutil.rmtree(manual, ignore_errors=True)
    start = time.perf_counter()
    write_rafdb_layout(manual)
    open(done, 'w').close()
    logging.info('Wrote the synthetic RAF-DB in %.0f s: %s', time.perf_counter() - start, manual)
  start = time.perf_counter()
  info = data.prepare_dataset('rafdb', records, manual_dir=manual)
  sizes = (info.split_sizes['train'], info.split_sizes['test'])
  if sizes != (RAFDB_TRAIN, RAFDB_TEST):
    raise RuntimeError(f'{records} holds {sizes} images, expected ({RAFDB_TRAIN}, {RAFDB_TEST}).')
  logging.info('Records ready in %.0f s: %s', time.perf_counter() - start, records)
  return manual, records


# --------------------------------------------------------------------------------------------
# Runs


def _environment(device: str, cache_dir: str) -> dict:
  env = dict(os.environ)
  # Runs of one model share their compiled steps (the host and device runs, reruns): a GPU
  # compiles the ZenNet-M-SA train step for about 50 s, the whole budget of a short lease.
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(cache_dir, 'xla_cache'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['JAX_PLATFORMS'] = 'cuda' if device == 'gpu' else 'cpu'
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  return env


def train_run(
  args,
  model: str,
  augment_on: str,
  dtype: str,
  manual: str,
  records: str,
  loader: str = 'tf.data',
  overrides: dict | None = None,
) -> dict:
  """One `zenfer_jax.main` run; the figures from its timing.json.

  `loader`: config.data.loader ('grain' reads ArrayRecord files and imports no TensorFlow:
  benchmarks.gpu_driver runs it so); `overrides`: further config overrides (a smoke run's tiny
  structure).
  """
  workdir = tempfile.mkdtemp(prefix='zenfer_e2e_')
  steps_per_epoch = -(-(args.warmup + args.steps) // args.epochs)
  steps = steps_per_epoch * args.epochs
  overrides = {
    'data.manual_dir': manual,
    'data.data_dir': records,
    'data.augment_on': augment_on,
    'data.image_size': args.image_size,
    'model.dtype': dtype,
    'batch_size': args.batch,
    'eval_batch_size': 256,
    'num_epochs': args.epochs,
    'warmup_epochs': 0,
    'steps_per_epoch': steps_per_epoch,
    'log_every_steps': args.warmup,
    'progress_bar': False,
    'compilation_cache_dir': '',  # The environment's cache (above), not the home directory's.
    'data.loader': loader,
    **(overrides or {}),
  }
  command = [
    sys.executable,
    '-m',
    'zenfer_jax.main',
    f'--config={os.path.join(REPO, "configs", MODELS[model] + ".py")}',
    f'--workdir={workdir}',
  ] + [f'--config.{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in overrides.items()]
  logging.info('%s, augment_on=%s, %s: %d steps ...', model, augment_on, dtype, steps)
  start = time.perf_counter()
  proc = subprocess.run(
    command,
    cwd=REPO,
    env=_environment(args.device, args.cache_dir),
    capture_output=True,
    text=True,
    timeout=args.timeout,
  )
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'training failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  with open(os.path.join(workdir, 'timing.json')) as f:
    timing = json.load(f)
  shutil.rmtree(workdir, ignore_errors=True)
  sustained = timing['sustained']
  warm = timing['warmup']
  step_seconds = sustained['train_seconds'] / sustained['steps']
  eval_seconds = timing['last_seconds']['eval']
  checkpoint_seconds = timing['end']['checkpoint_seconds'] / max(timing['counts']['checkpoint'], 1)
  steps_per_epoch = RAFDB_TRAIN // args.batch
  epoch = steps_per_epoch * step_seconds + eval_seconds + checkpoint_seconds
  return {
    'model': model,
    'loader': loader,
    'augment_on': augment_on,
    'dtype': dtype,
    'image_size': args.image_size,
    'batch': args.batch,
    'images_per_second': sustained['images_per_second'],
    'input_wait_fraction': sustained['input_wait_fraction'],
    'step_seconds': step_seconds,
    'eval_seconds': eval_seconds,
    'eval_includes_compile': timing['counts']['eval'] == 1,
    'checkpoint_seconds': checkpoint_seconds,
    'warmup_steps': warm['step'],
    'warmup_seconds': warm['seconds'],
    'timed_steps': sustained['steps'],
    'epoch_seconds': epoch,
    'epoch_breakdown': {
      'input_wait': steps_per_epoch * step_seconds * sustained['input_wait_fraction'],
      'step': steps_per_epoch * step_seconds * (1 - sustained['input_wait_fraction']),
      'eval': eval_seconds,
      'checkpoint': checkpoint_seconds,
    },
    'projected_400_epochs_hours': RECIPE_EPOCHS * epoch / 3600,
    'process_wall_seconds': wall,
  }


# argv: records, 'host' | 'device' | 'grain', image size, batch, batches. Each loader is imported
# only when asked for: 'grain' must run where TensorFlow is not installed.
INPUT_ONLY_SCRIPT = r"""
import json, sys, time
import jax
from zenfer_jax.data.spec import DataSpec
records, on, size, batch, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if on == 'grain':
  from zenfer_jax.data.grain_pipeline import train_batches as make
elif on == 'device':
  from zenfer_jax.data.device_pipeline import train_batches as make
else:
  from zenfer_jax.data.pipeline import train_dataset as make
it = make(DataSpec('rafdb', records, image_size=size, per_device_batch=batch))
start = time.perf_counter()
jax.block_until_ready(next(it))
first = time.perf_counter() - start
start = time.perf_counter()
for _ in range(n):
  b = next(it)
jax.block_until_ready(b)
seconds = time.perf_counter() - start
print(json.dumps({'augment_on': 'device' if on == 'grain' else on,
                  'loader': 'grain' if on == 'grain' else 'tf.data', 'first_batch_seconds': first,
                  'batch_seconds': seconds / n, 'images_per_second': n * batch / seconds}))
"""


def input_only(args, augment_on: str, records: str) -> dict:
  """The input path alone, in a fresh process on the chosen device: no model, no training."""
  proc = subprocess.run(
    [sys.executable, '-c', INPUT_ONLY_SCRIPT, records, augment_on]
    + [str(v) for v in (args.image_size, args.batch, args.input_batches)],
    cwd=REPO,
    env=_environment(args.device, args.cache_dir),
    capture_output=True,
    text=True,
    timeout=args.timeout,
  )
  if proc.returncode != 0:
    raise RuntimeError(f'input timing failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out.update(image_size=args.image_size, batch=args.batch)
  return out


# --------------------------------------------------------------------------------------------
# Report


def markdown(result: dict) -> str:
  env = result['environment']
  lines = [
    f'End-to-end training on {env["device_description"]} '
    f'({env["image_size"]} px, global batch {env["batch"]}; '
    f'{env["warmup_steps"]} warm-up + {env["timed_steps"]} timed steps in {env["epochs"]} '
    'epoch(s), each ending with an evaluation of the 3,068 test images and a checkpoint; '
    f'load average {env["load_average_before"]} '
    f'before, {env["load_average_after"]} after).',
    '',
    '| model | augmentation | dtype | images/s | input wait | step (s) | eval (s) | '
    'checkpoint (s) | epoch (s) | 400 epochs (h) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for r in result['runs']:
    lines.append(
      f'| {r["model"]} | {r["augment_on"]} | {r["dtype"]} | {r["images_per_second"]:.1f} | '
      f'{100 * r["input_wait_fraction"]:.1f}% | {r["step_seconds"]:.2f} | '
      f'{r["eval_seconds"]:.1f} | {r["checkpoint_seconds"]:.2f} | {r["epoch_seconds"]:.0f} | '
      f'{r["projected_400_epochs_hours"]:.1f} |'
    )
  if result.get('input_only'):
    lines += ['', '| input path alone | images/s | per batch (s) | first batch (s) |']
    lines.append('| --- | --- | --- | --- |')
    for r in result['input_only']:
      where = 'tf.data on the host' if r['augment_on'] == 'host' else 'on the device'
      lines.append(
        f'| {where} | {r["images_per_second"]:.1f} | {r["batch_seconds"]:.3f} | '
        f'{r["first_batch_seconds"]:.1f} |'
      )
  lines += [
    '',
    'images/s: sustained after warm-up, evaluation excluded; input wait: share of that time the '
    'loop waited for a batch; epoch: 12,271 images (RAF-DB) at that rate plus the last '
    'evaluation (with 1 epoch: the first, its compile included) and one checkpoint; 400 epochs: '
    '400 such epochs.',
  ]
  return '\n'.join(lines) + '\n'


def _load() -> str:
  return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  quick = args.quick
  args.image_size = args.image_size or (112 if quick else 224)
  args.batch = args.batch or (32 if quick else 64)
  args.warmup = args.warmup or (2 if quick else 10)
  args.steps = args.steps or (4 if quick else 40)
  args.input_batches = args.input_batches or (3 if quick else 20)
  args.epochs = args.epochs or (1 if quick else 2)
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  args.cache_dir = os.path.expanduser(args.cache_dir)
  manual, records = ensure_dataset(args.cache_dir)
  result = {
    'environment': {
      'command': 'python -m benchmarks.train_end_to_end ' + ' '.join(argv or sys.argv[1:]),
      'device': args.device,
      'device_description': _describe(args.device),
      'cpu_count': os.cpu_count(),
      'load_average_before': _load(),
      'image_size': args.image_size,
      'batch': args.batch,
      'warmup_steps': args.warmup,
      'timed_steps': args.steps,
      'epochs': args.epochs,
      'date': time.strftime('%Y-%m-%d %H:%M'),
    },
    'runs': [],
    'input_only': [],
  }

  def write():
    result['environment']['load_average_after'] = _load()
    report_lib.write_with_table(args.out, result, markdown(result))

  places = [p for p in args.augment_on.split(',') if p]
  for place in places:
    result['input_only'].append(input_only(args, place, records))
    write()
  for model in [m for m in args.models.split(',') if m]:
    for dtype in [d for d in args.dtypes.split(',') if d]:
      for place in places:
        result['runs'].append(train_run(args, model, place, dtype, manual, records))
        write()
  print(markdown(result))
  return 0


def _describe(device: str) -> str:
  if device == 'gpu':
    try:
      out = subprocess.run(
        ['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'], capture_output=True, text=True
      )
      return f'one {out.stdout.strip().splitlines()[0]}'
    except (OSError, IndexError):
      return 'a GPU'
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return f'the CPU ({cores} cores)'


if __name__ == '__main__':
  sys.exit(main())
