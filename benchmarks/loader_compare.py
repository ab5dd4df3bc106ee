"""tf.data against Grain, end to end: the real `zenfer_jax.main` on FER2013 with each loader.

  python -m zenfer_jax.data.prepare --dataset=fer2013 --manual_dir=/data/fer2013 \
      --data_dir=runs/tfds_ar --file_format=both
  python -m benchmarks.loader_compare --data_dir=runs/tfds_ar --steps=300 \
      --out benchmarks/results/loaders_fer2013_cpu.json

Both loaders read one data_dir (TFRecord for tf.data, the ArrayRecord copy for Grain). Each
variant trains configs/fer2013_r.py (48 px, batch 64; by default with the demo's small ZenNet,
--structure=zennet_r for the config's ZenNet-R-SA) for --steps steps in one epoch
with an evaluation of PublicTest at its end, in a fresh process and workdir:

  tf.data_host    tf.data, augmentation on the CPU in tf.data (the default)
  tf.data_device  tf.data, augmentation as JAX ops (`augment_on='device'`; FER2013 is resident)
  grain           Grain over ArrayRecord, augmentation as JAX ops, TensorFlow never imported

--recipe picks the train recipe: 'rafdb' by default (the results in docs/grain.md were measured
with it, before the device chain had FER2013's rotation), 'fer2013' for the config's own.
Reported per variant:

  start_to_first_log_s    process start to its first log line (imports, JAX started)
  start_to_loop_s         ... to the training loop's start (data, model and state ready)
  start_to_first_step_s   ... to the end of the first training step (its compile included)
                          (all three from the log's line stamps)
  wall_s                  process start to exit (evaluation and checkpoint included)
  end_to_end_images_per_second   steps x batch / wall_s
  images_per_second       sustained training rate after the first step (zenfer_jax.loop_timing)
  input_wait_fraction     share of that training time the loop waited for its next batch
  loadavg_1min            the machine's load when the variant started (other work included)

--demo trains configs/demo.py (digits, 30 epochs) to the end with each of --variants for each of
--seeds, and reports the best and final test top-1 of each run: tf.data's host augmentation and
the device chain (Grain's, and tf.data's with augment_on=device: the same batches, bit for bit)
draw different, equally distributed augmentations, so accuracies should agree within the spread
over seeds.

  python -m benchmarks.loader_compare --demo --data_dir=runs/tfds_digits --seeds=0,1,2 \
      --out benchmarks/results/loaders_demo_accuracy.json

On a loaded 2-core machine the full demo takes hours per run; --set shrinks it (the tiny model of
the tests at 16 px, 10 epochs: a few minutes per run):

  python -m benchmarks.loader_compare --demo --data_dir=runs/tfds_digits --seeds=0,1,2 \
      --set data.image_size=16 --set num_epochs=10 \
      --set "model.structure=SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)" \
      --out benchmarks/results/loaders_demo_accuracy.json
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from zenfer_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
  'tf.data_host': {'data.loader': 'tf.data', 'data.augment_on': 'host'},
  'tf.data_device': {'data.loader': 'tf.data', 'data.augment_on': 'device'},
  'grain': {'data.loader': 'grain'},
}
DEMO_STRUCTURE = (
  'SuperConvK3BNRELU(3,16,1,1)SuperResK1K3K1(16,32,2,16,1)'
  'SuperResK1K3K1(32,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)'
)


def parse_args(argv=None):
  p = cli.ArgumentParser(
    prog='python -m benchmarks.loader_compare', description=__doc__.split('\n')[0]
  )
  p.add_argument('--data_dir', required=True, help='FER2013 prepared with --file_format=both')
  p.add_argument('--steps', type=cli.positive_int, default=300)
  p.add_argument(
    '--structure',
    default=DEMO_STRUCTURE,
    help="the model (a structure or preset): by default the demo's small ZenNet, so that the "
    "input's cost shows; 'zennet_r' for the config's own model",
  )
  p.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated, in run order')
  p.add_argument('--recipe', default='rafdb', help="the train recipe ('fer2013': the config's own)")
  p.add_argument('--out', required=True, help='JSON file to write')
  p.add_argument('--demo', action='store_true', help='accuracy on the demo instead (see above)')
  p.add_argument('--seeds', default='0,1,2', help='with --demo: comma-separated seeds')
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='with --demo: a config override for every run (repeatable), e.g. num_epochs=10',
  )
  return p.parse_args(argv)


_STAMP = re.compile(r'^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) ')
# What each phase ends with in WORKDIR/log.txt: the first line (imports done, JAX up), the
# hyperparameters (data, model and state ready: the loop starts), the first step's metrics.
PHASES = {
  'start_to_first_log_s': re.compile(r'.'),
  'start_to_loop_s': re.compile(r'\[Hyperparameters\]'),
  'start_to_first_step_s': re.compile(r'\] \[1\] .*train/loss'),
}


def phase_times(log_path: str, start: float) -> dict[str, float | None]:
  """Wall seconds from `start` (the process's start) to the end of each of `PHASES`, from the
  log's line stamps (absl's, local time)."""
  out = dict.fromkeys(PHASES)
  day = datetime.datetime.fromtimestamp(start)
  with open(log_path) as f:
    for line in f:
      m = _STAMP.match(line)
      if not m:
        continue
      for name, pattern in PHASES.items():
        if out[name] is None and pattern.search(line):
          stamp = datetime.datetime.strptime(f'{day.year}{m[1]} {m[2]}', '%Y%m%d %H:%M:%S.%f')
          out[name] = stamp.timestamp() - start
  return out


def run_demo(loader: str, data_dir: str, seed: int, workdir: str, overrides=()) -> dict:
  """configs/demo.py trained to the end with `loader`; its summary and last evaluation."""
  cmd = [
    sys.executable,
    '-m',
    'zenfer_jax.main',
    f'--config={os.path.join(REPO, "configs", "demo.py")}',
    f'--workdir={workdir}',
    f'--config.data.data_dir={os.path.abspath(data_dir)}',
    *[f'--config.{k}={v}' for k, v in VARIANTS[loader].items()],
    f'--config.seed={seed}',
    '--config.progress_bar=false',
    *[f'--config.{o}' for o in overrides],
  ]
  start = time.time()
  proc = subprocess.run(
    cmd, cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True, text=True
  )
  if proc.returncode != 0:
    raise RuntimeError(f'demo {loader} seed {seed} failed:\n{proc.stderr[-4000:]}')
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return {
    'loader': loader,
    'seed': seed,
    'best_test_top1': summary['best_test_top1'],
    'final_test_top1': summary['final_test_top1'],
    'wall_s': time.time() - start,
  }


def demo_accuracy(
  data_dir: str, seeds: list[int], out: str, argv, overrides=(), loaders=('tf.data_host', 'grain')
) -> dict:
  results = {
    'command': 'python -m benchmarks.loader_compare ' + ' '.join(argv),
    'config': 'configs/demo.py (digits, 360 test images)',
    'overrides': list(overrides),
    'runs': [],
  }
  with tempfile.TemporaryDirectory(prefix='loader-demo-') as tmp:
    for seed in seeds:
      for loader in loaders:
        r = run_demo(loader, data_dir, seed, os.path.join(tmp, f'{loader}_{seed}'), overrides)
        results['runs'].append(r)
        print(json.dumps(r), flush=True)
        by = {
          name: [x['final_test_top1'] for x in results['runs'] if x['loader'] == name]
          for name in loaders
        }
        results['final_test_top1_mean'] = {k: sum(v) / len(v) for k, v in by.items() if v}
        with open(out, 'w') as f:
          json.dump(results, f, indent=2)
  return results


def run_variant(
  name: str, data_dir: str, steps: int, workdir: str, structure: str, recipe: str = 'rafdb'
) -> dict:
  overrides = {
    **VARIANTS[name],
    'model.structure': structure,
    'data.data_dir': os.path.abspath(data_dir),
    'data.recipe': recipe,
    'steps_per_epoch': steps,
    'num_epochs': 1,
    'warmup_epochs': 0,
    'log_every_steps': 1,
    'progress_bar': False,
    'compilation_cache_dir': '',  # Every variant compiles, as a first run does.
  }
  cmd = [
    sys.executable,
    '-m',
    'zenfer_jax.main',
    f'--config={os.path.join(REPO, "configs", "fer2013_r.py")}',
    f'--workdir={workdir}',
  ] + [f'--config.{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in overrides.items()]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  load = os.getloadavg()[0]
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  with open(os.path.join(workdir, 'timing.json')) as f:
    timing = json.load(f)
  sustained = timing['sustained'] or {}
  batch = timing['global_batch']
  return {
    **phase_times(os.path.join(workdir, 'log.txt'), start),
    'wall_s': wall,
    'end_to_end_images_per_second': steps * batch / wall,
    'images_per_second': sustained.get('images_per_second'),
    'input_wait_fraction': sustained.get('input_wait_fraction'),
    'eval_seconds': sustained.get('eval_seconds'),
    'steps': steps,
    'global_batch': batch,
    'loadavg_1min': load,
  }


@cli.command
def main(argv=None) -> int:
  args = parse_args(argv)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  if args.demo:
    seeds = [int(s) for s in args.seeds.split(',') if s]
    argv = sys.argv[1:] if argv is None else argv
    loaders = [n for n in args.variants.split(',') if n]
    demo_accuracy(args.data_dir, seeds, args.out, argv, args.set, loaders)
    return 0
  names = [n for n in args.variants.split(',') if n]
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    return cli.report(
      ValueError(f'--variants: unknown {unknown}; expected some of {list(VARIANTS)}')
    )
  results = {
    'command': 'python -m benchmarks.loader_compare '
    + ' '.join(sys.argv[1:] if argv is None else argv),
    'machine': f'{os.cpu_count()} CPU cores',
    'config': f'configs/fer2013_r.py, recipe {args.recipe}, batch 64, 48 px, '
    f'model {args.structure}',
    'variants': {},
  }
  with tempfile.TemporaryDirectory(prefix='loader-compare-') as tmp:
    for name in names:
      workdir = os.path.join(tmp, name)
      result = run_variant(name, args.data_dir, args.steps, workdir, args.structure, args.recipe)
      results['variants'][name] = result
      print(name, json.dumps(result), flush=True)
      with open(args.out, 'w') as f:  # After each variant: a partial run keeps its figures.
        json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
